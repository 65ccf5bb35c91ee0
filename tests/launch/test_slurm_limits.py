"""The cluster's own limits, met on the real one-node Slurm: a stage with more shards than
MaxArraySize allows in one array is queued as several array jobs (launch/slurm.submit_stage).

The test cluster is configured with a small MaxArraySize (setup.sh: SRLM_SLURM_MAX_ARRAY,
5 by default), so a stage of 6 cheap prompts shards already crosses it. That limit is
Slurm's, not ours: sbatch itself refuses an index at it, and the launcher learns it from
`scontrol show config`.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.launch.slurm import max_array_size, queued_jobs
from srlm_hpc.manifest import StageManifest
from srlm_hpc.submit import main as submit

pytestmark = pytest.mark.slurm

# What setup.sh writes into slurm.conf (MaxArraySize): array indices 0..4.
CONFIGURED_MAX_ARRAY = int(os.environ.get("SRLM_SLURM_MAX_ARRAY", "5"))


@pytest.fixture
def array_limit(slurm) -> int:
    """The running cluster's MaxArraySize, which must be the one setup.sh configures. A
    cluster kept up (SRLM_SLURM_KEEP=1) since before setup.sh set it still has Slurm's 1001:
    its slurmd and slurmctld are restarted the way the chaos tests restart them
    (SlurmCluster.ensure_up: setup.sh start writes the configs again and starts what is
    missing). The queue is empty here (the `slurm` fixture), so no job is lost."""
    if CONFIGURED_MAX_ARRAY > 9:
        pytest.skip(f"SRLM_SLURM_MAX_ARRAY={CONFIGURED_MAX_ARRAY}: crossing it takes more array tasks than a "
                    f"test should run; the default, 5, is crossed by 6")
    if max_array_size() != CONFIGURED_MAX_ARRAY:
        for daemon in ("slurmd", "slurmctld"):
            slurm.stop_daemon(daemon, signal.SIGTERM)
        slurm.ensure_up()
    limit = max_array_size()
    assert limit == CONFIGURED_MAX_ARRAY, f"the cluster says MaxArraySize={limit}, setup.sh writes " \
                                          f"{CONFIGURED_MAX_ARRAY}"
    return limit


def prompts_args(work: Path, n_shards: int) -> list[str]:
    # One prompt per shard: the cheapest stage there is, n_shards array tasks.
    return [f"work_dir={work}", "engine=hf", "threads=1", "seed=11", f"prompts.n_prompts={n_shards}",
            "prompts.shard_size=1", "prompts.max_tokens=12", "prompts.min_words=1", "slurm.partition=low",
            "slurm.cpus_per_task=1", "slurm.time_min=60", "slurm.heartbeat_s=1"]


def prepare(work: Path, tiny_llama: Path) -> Path:
    """A work dir whose M1 is the tiny model (prompts reads M1; sft is not run)."""
    shutil.copytree(tiny_llama, work / "iter1" / "sft" / "model")
    return work


def prompt_files(work: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((work / "iter1" / "prompts").glob("shard-*.jsonl"))}


def array_tasks(slurm, job_ids: list[str], n: int) -> list[str]:
    """Every array task sacct knows of these jobs (JOBID_INDEX, every run of a requeued one),
    once sacct lists `n` of them: slurmdbd splits an array's single record into its tasks
    only after they end."""

    def rows():
        got = [r[0] for j in job_ids for r in slurm.sacct(j, "JobID", duplicates=True)]
        return got if len(got) >= n else None

    return slurm.wait_for(rows, timeout=60, interval=0.5, what=f"sacct to list {n} array tasks of {job_ids}")


def test_a_stage_past_max_array_size_is_queued_as_several_arrays_each_shard_once(array_limit, slurm, tmp_path,
                                                                                 tiny_llama, capsys):
    # The limit is real: Slurm itself refuses an array index at MaxArraySize.
    refused = slurm.run(["sbatch", f"--array=0-{array_limit}", "--output=/dev/null", "--wrap=true"], check=False)
    assert refused.returncode != 0 and "array" in refused.stderr.lower(), refused.stderr

    n = array_limit + 1  # 6 shards: one array of 4 (indices 0-3) and one of 2
    local = prepare(tmp_path / "local", tiny_llama)
    assert submit(["stage=prompts", "executor=local", *prompts_args(local, n)]) == 0
    want = prompt_files(local)
    assert len(want) == n

    work = prepare(tmp_path / "slurm", tiny_llama)
    args = ["stage=prompts", "executor=slurm", *prompts_args(work, n)]
    capsys.readouterr()
    assert submit(args) == 0
    man = StageManifest(build_config({"work_dir": str(work)}).manifest_root, 1, "prompts")
    queued = {shard: man.queued_job(shard) for shard in range(n)}
    jobs: dict[str, list[int]] = {}
    for shard, job in queued.items():
        array, _, index = job.partition("_")
        jobs.setdefault(array, []).append(int(index))
    # Slices of MaxArraySize-1 shards, in order: the array indices each job was given.
    per_job = array_limit - 1
    assert sorted(jobs.values()) == sorted([list(range(per_job)), list(range(n - per_job))]), queued
    assert len(set(queued.values())) == n  # each shard has an array task of its own
    said = capsys.readouterr().out
    assert f"{n} submitted as job {','.join(sorted(jobs, key=int))}" in said, said  # submit names both

    # The same command with wait=true finds every shard queued, adds nothing, and waits.
    assert submit([*args, "wait=true"]) == 0
    assert not queued_jobs()
    assert sorted(array_tasks(slurm, sorted(jobs), n)) == sorted(queued.values())  # each queued once, run once
    states = man.states(n)
    assert [s.state for s in states] == ["done"] * n
    assert [s.attempt for s in states] == [1] * n
    assert [s.job_id for s in states] == [queued[i] for i in range(n)]  # run by the task queued for it
    assert prompt_files(work) == want  # the split changes nothing in the outputs


def test_plain_sbatch_splits_a_stage_past_max_array_size_too(array_limit, slurm, tmp_path, tiny_llama):
    """slurm/iteration.sh queues the same 6 shards as arrays with an offset (shard = offset +
    array index, added back by common.sh): every shard done once, bytes as a local run's."""
    import subprocess
    import sys

    n = array_limit + 1
    local = prepare(tmp_path / "local", tiny_llama)
    assert submit(["stage=prompts", "executor=local", *prompts_args(local, n)]) == 0
    work = prepare(tmp_path / "sbatch", tiny_llama)
    repo = Path(__file__).resolve().parents[2]
    cmd = [str(repo / "slurm" / "iteration.sh"), "stage=prompts", *prompts_args(work, n),
           "--", "--partition=low", "--cpus-per-task=1", f"--chdir={tmp_path}"]
    out = subprocess.run(cmd, env={**os.environ, "SRLM_PYTHON": sys.executable}, capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    per_job = array_limit  # indices 0..MaxArraySize-1, which sbatch takes
    first = ",".join(map(str, range(per_job)))
    rest = ",".join(map(str, range(per_job, n)))
    assert f"[prompts] shards {first} submitted as job" in out.stdout, out.stdout
    assert f"[prompts] shards {rest} submitted as job" in out.stdout, out.stdout
    slurm.wait_for(lambda: not queued_jobs() or None, timeout=300, interval=1, what="the sbatch arrays to finish")
    man = StageManifest(build_config({"work_dir": str(work)}).manifest_root, 1, "prompts")
    states = man.states(n)
    assert [s.state for s in states] == ["done"] * n and [s.attempt for s in states] == [1] * n
    assert prompt_files(work) == prompt_files(local)
