"""The one-node Slurm test cluster does what srlm_hpc needs.

Uses the ``slurm`` / ``slurm_cluster`` fixtures from ``tests/slurm_cluster.py``
(registered by the root conftest; ad hoc: ``python -m pytest -p
tests.slurm_cluster tests/test_slurm_cluster.py``).  Each test cancels any
leftover job before and after it, so tests may use ``--exclusive``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def batch(body: str, *sbatch: str) -> str:
    head = ["#!/bin/bash"] + [f"#SBATCH {opt}" for opt in sbatch]
    return "\n".join(head) + "\n" + body.strip() + "\n"


def test_cluster_layout(slurm):
    """Both partitions exist, the node is idle, and sacct answers."""
    out = slurm.run(["sinfo", "-h", "-o", "%P %a %t"]).stdout.split("\n")
    rows = {line.split()[0].rstrip("*"): line.split()[1:] for line in out if line.strip()}
    assert set(rows) == {slurm.low_partition, slurm.high_partition}
    assert all(avail == "up" and state == "idle" for avail, state in rows.values()), rows
    assert slurm.run(["sacct", "-n", "-X", "-S", "now-1hour"]).returncode == 0
    assert os.environ["SLURM_CONF"] == str(slurm.conf)


def test_sbatch_job_completes_in_sacct(slurm, tmp_path):
    out = tmp_path / "out.txt"
    job = slurm.sbatch(
        f"--output={tmp_path}/slurm-%j.out",
        script=batch(f'echo "hello from $SLURM_JOB_ID on $SLURM_JOB_PARTITION" > {out}'),
    )
    states = slurm.wait_final(job, timeout=60)
    assert states == {job: "COMPLETED"}
    assert out.read_text().strip() == f"hello from {job} on {slurm.low_partition}"
    # exit code recorded too
    assert slurm.sacct(job, "JobID,ExitCode") == [[job, "0:0"]]


def test_failed_job_is_failed_in_sacct(slurm, tmp_path):
    job = slurm.sbatch(f"--output={tmp_path}/slurm-%j.out", script=batch("exit 3"))
    assert slurm.wait_final(job) == {job: "FAILED"}
    assert slurm.sacct(job, "JobID,ExitCode") == [[job, "3:0"]]


def test_array_job_runs_tasks_concurrently(slurm, tmp_path):
    job = slurm.sbatch(
        "--array=0-3",
        f"--output={tmp_path}/slurm-%A_%a.out",
        script=batch(
            f"""
echo "$(date +%s.%N) start" > {tmp_path}/task-$SLURM_ARRAY_TASK_ID
sleep 3
echo "$(date +%s.%N) end" >> {tmp_path}/task-$SLURM_ARRAY_TASK_ID
"""
        ),
    )
    states = slurm.wait_final(job, timeout=90)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(4)}, states
    spans = []
    for i in range(4):
        lines = (tmp_path / f"task-{i}").read_text().split("\n")
        spans.append((float(lines[0].split()[0]), float(lines[1].split()[0])))
    # Tasks overlap in time: at least two ran at once (the node advertises
    # more CPUs than the 2 cores, so normally all four do).
    overlapping = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlapping >= 2, spans


def test_scontrol_requeue_runs_job_again(slurm, tmp_path):
    attempts = tmp_path / "attempts"
    job = slurm.sbatch(
        "--requeue",
        f"--output={tmp_path}/slurm-%j.out",
        script=batch(
            f"""
echo "${{SLURM_RESTART_COUNT:-0}}" >> {attempts}
if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 120; fi
"""
        ),
    )
    slurm.wait_file(attempts, timeout=60)
    t0 = time.monotonic()
    slurm.run(["scontrol", "requeue", job])
    assert slurm.wait_file(attempts, timeout=60, min_lines=2) == ["0", "1"]
    # cred_expire=5 in AuthInfo: the requeued job restarts within seconds,
    # not after the default 120 s.
    assert time.monotonic() - t0 < 45
    assert slurm.wait_final(job) == {job: "COMPLETED"}
    runs = [state.split()[0] for _, state in slurm.sacct(job, "JobID,State", duplicates=True)]
    assert runs == ["REQUEUED", "COMPLETED"], runs


def test_preemption_signals_then_requeues_low_job(slurm, tmp_path):
    """A high-partition job preempts (REQUEUE) a low one; the low job first
    gets its --signal (preempt_send_user_signal), then runs again."""
    events = tmp_path / "events"
    low = slurm.sbatch(
        f"--partition={slurm.low_partition}",
        "--exclusive",
        "--requeue",
        # B: deliver to the batch shell itself (there is no srun step here).
        "--signal=B:USR2@60",
        f"--output={tmp_path}/low-%j.out",
        script=batch(
            f"""
n=${{SLURM_RESTART_COUNT:-0}}
trap 'echo "USR2 $n" >> {events}' USR2
trap 'echo "TERM $n" >> {events}' TERM
echo "start $n" >> {events}
if [ "$n" = 0 ]; then
    # sleep in short steps: bash runs traps only between commands
    for i in $(seq 120); do sleep 1; done
