"""What both training loops share (loop.py on torch, distributed.py on DeepSpeed): the batch
order, the LR schedule, the dropout seeds, when to checkpoint, what a checkpoint belongs to,
and the log file. One level below both loops, so each imports it and neither the other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from pathlib import Path

from ..files import atomic_open
from ..preemption import Preempted


def batch_plan(n_examples: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Every optimizer step's example indices, for all epochs; the last batch may be short."""
    steps = []
    for epoch in range(epochs):
        order = list(range(n_examples))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        steps += [order[i:i + batch_size] for i in range(0, n_examples, batch_size)]
    return steps


def cosine_lr(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def micro_seed(seed: int, step: int, micro: int) -> int:
    """The torch seed of micro-batch `micro` of optimizer step `step` (63 bits of a hash)."""
    digest = hashlib.sha256(f"{seed}-{step}-{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class CheckpointClock:
    """When to save: every `every` steps and after the last (every=0: never), whenever
    `minutes` have passed since the last save (0: steps only), and on a noted signal."""

    def __init__(self, every: int, total: int, minutes: float = 0.0):
        self.every, self.total, self.seconds = every, total, minutes * 60
        self.last = time.monotonic()

    def due(self, done: int, signalled: bool = False) -> bool:
        if not self.every:
            return False
        late = self.seconds > 0 and time.monotonic() - self.last >= self.seconds
        return signalled or late or done % self.every == 0 or done == self.total

    def saved(self) -> None:
        self.last = time.monotonic()


def stopped_early(signals, done: int, total: int, who: str = "") -> Preempted:
    """The error of a loop that stopped at a step boundary on a signal; `who` names the rank
    (whose own `signals` may be empty when another rank received it)."""
    return Preempted(f"{who}stopped after step {done} of {total} on "
                     f"{signals.names() or 'a signal another rank received'}; a rerun resumes from the "
                     f"last checkpoint")


# What a checkpoint belongs to, beyond the loop's own arguments: set by the runner for the
# shard it runs (the fingerprint of the config keys that shape the stage, and the digests of
# the upstream outputs it trains on).
_owner_identity: dict = {}


class CheckpointMismatchError(RuntimeError):
    """A checkpoint written for another config or other data than this run's."""


@contextlib.contextmanager
def checkpoint_identity(**fields):
    """Within, checkpoints record `fields` and refuse to resume from one that recorded others."""
    global _owner_identity
    outer, _owner_identity = _owner_identity, dict(fields)
    try:
        yield
    finally:
        _owner_identity = outer


def run_identity(plan: list[list[int]], **settings) -> dict:
    """What a checkpoint of this run belongs to: the batch plan (which examples, in which order,
    so a changed batch size or data count shows), the settings that shape the updates, and
    what the runner set (checkpoint_identity)."""
    plan_sha = hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]
    return {"plan": plan_sha, "steps": len(plan), **settings, **_owner_identity}


def check_identity(saved: dict | None, mine: dict, where: Path, step: int) -> None:
    """Refuse to resume from a checkpoint of another config or other data. Fields only one side
    records (a checkpoint written before a field existed, or outside the runner) are not
    compared; the batch plan and the loop's settings always are. None: a checkpoint written
    before identities were recorded, taken as it is."""
    if saved is None:
        return
    changed = [f"{k}: {saved[k]!r} -> {mine[k]!r}" for k in sorted(set(saved) & set(mine)) if saved[k] != mine[k]]
    if changed:
        raise CheckpointMismatchError(
            f"{where}: the checkpoint of step {step} belongs to another config or other data than this run "
            f"({'; '.join(changed)}): resuming would mix the two. Restore the old values to resume, or delete "
            f"{where} to train this stage afresh.")


def write_log(path: Path, log: list[dict]) -> None:
    with atomic_open(path, "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in log)
