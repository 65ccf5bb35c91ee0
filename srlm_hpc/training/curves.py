"""Training curves where people look for them: TensorBoard event files (and W&B when asked).

    tensorboard --logdir runs/demo        # iter1/sft/tensorboard, iter1/dpo/tensorboard, tensorboard/

Each training step's entry of train_log.jsonl (the source of truth) is mirrored as scalars
under <stage_dir>/tensorboard/: loss, lr, grad_norm, DPO's reward margin and accuracy,
tokens/s. Per iteration, <work_dir>/tensorboard/ gets the judge's parse rate and the score
histograms of the chosen and rejected responses (from pairs/stats.json), at step k.

The event files are written by a small writer of our own (TFRecord framing, a hand-encoded
Event protobuf, CRC-32C), so no TensorFlow or tensorboard package is needed to write them.
A resumed run rewrites its stage's event file from the checkpoint's log, so the curves hold
each step once, exactly as train_log.jsonl does. W&B: log.wandb=true logs the same scalars
when `wandb` is installed, offline unless WANDB_MODE says otherwise.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

# ---- CRC-32C (Castagnoli), as TFRecord frames need it ------------------------------------------
_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- protobuf wire format, only what Event/Summary need ----------------------------------------
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _double(field: int, x: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", x)


def _packed_doubles(field: int, xs: list[float]) -> bytes:
    return _bytes_field(field, b"".join(struct.pack("<d", x) for x in xs))


def _event(step: int, wall_time: float, summary: bytes = b"", file_version: str = "") -> bytes:
    out = _double(1, wall_time) + _key(2, 0) + _varint(step)
    if file_version:
        out += _bytes_field(3, file_version.encode())
    if summary:
        out += _bytes_field(5, summary)
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))


def _histogram_value(tag: str, bucket_limits: list[float], counts: list[float], values_sum: float,
                     sum_squares: float, lo: float, hi: float) -> bytes:
    histo = (_double(1, lo) + _double(2, hi) + _double(3, float(sum(counts))) + _double(4, values_sum)
             + _double(5, sum_squares) + _packed_doubles(6, bucket_limits) + _packed_doubles(7, counts))
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(5, histo))


class EventWriter:
    """One TensorBoard event file; each record is flushed at once (a job may die any time)."""

    def __init__(self, logdir: str | Path):
        self.dir = Path(logdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.dir / name
        self._f = open(self.path, "ab")
        self._record(_event(0, time.time(), file_version="brain.Event:2"))

    def _record(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._f.write(header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data)))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        summary = b"".join(_scalar_value(tag, float(v)) for tag, v in values.items())
        if summary:
            self._record(_event(step, wall_time or time.time(), summary))

    def histogram(self, step: int, tag: str, bin_edges: list[float], counts: list[int]) -> None:
        """counts[i] values in [bin_edges[i], bin_edges[i+1]) (len(bin_edges) == len(counts) + 1)."""
        mids = [(a + b) / 2 for a, b in zip(bin_edges, bin_edges[1:])]
        total = sum(c * m for c, m in zip(counts, mids))
        squares = sum(c * m * m for c, m in zip(counts, mids))
        used = [i for i, c in enumerate(counts) if c]
        lo = bin_edges[used[0]] if used else 0.0
        hi = bin_edges[used[-1] + 1] if used else 0.0
        value = _histogram_value(tag, list(bin_edges[1:]), [float(c) for c in counts], total, squares, lo, hi)
        self._record(_event(step, time.time(), value))

    def close(self) -> None:
        self._f.close()


# ---- what the training loop and the iteration write ---------------------------------------------
STEP_SCALARS = ("loss", "lr", "grad_norm", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected")


def step_scalars(entry: dict) -> dict[str, float]:
    """The curves of one train_log entry; tokens/s from its token count and seconds."""
    out = {f"train/{k}": entry[k] for k in STEP_SCALARS if k in entry}
    if entry.get("tokens") and entry.get("seconds"):
        out["train/tokens_per_s"] = entry["tokens"] / entry["seconds"]
    if entry.get("seconds"):
        out["train/seconds_per_step"] = entry["seconds"]
    return out


class StepCurves:
    """The training loop's view: `step(entry)` per optimizer step. Opened on a (re)start with
    the log so far, which replaces any earlier event file of the stage: one value per step."""

    def __init__(self, stage_dir: Path, log_so_far: list[dict], run_name: str = ""):
        self.dir = Path(stage_dir) / "tensorboard"
        self.writer = None
        self.wandb = None
        try:
            for old in self.dir.glob("events.out.tfevents.*"):
                old.unlink()
            self.writer = EventWriter(self.dir)
            for entry in log_so_far:
                self.writer.scalars(entry["step"], step_scalars(entry))
        except OSError as e:  # curves are a view: a full or read-only disk must not stop training
            print(f"[curves] not written ({e}); {Path(stage_dir) / 'train_log.jsonl'} still is", flush=True)
            self.writer = None
        self.wandb = start_wandb(run_name or Path(stage_dir).name, Path(stage_dir))

    def step(self, entry: dict) -> None:
        values = step_scalars(entry)
        if self.writer is not None:
            try:
                self.writer.scalars(entry["step"], values)
            except OSError:
                self.writer = None
        if self.wandb is not None:
            self.wandb.log(values, step=entry["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def start_wandb(name: str, stage_dir: Path):
    """A W&B run when log.wandb=true (SRLM_WANDB=1 in the process) and wandb imports; offline
    by default (WANDB_MODE=online to sync), its files under the stage's folder."""
    if os.environ.get("SRLM_WANDB", "") not in ("1", "true"):
        return None
    try:
        import wandb
    except ImportError:
        print("[curves] log.wandb=true but wandb is not installed (pip install wandb): TensorBoard only", flush=True)
        return None
    os.environ.setdefault("WANDB_MODE", "offline")
    return wandb.init(project="srlm_hpc", name=name, dir=str(stage_dir), reinit=True)


def write_iteration_curves(work_dir: Path, k: int) -> Path | None:
    """Iteration k's judge parse rate and score histograms (from iter<k>/pairs/stats.json) as
    step k of <work_dir>/tensorboard/iter<k>/; None when the pairs stage has no stats yet."""
    import json

    stats_path = Path(work_dir) / f"iter{k}" / "pairs" / "stats.json"
    if not stats_path.exists():
        return None
    stats = json.loads(stats_path.read_text())
    logdir = Path(work_dir) / "tensorboard" / f"iter{k}"
    for old in logdir.glob("events.out.tfevents.*"):
        old.unlink()  # rewritten whole: the stats file is the source of truth
    w = EventWriter(logdir)
    w.scalars(k, {"judge/parse_rate": stats.get("judge_parse_rate", 0.0), "pairs/pairs": stats.get("pairs", 0)})
    bins = stats.get("score_bins")  # "0.0-0.5", "0.5-1.0", ... (stages/pairs.py BINS)
    for side in ("chosen", "rejected"):
        counts = stats.get(f"{side}_score_hist")
        if bins and counts and len(bins) == len(counts):
            edges = [float(b.split("-")[0]) for b in bins] + [float(bins[-1].split("-")[1])]
            w.histogram(k, f"judge/{side}_score", edges, counts)
    w.close()
    return w.path
