"""What every entry point shares: --help, the exit-code contract, one-line errors.

    python -m srlm_hpc.submit --help          # usage, stages, exit codes, every config key
    python -m srlm_hpc.submit --help judge    # one section's keys (or one key: --help dpo.beta)

Exit codes, the same for every command (submit, status, report, worker, data.oasst,
kernels.build, slurm/iteration.sh):

    0  everything asked for is done and verified (submit wait=true), or queued without error
    1  work failed: a shard failed or was given up, a stage could not start (its inputs are
       missing), Slurm did not answer, or a shard's output came out empty
    2  usage or configuration error, reported before anything is written
    3  status only: nothing failed, but work is still pending or running

A usage mistake prints one line (a bad configuration: one line per problem, all at once)
and no traceback; `debug=true` on the command line prints the traceback too. The key list
of --help is read from the config dataclasses and the comments beside their fields, so it
can never drift from the code.
"""

from __future__ import annotations

import ast
import inspect
import io
import sys
import textwrap
import tokenize
import traceback
import typing
from dataclasses import MISSING, fields
from typing import Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3

EXIT_CODES = """exit status:
  0  everything asked for is done and verified (with wait=true), or queued without error
  1  work failed: a shard failed or was given up, a stage could not start, Slurm did not answer
  2  usage or configuration error, reported before anything is written
  3  (status only) nothing failed, but work is still pending or running"""

HELP_FLAGS = ("-h", "--help", "help")


class UsageError(ValueError):
    """A mistake on the command line: exit 2, one line, nothing written."""


class WorkFailed(RuntimeError):
    """Work that could not be done (a stage that cannot start, a shard that failed): exit 1."""


# ---- help --------------------------------------------------------------------------------
def help_request(argv: list[str]) -> tuple[bool, str]:
    """(asked for help, topic): `--help`, `-h`, `help`, optionally followed by a section or key."""
    for i, arg in enumerate(argv):
        if arg in HELP_FLAGS:
            rest = [a for a in argv[i + 1:] if "=" not in a]
            return True, rest[0] if rest else ""
    return False, ""


def field_comments(cls) -> dict[str, str]:
    """{field: its comment in the source}: the comment on the field's line, or the comment
    lines right above it. Read with ast + tokenize, so help text is the code's own."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = src.splitlines()
    out: dict[str, str] = {}
    for node in ast.parse(src).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = [comments[node.end_lineno]] if node.end_lineno in comments else []
        if not text:  # a block of comment lines directly above the field
            above, line = [], node.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments.get(line, ""))
                line -= 1
            text = above
        out[node.target.id] = " ".join(t for t in text if t)
    return out


def _type_text(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "list"
    return getattr(tp, "__name__", str(tp))


def _default_text(f) -> str:
    value = f.default if f.default is not MISSING else f.default_factory() if f.default_factory is not MISSING else ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value) if value != "" else '""'


def section_help(name: str, cls) -> list[str]:
    from .config import BOUNDS, describe

    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    doc = (cls.__doc__ or "").strip()
    auto_doc = doc.startswith(cls.__name__ + "(")  # dataclass's generated signature: not a description
    head = f"{name}" + (" (top-level keys: iter=2, seed=7)" if name == "run" else f" ({name}.KEY=VALUE)")
    out = [head + ":"]
    if doc and not auto_doc:
        out += ["    " + line for line in textwrap.wrap(" ".join(doc.split()), 92)]
    for f in fields(cls):
        key = f.name if name == "run" else f"{name}.{f.name}"
        left = f"  {key}={_default_text(f)}"
        bound = f" {describe(BOUNDS[key])}" if key in BOUNDS else ""
        right = f"[{_type_text(hints[f.name])}{bound}] {comments.get(f.name, '')}".rstrip()
        out.append(f"{left:<38} {right}" if len(left) < 38 else f"{left}\n{'':<38} {right}")
    return out


def config_help(topic: str = "") -> str:
    """Every section and key with its default, type and comment; or one section / one key."""
    from .config import _sections

    sections = _sections()
    if not topic:
        return "\n\n".join("\n".join(section_help(n, c)) for n, c in sections.items())
    if topic in sections:
        return "\n".join(section_help(topic, sections[topic]))
    section, _, name = topic.rpartition(".")
    section = section or "run"
    if section in sections:
        lines = section_help(section, sections[section])
        key = name if section == "run" else f"{section}.{name}"
        hit = [line for line in lines if line.strip().startswith(key + "=")]
        if hit:
            return "\n".join([lines[0], *hit])
    import difflib

    from .config import _valid_keys

    close = difflib.get_close_matches(topic, [*sections, *_valid_keys()], n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UsageError(f"--help {topic}: no such section or key; {hint}sections: {', '.join(sections)}")


def print_help(doc: str, topic: str = "", keys: bool = False, out=None) -> int:
    """A command's docstring, the exit codes and (for commands that take config keys) the keys."""
    out = out or sys.stdout
    if topic:
        print(config_help(topic), file=out)
        return EXIT_OK
    print(inspect.cleandoc(doc) + "\n\n" + EXIT_CODES, file=out)
    if keys:
        print("\nconfiguration (key=value on the command line, or in a preset=FILE.yaml; "
              "`--help SECTION` shows one section):\n", file=out)
        print(config_help(), file=out)
    return EXIT_OK


# ---- errors and exit codes ---------------------------------------------------------------
def wants_debug(argv: list[str]) -> bool:
    return any(a.split("=", 1)[0].lstrip("-") == "debug" and a.split("=", 1)[-1].lower() in ("1", "true", "yes", "on")
               for a in argv if "=" in a)


def failure_exit(e: BaseException) -> int:
    """Which exit code an exception means under the contract."""
    from .config import ConfigError

    return EXIT_USAGE if isinstance(e, (ConfigError, UsageError)) else EXIT_FAILED


def one_line(e: BaseException) -> str:
    """The error as the user should read it: the message alone for the errors we raise with a
    fix in them, the type too for anything else."""
    from .config import ConfigError

    ours = (ConfigError, UsageError, WorkFailed)
    text = str(e) if isinstance(e, ours) else f"{type(e).__name__}: {e}"
    return text


def run_main(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Call an entry point's `main(argv)` under the contract: its own exit code, or 2 for a
    usage error and 1 for failed work, each as one line on stderr (the traceback with debug=true)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except BrokenPipeError:  # `... --help | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one line and an exit code
        if wants_debug(argv):
            traceback.print_exc()
        code = failure_exit(e)
        hint = "" if code == EXIT_USAGE or wants_debug(argv) else " (debug=true shows the traceback)"
        print(f"error: {one_line(e)}{hint}", file=sys.stderr)
        return code


def main_with_help(argv: list[str] | None, doc: str, main: Callable[[list[str]], int], keys: bool = False) -> int:
    """An entry point: `--help [TOPIC]` prints `doc` (and the config keys when `keys`), anything
    else runs `main` under the exit-code contract."""
    argv = sys.argv[1:] if argv is None else list(argv)
    asked, topic = help_request(argv)
    if asked:
        return run_main(lambda _: print_help(doc, topic, keys), argv)
    return run_main(main, argv)
