"""Faults on the real one-node Slurm: plain-sbatch preemption during SFT, two submits at once.

(slurmd or slurmctld killed and restarted mid-stage are not here: the test cluster is shared
by every Slurm test of the machine, and restarting its daemons is not a test's to do.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.launch.slurm import queued_jobs
from srlm_hpc.manifest import StageManifest
from srlm_hpc.submit import main as submit
from tests.chaos.common import Clock, compare, leftovers, stray_processes, temp_files
from tests.stages.test_pipeline_e2e import e2e_args

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def sft_model(work: Path) -> dict[str, bytes]:
    d = work / "iter1" / "sft" / "model"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def test_plain_sbatch_preemption_during_sft_resumes_from_its_step(slurm, tmp_path, tiny_llama, chaos_results):
    """USR2 to the batch shell (what Slurm sends before a time limit or a preemption): the
    trap stops the worker with TERM, the worker finishes its step and saves a checkpoint,
    records a preemption, and only then is the job requeued; the requeued task resumes at
    that step and ends with the uninterrupted run's weights."""
    clock = Clock()
    local = tmp_path / "local"
    assert submit(["stage=sft", "iter=1", "executor=local", *e2e_args(local, tiny_llama)]) == 0
    want = sft_model(local / "run")

    base = tmp_path / "sbatch"
    args = ["stage=sft", "iter=1", *e2e_args(base, tiny_llama), "slurm.heartbeat_s=1"]
    config = subprocess.run([sys.executable, "-m", "srlm_hpc.worker", "--write-config", *args], check=True,
                            capture_output=True, text=True).stdout.strip()
    job = slurm.sbatch("--array=0", "--partition=low", "--cpus-per-task=1", f"--chdir={tmp_path}",
                       "--open-mode=append",  # the requeued run's log keeps the first run's lines
                       f"--export=ALL,SRLM_HOME={REPO},SRLM_PYTHON={sys.executable}",
                       str(REPO / "slurm" / "sft.sbatch"), config)
    ckpt = base / "run" / "iter1" / "sft" / "checkpoint" / "state.pt"
    slurm.wait_for(ckpt.exists, timeout=600, interval=0.2, what="SFT's first checkpoint")
    slurm.run(["scancel", "--batch", "--signal=USR2", f"{job}_0"])
    slurm.wait_final(job, timeout=900)

    man = StageManifest(build_config({"work_dir": str(base / "run")}).manifest_root, 1, "sft")
    st = man.get(0)
    log = (tmp_path / f"srlm-sft-{job}_0.out").read_text(errors="replace")
    lines = "\n".join(line for line in log.replace("\r", "\n").splitlines() if not line.startswith("sft:"))
    assert st.state == "done" and st.failures == 0 and st.attempt == 2, (st.state, st.attempt, st.history, lines)
    assert [h["state"] for h in st.history] == ["preempted"], lines  # recorded by the worker, not guessed later
    assert log.index("worker stopped; requeueing") > log.index("USR2 on")  # requeued after the worker stopped
    m = re.search(r"\[sft\] resumed from the checkpoint of step (\d+)", log)
    assert m and int(m.group(1)) >= 1, log[-3000:]
    assert sft_model(base / "run") == want
    left = leftovers(base)
    chaos_results.append({"scenario": "plain-sbatch preemption during SFT", "faults": {"sbatch USR2 during sft": 1},
                          "outputs_differing": int(sft_model(base / "run") != want), "records_lost": 0,
                          "records_duplicated": 0, "seconds": clock.seconds(), "temp_files_left": len(left),
                          "processes_left": len(stray_processes(base))})
    assert left == []


def slurm_args(work: Path) -> list[str]:
    return [f"work_dir={work}", "engine=hf", "threads=1", "seed=11", "prompts.n_prompts=8", "prompts.shard_size=4",
            "prompts.max_tokens=12", "prompts.min_words=1", "responses.shard_size=2", "responses.batch_size=1",
            "responses.max_tokens=16", "slurm.partition=low", "slurm.cpus_per_task=1", "slurm.time_min=60",
            "slurm.heartbeat_s=1"]


def shard_files(work: Path) -> dict[str, bytes]:
    return {f"{s}/{p.name}": p.read_bytes() for s in ("prompts", "responses")
            for p in sorted((work / "iter1" / s).glob("shard-*.jsonl"))}


def test_two_submits_at_once_queue_each_shard_once(slurm, tmp_path, tiny_llama, chaos_results):
    import shutil

    clock = Clock()
    local, work = tmp_path / "local", tmp_path / "slurm"
    for w in (local, work):
        shutil.copytree(tiny_llama, w / "iter1" / "sft" / "model")
    assert submit(["stage=prompts,responses", "executor=local", *slurm_args(local)]) == 0
    want = shard_files(local)

    cmd = [sys.executable, "-m", "srlm_hpc.submit", "stage=prompts,responses", "executor=slurm", *slurm_args(work)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    slurm.wait_for(lambda: not queued_jobs(), timeout=600, interval=1, what="the queue to drain")
    root = build_config({"work_dir": str(work)}).manifest_root
    for stage, n in (("prompts", 2), ("responses", 4)):
        states = StageManifest(root, 1, stage).states(n)
        assert [s.state for s in states] == ["done"] * n
        assert all(s.attempt == 1 for s in states), [(s.shard, s.attempt) for s in states]  # each ran once
    # the second submit waited for the first's lock, then found every shard queued
    assert any("0 submitted" in o or "already queued" in o for o in outs), outs
    got = compare(shard_files(work), want)
    chaos_results.append({"scenario": "two submits at once", "faults": {"concurrent submit": 1}, **got,
                          "seconds": clock.seconds(), "temp_files_left": len(temp_files(work)),
                          "processes_left": 0})
    assert got["outputs_differing"] == 0, got
    assert temp_files(work) == []


@pytest.mark.chaos_full
def test_a_submit_killed_between_queueing_and_recording(slurm, tmp_path, tiny_llama, chaos_results):
    """The jobs are queued but their ids never reach the manifest: the next submit queues the
    shards again. Of the two tasks of a shard, one owns it; the other finds it running (its
    owner alive) or done, and backs off."""
    import shutil

    clock = Clock()
    local, work = tmp_path / "local", tmp_path / "slurm"
    for w in (local, work):
        shutil.copytree(tiny_llama, w / "iter1" / "sft" / "model")
    assert submit(["stage=prompts,responses", "executor=local", *slurm_args(local)]) == 0
    want = shard_files(local)
    cmd = [sys.executable, "-m", "srlm_hpc.submit", "stage=prompts,responses", "executor=slurm", *slurm_args(work)]
    killed = subprocess.run(cmd, env={**os.environ, "SRLM_FAULT_POINT": "after-queueing"}, capture_output=True)
    assert killed.returncode == -9
    again = subprocess.run([*cmd, "wait=true"], capture_output=True, text=True)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    slurm.wait_for(lambda: not queued_jobs(), timeout=600, interval=1, what="the queue to drain")
    root = build_config({"work_dir": str(work)}).manifest_root
    for stage, n in (("prompts", 2), ("responses", 4)):
        assert [s.state for s in StageManifest(root, 1, stage).states(n)] == ["done"] * n
    got = compare(shard_files(work), want)
    chaos_results.append({"scenario": "submit killed while queueing", "faults": {"submit killed": 1}, **got,
                          "seconds": clock.seconds(), "temp_files_left": len(temp_files(work)), "processes_left": 0})
    assert got["outputs_differing"] == 0 and got["records_duplicated"] == 0, got
    assert temp_files(work) == []
