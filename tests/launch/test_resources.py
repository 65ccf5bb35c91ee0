"""What each stage's array task asks Slurm for, in submitit's sbatch file and for sbatch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.launch.resources import Resources, stage_resources
from srlm_hpc.manifest import StageManifest
from srlm_hpc.runner import rank0_finished


def cfg_with(**kv):
    return build_config({k: str(v) for k, v in kv.items()})


def test_defaults_are_one_task_per_array_element():
    cfg = cfg_with()
    for stage in ("prompts", "responses", "judge", "pairs", "ref_logps", "sft", "dpo", "eval"):
        assert stage_resources(cfg, stage) == Resources(cpus_per_task=cfg.slurm.cpus_per_task), stage


def test_tensor_parallel_takes_that_many_gpus_of_one_node_for_generation_only():
    cfg = cfg_with(**{"vllm.tensor_parallel_size": 4, "slurm.gpus_per_task": 1})
    assert stage_resources(cfg, "judge") == Resources(nodes=1, tasks_per_node=1, gpus_per_node=4, cpus_per_task=2)
    assert stage_resources(cfg, "dpo").gpus_per_node == 1  # training on the torch backend: one GPU
    assert stage_resources(cfg, "pairs").gpus_per_node == 0  # the merge needs no GPU


def test_pipeline_parallel_spans_nodes_with_one_task_each():
    cfg = cfg_with(**{"vllm.tensor_parallel_size": 8, "vllm.pipeline_parallel_size": 2})
    r = stage_resources(cfg, "responses")
    assert (r.nodes, r.tasks_per_node, r.gpus_per_node, r.tasks) == (2, 1, 8, 2)
    assert r.sbatch_options() == ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8"]


def test_deepspeed_training_has_one_rank_per_gpu_across_nodes():
    cfg = cfg_with(**{"dpo.backend": "deepspeed", "slurm.train_nodes": 4, "slurm.train_gpus_per_node": 8,
                      "slurm.gpus_per_task": 1})
    assert stage_resources(cfg, "dpo") == Resources(nodes=4, tasks_per_node=8, gpus_per_node=8, cpus_per_task=2)
    assert stage_resources(cfg, "sft").tasks == 1  # sft stays on torch
    cpu = cfg_with(**{"sft.backend": "deepspeed", "slurm.train_tasks_per_node": 2})
    assert stage_resources(cpu, "sft") == Resources(nodes=1, tasks_per_node=2, gpus_per_node=0, cpus_per_task=2)


def stub_srun_on_path(tmp_path, monkeypatch):
    """submitit's SlurmExecutor refuses to exist unless `srun` is on PATH, though rendering an
    sbatch file never runs it. A stub that would fail if called keeps this test the same on a
    machine that has never had Slurm and on one where the cluster fixture installed it."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\necho 'stub srun (tests/launch/test_resources.py): never run' >&2\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")


def test_submitit_writes_the_layout_into_its_sbatch_file(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from srlm_hpc.launch.slurm import make_executor

    stub_srun_on_path(tmp_path, monkeypatch)

    cfg = cfg_with(work_dir=tmp_path, **{"vllm.tensor_parallel_size": 4, "vllm.pipeline_parallel_size": 2,
                                         "slurm.partition": "gpu"})
    executor = make_executor(cfg, "judge", dependency=["123"])
    assert isinstance(executor._executor, submitit.SlurmExecutor)
    text = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --dependency=afterok:123"):
        assert line in text, (line, text)
    # a dead rank ends the step: the other ranks do not hold their nodes until the time limit
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun.split()


def test_worker_prints_the_sbatch_layout_for_iteration_sh(tmp_path):
    from srlm_hpc.config import to_dict

    cfg = cfg_with(work_dir=tmp_path, **{"dpo.backend": "deepspeed", "slurm.train_nodes": 2,
                                         "slurm.train_gpus_per_node": 4})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(cfg)))
    out = subprocess.run([sys.executable, "-m", "srlm_hpc.worker", "--resources", str(path), "dpo"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"]


def test_follower_waits_for_rank0_of_its_own_job(tmp_path, monkeypatch):
    """A follower must not leave on an earlier attempt's 'failed' state, only once rank 0 of
    this job has run the shard and stopped."""
    man = StageManifest(tmp_path, 1, "judge")
    man.write_plan(1, {})
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "41")  # an earlier attempt, by another job
    man.mark_running(0)
    man.mark_failed(0, RuntimeError("node died"))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    finished = rank0_finished(man, 0)
    assert not finished()  # failed, but by job 41: rank 0 of job 77 has not started yet
    man.mark_running(0)
    assert not finished()
    man.mark_failed(0, RuntimeError("oom"))
    assert finished()
    again = rank0_finished(man, 0)
    from srlm_hpc.files import FileInfo

    out = tmp_path / "x"
    out.write_text("x")
    man.mark_done(0, FileInfo(str(out), 1, 1, __import__("hashlib").sha256(b"x").hexdigest()))
    assert again()  # done is done, whoever did it
