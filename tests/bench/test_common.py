"""bench/_common.py: the load guard refuses to record a result from a busy machine, and
otherwise writes the headline first; a live child's CPU time counts as the benchmark's own."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import _common  # noqa: E402


def test_a_quiet_enough_machine_gets_the_result_with_its_headline_first(tmp_path, capsys):
    guard = _common.LoadGuard(max_per_core=1e9)  # nothing is too busy
    out = tmp_path / "r.json"
    assert _common.write_result(out, {"numbers": [1, 2], "headline": {"stale": 1}}, guard,
                                headline={"dpo_vs_trl_like_for_like": 1.6})
    data = json.loads(out.read_text())
    assert list(data)[0] == "headline"
    assert set(data["headline"]) == {"dpo_vs_trl_like_for_like", "load_avg_start", "load_avg_end"}
    assert data["numbers"] == [1, 2] and data["load_guard"]["busy"] is False
    assert data["load_guard"]["load_avg_start"] >= 0 and data["load_guard"]["cores"] >= 1


def test_a_busy_machine_gets_no_result_and_the_reason_with_the_threshold(tmp_path, capsys):
    guard = _common.LoadGuard(max_per_core=-1.0)  # any load at all is too much
    out = tmp_path / "r.json"
    assert not _common.write_result(out, {"numbers": [1]}, guard, headline={"x": 1.0})
    assert not out.exists() and not list(tmp_path.iterdir())
    err = capsys.readouterr().err
    assert "NOT writing" in err and "beyond -1 load per core" in err and "at the start" in err


def test_a_live_childs_cpu_time_counts_as_the_benchmarks_own():
    """The child spins until it has used 0.5 s of CPU, says so, and waits: while it is alive,
    its time is in the process tree's total (it is not reaped, so not in rusage yet)."""
    before = _common.process_tree_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                              "while time.process_time() < 0.5: pass\n"
                              "print('spun', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spun"
        assert _common.process_tree_cpu_seconds() - before >= 0.45
    finally:
        child.stdin.close()
        child.wait()


@pytest.mark.parametrize("arg,want", [("bench/x.py", "bench/x.py"), ("--out", "--out"), ("/tmp/elsewhere.json",
                                                                                          "/tmp/elsewhere.json")])
def test_run_stamp_keeps_no_path_of_this_checkout(arg, want):
    assert _common.repo_relative(arg) == want
    assert _common.repo_relative(str(_common.ROOT / "bench" / "dpo_step.py")) == "bench/dpo_step.py"
