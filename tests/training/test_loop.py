"""The training loop's checkpoints (srlm_hpc/training/loop.py): on a preemption signal it
finishes the step in flight, saves, and only then lets the signal's handler act; on a
clock as well as every N steps. A resumed run ends with the uninterrupted run's weights."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from srlm_hpc.preemption import Preempted
from srlm_hpc.training import loop
from srlm_hpc.training.loop import CheckpointClock, batch_plan, train

N, STEPS = 24, 12  # 24 examples, batch 2: 12 optimizer steps


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 6, generator=g), torch.randn(N, 1, generator=g)


def fresh_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1))


def run(model, stage_dir, signal_at_step=None, checkpoint_every=100):
    x, y = data()
    steps = []

    def micro_step(idx, batch):
        step = len(steps)
        steps.append(step)
        if step == signal_at_step:
            os.kill(os.getpid(), signal.SIGUSR2)  # arrives mid-step, as Slurm's warning would
        loss = ((model(x[idx]) - y[idx]) ** 2).sum() / len(batch)
        return loss, {"loss": loss.item()}

    return train(model, batch_plan(N, 2, 1, seed=3), 2, micro_step, lr=1e-2, min_lr=1e-3, warmup=0, weight_decay=0.0,
                 grad_clip=1.0, stage_dir=stage_dir, seed=5, checkpoint_every=checkpoint_every)


@pytest.fixture
def usr2_handler():
    """Installs a handler for USR2 (submitit's place), restored afterwards."""
    old = signal.getsignal(signal.SIGUSR2)
    yield lambda h: signal.signal(signal.SIGUSR2, h)
    signal.signal(signal.SIGUSR2, old)


def saved_step(stage_dir) -> int | None:
    path = stage_dir / "checkpoint" / "state.pt"
    return torch.load(path, weights_only=False)["step"] if path.exists() else None


def test_a_signal_mid_step_saves_after_that_step_then_reaches_its_handler(tmp_path, usr2_handler):
    straight = fresh_model()
    run(straight, tmp_path / "straight")

    seen = []
    usr2_handler(lambda signum, frame: seen.append(saved_step(tmp_path / "cut")))
    with pytest.raises(Preempted, match="after step 5 of 12 on SIGUSR2"):
        run(fresh_model(), tmp_path / "cut", signal_at_step=4)  # checkpoints would come only at step 12
    assert seen == [5]  # the handler ran once, after the checkpoint of the step in flight was saved

    resumed = fresh_model()
    log = run(resumed, tmp_path / "cut")
    assert [e["step"] for e in log] == list(range(STEPS))  # every step once
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7)


def test_a_handler_that_exits_like_submitits_still_finds_the_checkpoint(tmp_path, usr2_handler):
    def submitit_like(signum, frame):
        raise SystemExit(-1)  # submitit requeues the job, then sys.exit(-1)

    usr2_handler(submitit_like)
    with pytest.raises(SystemExit):
        run(fresh_model(), tmp_path, signal_at_step=7)
    assert saved_step(tmp_path) == 8


def test_without_a_signal_the_handler_is_untouched_and_nothing_is_raised(tmp_path, usr2_handler):
    seen = []

    def handler(signum, frame):
        seen.append(signum)

    usr2_handler(handler)
    log = run(fresh_model(), tmp_path, checkpoint_every=5)
    assert len(log) == STEPS and seen == [] and saved_step(tmp_path) == STEPS
    assert signal.getsignal(signal.SIGUSR2) is handler


def test_the_clock_saves_between_step_checkpoints(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    clock = CheckpointClock(every=50, total=200, minutes=10)
    assert not clock.due(1)
    now[0] += 599
    assert not clock.due(2)
    now[0] += 2
    assert clock.due(3)  # ten minutes since the last save
    clock.saved()
    assert not clock.due(4) and clock.due(50) and clock.due(200) and clock.due(7, signalled=True)
    assert not CheckpointClock(every=0, total=200, minutes=10).due(200, signalled=True)  # checkpoints off
