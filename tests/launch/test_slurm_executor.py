"""Stages as Slurm array jobs on the real local cluster: outputs, preemption, requeue, SIGKILL.

Every scenario ends by comparing the shard files byte for byte with an uninterrupted
local run of the same config (same seed, same thread count).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.launch.slurm import queued_jobs
from srlm_hpc.manifest import StageManifest
from srlm_hpc.status import report
from srlm_hpc.submit import main as submit

pytestmark = pytest.mark.slurm
STAGES = ("prompts", "responses")
SHARDS = {"prompts": 2, "responses": 4}


def args_for(work: Path) -> list[str]:
    # Random tiny-model weights rarely emit the end token: every response runs to max_tokens,
    # so a responses shard takes a few seconds, long enough to be preempted part-way.
    return [f"work_dir={work}", "engine=hf", "threads=1", "seed=11", "prompts.n_prompts=8", "prompts.shard_size=4",
            "prompts.max_tokens=12", "prompts.min_words=1", "responses.shard_size=2", "responses.batch_size=1",
            "responses.max_tokens=64", "slurm.partition=low", "slurm.cpus_per_task=1", "slurm.time_min=60",
            "slurm.heartbeat_s=1"]


def prepare(work: Path, tiny_llama: Path) -> Path:
    """A work dir whose M1 is the tiny model (these tests start after SFT)."""
    shutil.copytree(tiny_llama, work / "iter1" / "sft" / "model")
    return work


def outputs(work: Path) -> dict[str, bytes]:
    return {f"{s}/{p.name}": p.read_bytes() for s in STAGES for p in sorted((work / "iter1" / s).glob("shard-*.jsonl"))}


def manifest(work: Path, stage: str) -> StageManifest:
    return StageManifest(build_config({"work_dir": str(work)}).manifest_root, 1, stage)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama) -> dict[str, bytes]:
    work = prepare(tmp_path_factory.mktemp("local") / "run", tiny_llama)
    assert submit(["stage=prompts,responses", "executor=local", *args_for(work)]) == 0
    out = outputs(work)
    assert len([k for k in out if k.startswith("responses/")]) == 4
    return out


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; queue: {queued_jobs()}")


def finish(work: Path) -> None:
    """Rerun the same submit until it exits 0, which wait=true does only with every shard of both
    stages done and verified (what a user's script does); 1 means some shard is not done yet."""
    for _ in range(3):
        code = submit(["stage=prompts,responses", "executor=slurm", "wait=true", *args_for(work)])
        done = all(manifest(work, s).counts()["done"] == SHARDS[s] for s in STAGES)
        assert code == (0 if done else 1), (code, [manifest(work, s).counts() for s in STAGES])
        if done:
            return
    raise AssertionError(f"not done after 3 reruns: {[manifest(work, s).counts() for s in STAGES]}")


def running_responses(work: Path) -> bool:
    return any(st.state == "running" for st in manifest(work, "responses").states(4))


def test_stage_runs_as_array_jobs_and_matches_local(slurm, tmp_path, tiny_llama, reference):
    work = prepare(tmp_path / "run", tiny_llama)
    assert report(build_config({"work_dir": str(work)}).manifest_root) == []
    assert submit(["stage=prompts,responses", "executor=slurm", "wait=true", *args_for(work)]) == 0
    for stage in STAGES:
        states = manifest(work, stage).states()
        assert [s.state for s in states] == ["done"] * SHARDS[stage]
        assert all(s.attempt == 1 and s.job_id.count("_") == 1 for s in states)  # array elements, one try each
    assert outputs(work) == reference
    rows = {stage: r["counts"] for _, stage, r in report(build_config({"work_dir": str(work)}).manifest_root)}
    assert rows == {s: {"pending": 0, "running": 0, "done": SHARDS[s], "failed": 0, "stale": 0} for s in STAGES}
    # A rerun finds nothing to do and submits nothing.
    assert submit(["stage=prompts,responses", "executor=slurm", *args_for(work)]) == 0
    assert queued_jobs() == {}


def test_partition_preemption_mid_stage(slurm, tmp_path, tiny_llama, reference):
    work = prepare(tmp_path / "run", tiny_llama)
    assert submit(["stage=prompts,responses", "executor=slurm", *args_for(work)]) == 0
    wait_until(lambda: running_responses(work), 180, "a running responses shard")
    # A job in the high partition that needs every CPU of the node preempts the low ones.
    high = slurm.sbatch("--partition=high", "--cpus-per-task=8", "--output=/dev/null", "--wrap=sleep 4")
    slurm.wait_final(high, timeout=120)
    finish(work)
    states = manifest(work, "responses").states(4)
    attempts = [s.attempt for s in states]
    assert max(attempts) >= 2, f"no responses shard was interrupted: attempts {attempts}"
    assert all(s.failures == 0 for s in states)  # preemptions do not count against max_retries
    assert any(h["state"] == "preempted" for s in states for h in s.history)
    assert outputs(work) == reference


def test_scontrol_requeue_mid_stage(slurm, tmp_path, tiny_llama, reference):
    work = prepare(tmp_path / "run", tiny_llama)
    assert submit(["stage=prompts,responses", "executor=slurm", *args_for(work)]) == 0
    wait_until(lambda: running_responses(work), 180, "a running responses shard")
    job = next(s.job_id for s in manifest(work, "responses").states(4) if s.state == "running")
    slurm.run(["scontrol", "requeue", job.split("_")[0]])
    finish(work)
    states = manifest(work, "responses").states(4)
    assert max(s.attempt for s in states) >= 2 and all(s.failures == 0 for s in states)
    assert outputs(work) == reference


def test_sigkill_of_a_task_then_rerun(slurm, tmp_path, tiny_llama, reference):
    work = prepare(tmp_path / "run", tiny_llama)
    assert submit(["stage=prompts,responses", "executor=slurm", *args_for(work)]) == 0
    wait_until(lambda: running_responses(work), 180, "a running responses shard")
    folder = work / "logs" / "iter1" / "responses"
    subprocess.run(["pkill", f"-{signal.SIGKILL.value}", "-f", f"submitit.core._submit {folder}"], check=False)
    # The killed task leaves the queue as FAILED; its dependents are cancelled (kill-on-invalid-dep).
    wait_until(lambda: not queued_jobs(), 120, "the queue to drain after the kill")
    root = build_config({"work_dir": str(work)}).manifest_root
    counts = {stage: r["counts"] for _, stage, r in report(root, stale_after=3600)}
    assert counts["responses"]["stale"] >= 1  # running in the manifest, gone from the queue
    assert counts["responses"]["done"] + counts["responses"]["stale"] + counts["responses"]["pending"] == 4
    finish(work)
    assert outputs(work) == reference
    states = manifest(work, "responses").states(4)
    assert max(s.attempt for s in states) == 2  # resubmitted once, not more
    assert sorted(s.failures for s in states)[-1] == 1  # the killed task's job vanished: one failure


def test_plain_sbatch_scripts_run_the_same_shards(slurm, tmp_path, tiny_llama, reference):
    import os
    import sys

    work = prepare(tmp_path / "run", tiny_llama)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SRLM_PYTHON": sys.executable}
    cmd = [str(repo / "slurm" / "iteration.sh"), "stage=prompts,responses", *args_for(work),
           "--", "--partition=low", "--cpus-per-task=1", f"--chdir={tmp_path}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "[prompts] shards 0,1 submitted" in out and "[responses] shards 0,1,2,3 submitted" in out
    wait_until(lambda: not queued_jobs(), 300, "the sbatch iteration to finish")
    assert outputs(work) == reference
    logs = [s.log for s in manifest(work, "responses").states()]
    assert all(log and Path(log).exists() for log in logs), logs
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "[responses] every shard is done" in again
