"""TensorBoard event files hold the series train_log.jsonl holds, read back with tensorboard's
own reader (an independent implementation of the format), also across a resume."""

from __future__ import annotations

import json

import pytest
import torch

from srlm_hpc.training.curves import crc32c, write_iteration_curves
from srlm_hpc.training.dpo_loss import dpo_loss
from srlm_hpc.training.loop import batch_plan, train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tiny_dpo(stage_dir, stop_after=None):
    """A DPO loop over 8 'pairs' whose log-probs come from a linear model: the real loop, the
    real loss, the metrics dpo.py logs."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4)
    ref = torch.randn(8, 2)

    def micro_step(idx, batch):
        lp = model(x[idx])
        losses, chosen, rejected = dpo_loss(lp[:, 0], lp[:, 1], ref[idx, 0], ref[idx, 1], beta=0.1)
        share = len(idx) / len(batch)
        return losses.sum() / len(batch), {"loss": losses.mean().item() * share,
                                           "reward_margin": (chosen - rejected).mean().item() * share,
                                           "reward_accuracy": (chosen > rejected).float().mean().item() * share}

    return train(model, batch_plan(8, 2, 2, seed=1), 1, micro_step, lr=0.1, min_lr=0.01, warmup=0, weight_decay=0.0,
                 grad_clip=1.0, stage_dir=stage_dir, seed=1, checkpoint_every=1, stop_after=stop_after)


def train_log(stage_dir) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "train_log.jsonl").read_text().splitlines()]


def test_event_files_hold_the_dpo_loss_series_of_train_log(tmp_path):
    tiny_dpo(tmp_path)
    log = train_log(tmp_path)
    curves = read_scalars(tmp_path / "tensorboard")
    assert len(log) == 8
    for key in ("loss", "lr", "reward_margin", "reward_accuracy", "grad_norm"):
        expected = [(e["step"], pytest.approx(e[key], rel=1e-6, abs=1e-7)) for e in log]  # stored as float32
        assert curves[f"train/{key}"] == expected, key


def test_a_resumed_run_has_each_step_once_as_train_log_does(tmp_path):
    tiny_dpo(tmp_path, stop_after=3)
    tiny_dpo(tmp_path)  # resumes from the checkpoint of step 3
    log = train_log(tmp_path)
    assert [e["step"] for e in log] == list(range(8))
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    steps = [s for s, _ in read_scalars(tmp_path / "tensorboard")["train/loss"]]
    assert steps == list(range(8))


def test_iteration_curves_hold_the_judge_parse_rate_and_score_histograms(tmp_path):
    bins = [f"{i / 2:.1f}-{(i + 1) / 2:.1f}" for i in range(10)]
    chosen = [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
    stats = {"judge_parse_rate": 0.75, "pairs": 10, "score_bins": bins, "chosen_score_hist": chosen,
             "rejected_score_hist": chosen[::-1]}
    (tmp_path / "iter2" / "pairs").mkdir(parents=True)
    (tmp_path / "iter2" / "pairs" / "stats.json").write_text(json.dumps(stats))
    write_iteration_curves(tmp_path, 2)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "iter2"), size_guidance={"histograms": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("judge/parse_rate")] == [(2, 0.75)]
    (h,) = acc.Histograms("judge/chosen_score")
    assert h.step == 2 and h.histogram_value.num == 10
    assert list(h.histogram_value.bucket) == [float(c) for c in chosen]
    assert list(h.histogram_value.bucket_limit) == [(i + 1) / 2 for i in range(10)]


def test_crc32c_matches_the_published_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720, B.4


def test_log_wandb_without_wandb_installed_says_so_and_keeps_tensorboard(tmp_path, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: this checks the message for when it is not")
    from srlm_hpc.training.curves import StepCurves

    monkeypatch.setenv("SRLM_WANDB", "1")  # what runner.setup_process sets for log.wandb=true
    curves = StepCurves(tmp_path, [])
    curves.step({"step": 0, "loss": 0.5, "tokens": 100.0, "seconds": 2.0})
    curves.close()
    assert "log.wandb=true but wandb is not installed" in capsys.readouterr().out
    assert read_scalars(tmp_path / "tensorboard")["train/tokens_per_s"] == [(0, 50.0)]