fi
echo "done $n" >> {events}
"""
        ),
    )
    slurm.wait_file(events, timeout=60)
    high = slurm.sbatch(
        f"--partition={slurm.high_partition}",
        "--exclusive",
        f"--output={tmp_path}/high-%j.out",
        script=batch(f'echo "high" >> {events}'),
    )
    assert slurm.wait_final(high, timeout=90) == {high: "COMPLETED"}
    assert slurm.wait_final(low, timeout=90) == {low: "COMPLETED"}
    lines = events.read_text().splitlines()
    assert lines[0] == "start 0"
    assert "USR2 0" in lines, lines
    # the signal arrives before the job is killed and before high starts
    assert lines.index("USR2 0") < lines.index("high"), lines
    assert lines[-2:] == ["start 1", "done 1"], lines
    assert "done 0" not in lines
    runs = [state.split()[0] for _, state in slurm.sacct(low, "JobID,State", duplicates=True)]
    assert runs == ["PREEMPTED", "COMPLETED"], runs


@pytest.mark.parametrize(
    "on_signal, expected_runs",
    [
        # the submitit pattern: requeue yourself, then exit -> runs again, and
        # the high job starts at once instead of after GraceTime (+ up to 30 s)
        ('scontrol requeue "$SLURM_JOB_ID"; exit 0', ["REQUEUED", "COMPLETED"]),
        # exiting on the signal without requeueing ends the job for good
        ("exit 0", ["COMPLETED"]),
    ],
    ids=["self-requeue", "exit-only"],
)
def test_preempted_job_handling_the_signal(slurm, tmp_path, on_signal, expected_runs):
    events = tmp_path / "events"
    low = slurm.sbatch(
        f"--partition={slurm.low_partition}",
        "--exclusive",
        "--requeue",
        "--signal=B:USR2@60",
        f"--output={tmp_path}/low-%j.out",
        script=batch(
            f"""
n=${{SLURM_RESTART_COUNT:-0}}
trap 'echo "USR2 $n" >> {events}; {on_signal}' USR2
echo "start $n" >> {events}
if [ "$n" = 0 ]; then for i in $(seq 120); do sleep 1; done; fi
"""
        ),
    )
    slurm.wait_file(events, timeout=60)
    high = slurm.sbatch(
        f"--partition={slurm.high_partition}", "--exclusive", f"--output={tmp_path}/high-%j.out", script=batch("true")
    )
    assert slurm.wait_final(high, timeout=60) == {high: "COMPLETED"}
    assert slurm.wait_final(low, timeout=60) == {low: "COMPLETED"}
    runs = [state.split()[0] for _, state in slurm.sacct(low, "JobID,State", duplicates=True)]
    assert runs == expected_runs
    expected_events = ["start 0", "USR2 0"] + (["start 1"] if len(expected_runs) == 2 else [])
    assert events.read_text().splitlines() == expected_events


# --------------------------------------------------------------------- submitit
try:
    import submitit
except ImportError:  # pragma: no cover - submitit is a project dependency
    submitit = None

needs_submitit = pytest.mark.skipif(submitit is None, reason="submitit not installed")


@pytest.fixture
def pickle_by_value():
    """Jobs unpickle our functions without importing this test module."""
    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def wait_job(slurm, job, timeout: float):
    """submitit's result() has no timeout: poll for the result file first."""
    slurm.wait_for(lambda: job.paths.result_pickle.exists(), timeout, interval=0.5, what=f"submitit job {job.job_id}")
    return job.result()


def add(a, b):
    return a + b


@needs_submitit
def test_submitit_runs_function(slurm, tmp_path, pickle_by_value):
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    assert executor.cluster == "slurm"
    executor.update_parameters(slurm_partition=slurm.low_partition, timeout_min=10, cpus_per_task=1)
    job = executor.submit(add, 2, 3)
    assert wait_job(slurm, job, timeout=60) == 5
    assert slurm.wait_final(job.job_id) == {job.job_id: "COMPLETED"}


@needs_submitit
def test_submitit_array(slurm, tmp_path, pickle_by_value):
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    executor.update_parameters(slurm_partition=slurm.low_partition, timeout_min=10, slurm_array_parallelism=4)
    jobs = executor.map_array(add, [1, 2, 3, 4], [10, 20, 30, 40])
    assert [wait_job(slurm, j, timeout=90) for j in jobs] == [11, 22, 33, 44]


if submitit is not None:

    class Resumable(submitit.helpers.Checkpointable):
        """Sleeps on its first run; `checkpoint` marks the resubmission."""

        def __init__(self, marker: str):
            self.marker = marker

        def __call__(self, resumed: bool = False):
            restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
            with open(self.marker, "a") as f:
                f.write(f"run restarts={restarts} resumed={resumed}\n")
            if not resumed:
                time.sleep(300)  # preempted long before this ends
            return ("finished", restarts, resumed)

        def checkpoint(self, *args, **kwargs):
            with open(self.marker, "a") as f:
                f.write("checkpoint\n")
            return submitit.helpers.DelayedSubmission(self, resumed=True)


@needs_submitit
def test_submitit_checkpointable_preempted_and_requeued(slurm, tmp_path, pickle_by_value):
    marker = tmp_path / "marker"
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    # timeout_min > 50: submitit counts USR2 as a time-out when the job is
    # within 10 min of its limit, i.e. always for timeout_min <= 50.
    executor.update_parameters(
        slurm_partition=slurm.low_partition, timeout_min=60, slurm_exclusive=True
    )
    job = executor.submit(Resumable(str(marker)))
    slurm.wait_file(marker, timeout=60)
    high = slurm.sbatch(
        f"--partition={slurm.high_partition}",
        "--exclusive",
        f"--output={tmp_path}/high-%j.out",
        script=batch("sleep 2"),
    )
    assert wait_job(slurm, job, timeout=120) == ("finished", 1, True)
    assert slurm.wait_final(high) == {high: "COMPLETED"}
    assert marker.read_text().splitlines() == [
        "run restarts=0 resumed=False",
        "checkpoint",
        "run restarts=1 resumed=True",
    ]
    assert "this job is preempted" in Path(job.paths.stderr).read_text()
    assert slurm.wait_final(job.job_id) == {job.job_id: "COMPLETED"}
