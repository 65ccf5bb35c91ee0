"""What a run prints, and where everything else goes.

    python -m srlm_hpc.submit preset=demo stage=all iter=1                 # log.level=info
    python -m srlm_hpc.submit preset=demo stage=all iter=1 log.level=debug  # every library line too

The terminal (or a Slurm task's log) shows the pipeline: a line when a stage starts and
when it ends, a line per shard, tqdm progress inside a shard, our own warnings, and the
summary. What the libraries say goes to the shard's log file,
`<log_dir>/iter<k>/<stage>/shard-00003.log` (beside Slurm's task logs): vLLM's and
transformers' INFO and WARNING records, Python warnings raised in their code, and what they
write to the process's stdout and stderr while a model or engine loads (progress bars, C++
warnings, the engine's config dump). A library's ERROR still reaches the terminal, and
outside a shard (no file to hold them) its warnings do too.

log.level=debug leaves the libraries' logging exactly as they set it up (vLLM's INFO on
stdout, transformers' warnings on stderr, nothing redirected) and adds our DEBUG lines: the
run prints what it printed before this module existed.

Each shard's log file starts every attempt with a header (`task_header`): stage, shard,
attempt, host and the sha256 of the resolved config (the name of the copy submit pinned,
iter<k>/configs/config-<sha>.json); a Slurm task prints the same header at the top of its
own log.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

LOGGER = "srlm_hpc"
LEVELS = ("info", "debug")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(LOGGER)

_state = {"level": "info", "configured": False, "shard_file": None, "redirect_depth": 0, "divert_to": None}


def say(message: str, *args) -> None:
    """A pipeline line: on the terminal, and in the open shard's log file."""
    if not _state["configured"]:  # a caller that skipped setup_process still sees its lines
        _add_terminal_handler()
        log.setLevel(logging.INFO)
        _state["configured"] = True
    log.info(message, *args)


def is_ours(record: logging.LogRecord) -> bool:
    if record.name == LOGGER or record.name.startswith(LOGGER + "."):
        return True
    # logging.captureWarnings: a warnings.warn raised in our code names our file in the text.
    return record.name == "py.warnings" and f"{os.sep}{LOGGER}{os.sep}" in record.getMessage()


