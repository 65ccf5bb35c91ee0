"""The whole iteration (sft, prompts, responses, judge, pairs, dpo, eval) queued at once on
the real Slurm with afterok chaining, preempted part-way, finished by rerunning the same
command: every output equals the uninterrupted local run's, model weights included."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.launch.slurm import queued_jobs
from srlm_hpc.manifest import StageManifest
from srlm_hpc.stages import ORDER
from srlm_hpc.submit import main as submit
from tests.stages.test_pipeline_e2e import e2e_args

pytestmark = pytest.mark.slurm


def stage_files(work: Path) -> dict[str, bytes]:
    """Everything a stage hands on: shard files, pair files and index, model weights, metrics."""
    out = {}
    for pattern in ("iter1/*/shard-*.jsonl", "iter1/pairs/pairs-*.jsonl.zst", "iter1/pairs/index.json",
                    "iter1/*/model/model.safetensors", "iter1/eval/metrics.json"):
        out.update({str(p.relative_to(work)): p.read_bytes() for p in sorted(work.glob(pattern))})
    return out


def test_whole_iteration_queued_at_once_preempted_and_rerun(slurm, tmp_path, tiny_llama):
    local = e2e_args(tmp_path / "local", tiny_llama)
    assert submit(["stage=all", "iter=1", "executor=local", *local]) == 0
    want = stage_files(tmp_path / "local" / "run")

    args = [*e2e_args(tmp_path / "slurm", tiny_llama), "slurm.partition=low", "slurm.cpus_per_task=1",
            "slurm.time_min=60", "slurm.heartbeat_s=1"]
    assert submit(["stage=all", "iter=1", "executor=slurm", *args]) == 0
    jobs = queued_jobs()
    assert len({j.split("_")[0] for j in jobs}) == len(ORDER)  # one array job per stage, all queued at once
    root = build_config({"work_dir": str(tmp_path / "slurm" / "run")}).manifest_root
    # Preempt once SFT is in its training loop, past its first step checkpoint (16 of 64 steps).
    ckpt = tmp_path / "slurm" / "run" / "iter1" / "sft" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ckpt.exists(), "SFT never saved a checkpoint"
    high = slurm.sbatch("--partition=high", "--cpus-per-task=8", "--output=/dev/null", "--wrap=sleep 3")  # preempt SFT mid-training
    slurm.wait_final(high, timeout=120)
    for _ in range(3):  # the user's loop: rerun until it says everything is done
        assert submit(["stage=all", "iter=1", "executor=slurm", "wait=true", *args]) == 0
        if all(StageManifest(root, 1, s).counts()["done"] == StageManifest(root, 1, s).plan()["n_shards"]
               for s in ORDER):
            break
    sft = StageManifest(root, 1, "sft").get(0)
    assert sft.attempt >= 2 and sft.failures == 0  # preempted and run again; a preemption is not a failure
    assert "preempted" in [h["state"] for h in sft.history], sft.history
    # USR2 reached the training loop, which finished its step and saved before submitit
    # requeued the job: the next attempt resumed from there instead of step 0.
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "slurm" / "run" / "logs").rglob("*.out"))
    assert re.search(r"\[sft\] resumed from the checkpoint of step [1-9]", logs), "SFT restarted from step 0"
    got = stage_files(tmp_path / "slurm" / "run")
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
