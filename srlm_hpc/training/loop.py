"""The optimizer loop both training stages run: fixed batches, cosine LR, resumable exactly.

The batch order is a pure function of (seed, epoch), so a run resumed from a checkpoint at
step s sees exactly the batches an uninterrupted run sees from step s on: no sample is
skipped or repeated. A checkpoint holds model, optimizer, step and RNG state, written
atomically into <stage_dir>/checkpoint: every `checkpoint_every` steps, every
`checkpoint_minutes` (so a step budget longer than a job's time limit still makes
progress), and at a preemption signal, after the step in flight (srlm_hpc/preemption.py). Dropout is seeded per (step, micro-batch), so its
masks depend neither on what ran before nor on how many ranks share a batch.

backend="deepspeed" runs the same loop data-parallel on DeepSpeed ZeRO (distributed.py). The
pieces both loops share (batch order, LR schedule, seeds, checkpoint clock and identity, the
log file) are in steps.py, one level below both; they are re-exported here.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..files import atomic_open, replace_dir, temp_dir_beside
from .. import progress
from ..preemption import deferred_signals
from .curves import StepCurves
from .steps import (CheckpointClock, CheckpointMismatchError, batch_plan, check_identity,  # noqa: F401 (re-exported)
                    checkpoint_identity, cosine_lr, micro_seed, run_identity, stopped_early, write_log)


def save_checkpoint(ckpt_dir: Path, model, optimizer, step: int, log: list[dict],
                    identity: dict | None = None) -> None:
    tmp = temp_dir_beside(ckpt_dir)  # unique: a duplicate run never writes into ours
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "log": log,
             "identity": identity}
    try:
        with atomic_open(tmp / "state.pt") as f:
            torch.save(state, f)
        replace_dir(tmp, ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves the previous checkpoint, no half folder
        raise


def load_checkpoint(ckpt_dir: Path, model, optimizer, identity: dict | None = None) -> tuple[int, list[dict]]:
    """Restore a checkpoint (falling back to the previous one if a save was cut): (step, log).
    Plain tensors and containers only (weights_only): a checkpoint file cannot run code."""
    for d in (ckpt_dir, ckpt_dir.with_name(ckpt_dir.name + ".old")):
        if (d / "state.pt").exists():
            state = torch.load(d / "state.pt", weights_only=True)
            if identity is not None:
                check_identity(state.get("identity"), identity, ckpt_dir, state["step"])
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["python_rng"])
            return state["step"], state["log"]
    return 0, []


def train(model, plan: list[list[int]], micro_batch_size: int, micro_step: Callable, *, lr: float,
          min_lr: float, warmup: int, weight_decay: float, grad_clip: float, stage_dir: Path,
          seed: int = 0, checkpoint_every: int = 0, checkpoint_minutes: float = 0.0,
          stop_after: int | None = None, desc: str = "train", backend: str = "torch", zero_stage: int = 2, offload_optimizer: bool = False,
          offload_params: bool = False, bf16: bool = False, after_step: Callable[[int], None] | None = None) -> list[dict]:
    """Run the plan. `micro_step(indices, batch_indices) -> (loss_tensor, metrics)` returns the
    micro-batch's share of the batch loss, already divided by the batch's normaliser.
    `after_step(steps_done)` (torch backend only) runs after each optimizer step and before that
    step's checkpoint, so whatever it saves for step s exists whenever a checkpoint of s or later
    does: a resumed run never needs it for a step it does not run again (dpo's candidates).

    Returns the per-step log (also appended to <stage_dir>/train_log.jsonl). The ZeRO options
    apply to backend="deepspeed" only (distributed.train_deepspeed)."""
    if backend == "deepspeed" and after_step is not None:
        raise ValueError("after_step: the deepspeed backend does not take one (its weights are sharded across ranks)")
    if backend == "deepspeed":
        from .distributed import train_deepspeed

        return train_deepspeed(model, plan, micro_batch_size, micro_step, lr=lr, min_lr=min_lr, warmup=warmup,
                               weight_decay=weight_decay, grad_clip=grad_clip, stage_dir=stage_dir, seed=seed,
                               checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes,
                               stop_after=stop_after, desc=desc,
                               zero_stage=zero_stage, offload_optimizer=offload_optimizer,
                               offload_params=offload_params, bf16=bf16)
    if backend != "torch":
        raise ValueError(f"backend={backend!r}: valid backends are 'torch' and 'deepspeed'")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay, betas=(0.9, 0.95))
    ckpt_dir = stage_dir / "checkpoint"
    if any(ckpt_dir.glob("step-*")):
        raise RuntimeError(f"{ckpt_dir} holds a checkpoint of the deepspeed backend; resume with "
                           f"backend=deepspeed, or delete {ckpt_dir} to restart this stage on torch")
    # Dropout draws from torch's RNG: seed it, so two runs of the same stage agree; a resumed
    # run then takes the RNG state back from the checkpoint.
    torch.manual_seed(seed)
    random.seed(seed)
    identity = run_identity(plan, micro_batch_size=micro_batch_size, lr=lr, min_lr=min_lr, warmup=warmup,
                            weight_decay=weight_decay, grad_clip=grad_clip, seed=seed, backend="torch")
    start, log = load_checkpoint(ckpt_dir, model, optimizer, identity)
    if start:
        print(f"[{desc}] resumed from the checkpoint of step {start} of {len(plan)}", flush=True)
    log_path = stage_dir / "train_log.jsonl"
    curves = StepCurves(stage_dir, log)  # TensorBoard mirror of the log (curves.py)
    model.train()
    total = len(plan)
    bar = tqdm(range(start, total), desc=desc, initial=start, total=total, unit="step")
    clock, done = CheckpointClock(checkpoint_every, total, checkpoint_minutes), start
    with deferred_signals() as signals:
        for step in bar:
            t0 = time.time()
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, lr, min_lr, warmup)
            batch = plan[step]
            metrics: dict[str, float] = {}
            for j, i in enumerate(range(0, len(batch), micro_batch_size)):
                torch.manual_seed(micro_seed(seed, step, j))
                loss, m = micro_step(batch[i:i + micro_batch_size], batch)
                loss.backward()
                for k, v in m.items():
                    metrics[k] = metrics.get(k, 0.0) + v
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            entry = {"step": step, "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t0, 3),
                     **{k: round(v, 6) for k, v in metrics.items()}}
            if grad_norm is not None:
                entry["grad_norm"] = round(float(grad_norm), 6)
            log.append(entry)
            curves.step(entry)
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
            done = step + 1
            progress.update(done, total, "step")
            if after_step is not None:
                after_step(done)
            if clock.due(done, bool(signals)):
                save_checkpoint(ckpt_dir, model, optimizer, done, log, identity)
                write_log(log_path, log)
                clock.saved()
            if signals or (stop_after is not None and done >= stop_after):
                break
        write_log(log_path, log)
        curves.close()
    # Reached after a signal only if its own handler let the process go on.
    if signals and done < total:
        raise stopped_early(signals, done, total)
    model.eval()
    return log
