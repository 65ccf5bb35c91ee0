"""A running shard's progress (chunk or step of how many, rate, ETA), for `status`.

The shard's own loop calls `update(done, total, unit)` (shards.run_chunked per chunk, the
training loop per optimizer step); the heartbeat thread that already touches the shard's
manifest entry every slurm.heartbeat_s writes the latest numbers beside it, as
`progress-00042.json`, by atomic rename. Nothing is written more often than the heartbeat.
The rate counts only work done by this process: chunks a resumed shard found on disk do
not make it look fast.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

_lock = threading.Lock()
_state: dict = {}


def reset() -> None:
    with _lock:
        _state.clear()


def update(done: int, total: int, unit: str) -> None:
    now = time.time()
    with _lock:
        if _state.get("unit") != unit:  # a new loop (e.g. chunks after a model load): restart the clock
            _state.clear()
            _state.update(unit=unit, first_done=done, first_time=now)
        _state.update(done=done, total=total, updated=now)


def snapshot() -> dict | None:
    with _lock:
        return dict(_state) if _state else None


def path(manifest_stage_dir: Path, shard: int) -> Path:
    return Path(manifest_stage_dir) / f"progress-{shard:05d}.json"


def write(manifest_stage_dir: Path, shard: int) -> None:
    from .files import atomic_write_json

    snap = snapshot()
    if snap is not None:
        atomic_write_json(path(manifest_stage_dir, shard), snap)


def read(manifest_stage_dir: Path, shard: int) -> dict | None:
    import json

    try:
        return json.loads(path(manifest_stage_dir, shard).read_text())
    except (OSError, ValueError):
        return None


def rate(p: dict) -> float | None:
    """Units per second done by the running process, None before its second update."""
    elapsed = p.get("updated", 0) - p.get("first_time", 0)
    done = p.get("done", 0) - p.get("first_done", 0)
    return done / elapsed if elapsed > 0 and done > 0 else None


def describe(p: dict | None) -> str:
    """'chunk 3/10, 0.25 chunk/s, ETA 28s' (or less, when there is less to say)."""
    if not p:
        return ""
    text = f"{p['unit']} {p['done']}/{p['total']}"
    r = rate(p)
    if r:
        left = max(0, p["total"] - p["done"]) / r
        text += f", {r:.3g} {p['unit']}/s, ETA {format_seconds(left)}"
    return text


def format_seconds(s: float) -> str:
    s = int(round(s))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
