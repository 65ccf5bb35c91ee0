"""srlm_hpc/faults.py: a kill aimed at the n-th write a stage commits lands exactly there, before
or after its rename; the log counts the same writes; other threads and other code are not counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, threading
from pathlib import Path
from srlm_hpc.faults import in_stage
from srlm_hpc.files import atomic_write_bytes

out = Path(sys.argv[1])
atomic_write_bytes(out / "outside", b"-")  # not inside a stage: never counted
with in_stage("pairs"):
    for i in range(5):
        t = threading.Thread(target=atomic_write_bytes, args=(out / f"beat-{i}", b"b"))  # a heartbeat's thread
        t.start(); t.join()
        atomic_write_bytes(out / f"file-{i}", b"x")
"""


def run(tmp_path: Path, **env) -> int:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    return proc.returncode


def written(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("file-*"))


def temps(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob(".*.tmp"))


def test_a_kill_before_the_third_commit_leaves_two_files_and_the_third_one_s_temp(tmp_path):
    assert run(tmp_path, SRLM_FAULT_COMMIT="pairs:3") == -signal.SIGKILL
    assert written(tmp_path) == ["file-0", "file-1"]
    assert [t.split(".")[1] for t in temps(tmp_path)] == ["file-2"]  # written and fsynced, never renamed


def test_a_kill_after_the_third_commit_leaves_three_files_and_no_temp(tmp_path):
    assert run(tmp_path, SRLM_FAULT_COMMIT="pairs:3:after") == -signal.SIGKILL
    assert written(tmp_path) == ["file-0", "file-1", "file-2"]
    assert temps(tmp_path) == []


def test_the_log_counts_the_stage_s_main_thread_commits_only(tmp_path):
    log = tmp_path / "log.tsv"
    out = tmp_path / "out"
    out.mkdir()
    assert run(out, SRLM_FAULT_LOG=str(log)) == 0
    assert log.read_text().splitlines() == [f"pairs\t{n}" for n in range(1, 6)]
    assert len(written(out)) == 5


def test_another_stage_s_name_or_a_count_past_the_end_never_kills(tmp_path):
    assert run(tmp_path, SRLM_FAULT_COMMIT="judge:1") == 0
    assert run(tmp_path, SRLM_FAULT_COMMIT="pairs:6") == 0
    assert len(written(tmp_path)) == 5 and temps(tmp_path) == []