class TerminalHandler(logging.Handler):
    """Our lines to stdout, warnings and errors to stderr; the stream is looked up at each
    record, so a replaced sys.stdout (pytest's capture, a redirect) is honoured."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.addFilter(self.wanted)

    @staticmethod
    def wanted(record: logging.LogRecord) -> bool:
        if _state["level"] == "debug" or record.name == LOGGER:
            return True
        if is_ours(record):  # a module's own logger (srlm_hpc.data.oasst's counts): details, for the file
            return record.levelno >= logging.WARNING
        # A library's warning reaches the terminal only when no shard log can hold it.
        floor = logging.ERROR if _state["shard_file"] is not None else logging.WARNING
        return record.levelno >= floor

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            source = "" if record.name == LOGGER else f" ({record.name})"
            return f"{record.levelname.lower()}{source}: {text}"
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING and record.name == LOGGER else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001  (logging's own contract: never raise from emit)
            self.handleError(record)


def setup_logging(level: str = "info") -> None:
    """Once per process, before any engine starts (runner.setup_process calls it)."""
    if level not in LEVELS:
        raise ValueError(f"log.level={level!r}: expected one of {', '.join(LEVELS)}")
    _state["level"] = level
    log.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    _add_terminal_handler()
    _state["configured"] = True
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # libraries' INFO records reach the shard file (and, at debug, the terminal)
    if level == "debug":
        return
    # vLLM adds its own stdout handler (propagate=False) when its LLM starts unless told not
    # to; then its records come to the root logger, and so to the shard's file. A user's
    # VLLM_LOGGING_CONFIG_PATH needs VLLM_CONFIGURE_LOGGING=1, so it is left alone then.
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    logging.captureWarnings(True)
    adopt_library_loggers()


def _add_terminal_handler() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, TerminalHandler) for h in root.handlers):
        root.addHandler(TerminalHandler())


def adopt_library_loggers() -> list[str]:
    """Take the stdout/stderr handlers off libraries' own loggers (transformers, DeepSpeed,
    vLLM when it configured itself) so their records propagate to the root logger like any
    other; returns the loggers changed. Called at setup and when a shard starts, since a
    library installs its handler when it is first imported."""
    if _state["level"] == "debug":
        return []
    changed = []
    streams = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name.startswith(LOGGER):
            continue
        own = [h for h in logger.handlers if type(h) is logging.StreamHandler
               and (id(h.stream) in streams or isinstance(h.stream, Diverted))]
        for h in own:
            logger.removeHandler(h)
        if own:
            logger.propagate = True
            changed.append(name)
    return changed


# ---- the shard's log file ------------------------------------------------------------

def shard_log_path(cfg, stage: str, shard: int) -> Path:
    return cfg.log_dir / f"iter{cfg.run.iter}" / stage / f"shard-{shard:05d}.log"


def config_fingerprint(cfg) -> str:
    """sha256 of the resolved config as submit pins it: its first 16 hex digits name the copy
    every task of the run reads, <work_dir>/iter<k>/configs/config-<digest>.json."""
    import dataclasses

    return hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()


def task_header(cfg, stage: str, shard: int, attempt: int) -> str:
    """One line a person finds the task by: `grep '=== srlm_hpc judge shard 3'`."""
    return (f"=== srlm_hpc {stage} shard {shard} of iter {cfg.run.iter}, attempt {attempt}, "
            f"host {socket.gethostname()}, config sha256 {config_fingerprint(cfg)[:16]}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} ===")


@contextlib.contextmanager
def shard_log(cfg, stage: str, shard: int, attempt: int):
    """While a shard runs: every record (ours and the libraries') also goes to its log file,
    and library output to the terminal is held back (see library_output). Yields the path."""
    path = shard_log_path(cfg, stage, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(task_header(cfg, stage, shard, attempt) + "\n")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG if _state["level"] == "debug" else logging.INFO)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    previous, _state["shard_file"] = _state["shard_file"], path
    adopt_library_loggers()
    try:
        yield path
    finally:
        _state["shard_file"] = previous
        root.removeHandler(handler)
        handler.close()


def current_shard_log() -> Path | None:
    return _state["shard_file"]


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def library_output():
    """Send what this process writes to fds 1 and 2 (Python prints, progress bars, C++
    warnings) to the shard's log file for the duration: around a model or engine load, whose
    chatter does not go through logging. A no-op at log.level=debug or outside a shard.
    Nested uses redirect once."""
    path = _state["shard_file"]
    if _state["level"] == "debug" or path is None or _state["redirect_depth"] > 0:
        yield
        return
    _state["redirect_depth"] += 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(target, fd)
        finally:
            os.close(target)
    except OSError:  # no fds 1/2 to redirect (a daemon): nothing to hold back
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        saved = []
    # Python-level writes too, where sys.stdout is not fd 1 (pytest's capture, a notebook).
    streams = sys.stdout, sys.stderr
    _state["divert_to"] = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout, sys.stderr = Diverted(streams[0]), Diverted(streams[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams
        _state["divert_to"].close()
        _state["divert_to"] = None
        for stream in streams:
            with contextlib.suppress(Exception):
                stream.flush()
        _flush_c_stdio()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        _state["redirect_depth"] -= 1
        adopt_library_loggers()  # a library imported in the block set up its handler on a Diverted


class Diverted:
    """sys.stdout or sys.stderr inside library_output: writes go to the shard's log while the
    block runs and to the real stream after it, so a library that keeps a reference (a
    logging handler made at its import) never writes to a closed file."""

    def __init__(self, original):
        self.original = original

    def _target(self):
        return _state["divert_to"] or self.original

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return _state["divert_to"] is None and self.original.isatty()

    def __getattr__(self, name):  # fileno, encoding, buffer, ...: the real stream's
        return getattr(self.original, name)
