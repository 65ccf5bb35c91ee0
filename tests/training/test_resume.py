"""A training stage killed mid-run resumes from its checkpoint and ends with the weights of
an uninterrupted run: same batches, same order, same RNG, nothing skipped or repeated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import oasst_rows, write_jsonl_rows

IFT = [(f"Question number {i}: what is {i} plus {i}?", f"The answer is {2 * i}.") for i in range(24)]


def sft_args(work: Path, model: Path, ift: Path) -> list[str]:
    # 24 examples, batch 2, 2 epochs: 24 optimizer steps, a checkpoint every 3.
    return ["stage=sft", "iter=1", "executor=local", "engine=hf", "threads=1", f"work_dir={work}", f"model={model}",
            f"sft.ift_path={ift}", "sft.use_eft=false", "sft.lr=1e-3", "sft.min_lr=1e-4", "sft.epochs=2",
            "sft.batch_size=2", "sft.micro_batch_size=1", "sft.checkpoint_every=3", "sft.dropout=0.1",
            "sft.max_len=64"]


def run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "srlm_hpc.submit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def weights(work: Path) -> dict[str, torch.Tensor]:
    return load_file(work / "iter1" / "sft" / "model" / "model.safetensors")


@pytest.mark.slow
def test_sft_killed_after_a_checkpoint_ends_with_the_uninterrupted_weights(tmp_path, tiny_llama):
    ift = write_jsonl_rows(tmp_path / "ift.jsonl", oasst_rows(IFT, "resume"))
    straight = tmp_path / "straight"
    proc = run(sft_args(straight, tiny_llama, ift))
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()

    killed = tmp_path / "killed"
    ckpt = killed / "iter1" / "sft" / "checkpoint" / "state.pt"
    proc = run(sft_args(killed, tiny_llama, ift))
    deadline = time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed: make the run longer"
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch, after at least one checkpoint
    proc.wait()
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 3 <= step < 24
    proc = run(sft_args(killed, tiny_llama, ift))  # the same command again
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()

    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    log = (killed / "iter1" / "sft" / "train_log.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in log] == list(range(24))  # each step once


def test_a_checkpoint_of_another_batch_size_or_other_data_is_refused(tmp_path):
    """A preempted run resumed with another batch size would repeat or skip samples under a new
    LR schedule; one resumed on other data (pairs regenerated) would mix two datasets."""
    from srlm_hpc.training.loop import CheckpointMismatchError, batch_plan, checkpoint_identity, train

    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def go(batch_size, stop_after=None, data="pairs:aaa"):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 1)

        def micro_step(idx, batch):
            loss = ((model(x[idx]) - y[idx]) ** 2).sum() / len(batch)
            return loss, {"loss": loss.item()}

        with checkpoint_identity(config="cfg-1", data=[data]):
            return train(model, batch_plan(16, batch_size, 1, seed=3), 1, micro_step, lr=1e-2, min_lr=1e-3, warmup=0,
                         weight_decay=0.0, grad_clip=0.0, stage_dir=tmp_path, seed=5, checkpoint_every=1,
                         stop_after=stop_after)

    go(4, stop_after=2)  # preempted after 2 of 4 steps, checkpoint saved
    with pytest.raises(CheckpointMismatchError, match=r"step 2 .*plan: .*steps: 4 -> 8"):
        go(2)
    with pytest.raises(CheckpointMismatchError, match="data: \\['pairs:aaa'\\] -> \\['pairs:bbb'\\]"):
        go(4, data="pairs:bbb")
    assert [e["step"] for e in go(4)] == [0, 1, 2, 3]  # the same values resume where it stopped


def test_a_deepspeed_checkpoint_of_another_config_is_refused(tmp_path):
    from srlm_hpc.files import atomic_write_json
    from srlm_hpc.training.distributed import MARKER, resume_point
    from srlm_hpc.training.loop import CheckpointMismatchError

    folder = tmp_path / "checkpoint" / "step-00000004"
    folder.mkdir(parents=True)
    mine = {"plan": "aa", "steps": 8, "lr": 1e-3, "config": "cfg-1"}
    atomic_write_json(folder / MARKER, {"step": 4, "world_size": 2, "zero_stage": 2, "log": [], "identity": mine})
    assert resume_point(tmp_path / "checkpoint", 2, 2, dict(mine))["step"] == 4
    with pytest.raises(CheckpointMismatchError, match="lr: 0.001 -> 0.002"):
        resume_point(tmp_path / "checkpoint", 2, 2, dict(mine, lr=2e-3))
