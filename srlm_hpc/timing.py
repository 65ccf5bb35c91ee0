"""Where a run's time goes: per iteration and stage, wall time, model loads, and tokens/s.

Each shard records, in its manifest entry (`timing`, written with mark_done), what its
process spent on model loads (count, seconds, which models: an engine start, a model
loaded for training or scoring, the GGUF conversion of M0) and the tokens it generated
with the seconds inside the engine's generate. Start and end times are already there
(`started`, `finished`); training stages add their train_log.jsonl (tokens and seconds per
step). Nothing of this goes into a stage's output files, whose bytes must not depend on
timing.

    python -m srlm_hpc.status work_dir=runs/demo --timing   # the table
    <work_dir>/summary.json "timing"                          # the same rows (summary.write_run_summary)
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

# ---- what the running shard spends (one process runs one shard at a time) -----------------------
_current: dict | None = None
_loading = 0  # depth of nested model loads: an engine's start loads its model; it counts once


@contextlib.contextmanager
def recording() -> Iterator[dict]:
    """Collect, while inside, this process's model loads and generated tokens (a dict that
    goes into the shard's manifest entry as `timing`)."""
    global _current
    outer, _current = _current, {"model_loads": 0, "model_load_s": 0.0, "loads": [], "generated_tokens": 0,
                                 "generate_s": 0.0}
    try:
        yield _current
    finally:
        _current = outer


@contextlib.contextmanager
def model_load(kind: str, path: str | Path) -> Iterator[None]:
    """Time one load of the model at `path` (kind: engine, model, convert); loads inside it
    (an engine loading its weights) are part of it, not counted again."""
    global _loading
    _loading += 1
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _loading -= 1
        if _loading == 0 and _current is not None:
            seconds = time.perf_counter() - t0
            _current["model_loads"] += 1
            _current["model_load_s"] = round(_current["model_load_s"] + seconds, 3)
            _current["loads"].append({"kind": kind, "path": str(path), "seconds": round(seconds, 3)})


def note_generated(tokens: int, seconds: float) -> None:
    if _current is not None:
        _current["generated_tokens"] += int(tokens)
        _current["generate_s"] = round(_current["generate_s"] + seconds, 3)


class CountingEngine:
    """An engine whose generate calls count their tokens and seconds (note_generated); all
    else is the engine's own."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, conversations, params):
        t0 = time.perf_counter()
        outs = self.engine.generate(conversations, params)
        note_generated(sum(c.n_tokens for samples in outs for c in samples), time.perf_counter() - t0)
        return outs

    def generate_chunks(self, jobs):
        """The engine's stream, each job counted as it comes out; the seconds are those spent
        inside the engine (not in the caller's work between two jobs)."""
        stream = self.engine.generate_chunks(jobs)
        try:
            while True:
                t0 = time.perf_counter()
                item = next(stream, None)
                if item is None:
                    return
                note_generated(sum(c.n_tokens for samples in item[1] for c in samples), time.perf_counter() - t0)
                yield item
        finally:
            stream.close()

    def __getattr__(self, name):
        return getattr(self.engine, name)


# ---- the table -----------------------------------------------------------------------------------
TRAINING = ("sft", "dpo")


def train_log_totals(path: Path) -> tuple[float, float] | None:
    """(tokens, seconds) summed over a train_log.jsonl's steps; None without one."""
    if not path.is_file():
        return None
    tokens = seconds = 0.0
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, TypeError):
            rec = json.loads(line)
            tokens += float(rec.get("tokens") or 0)
            seconds += float(rec.get("seconds") or 0)
    return tokens, seconds


def stage_row(iteration: int, stage: str, states: list, train_log: Path | None = None) -> dict:
    """One row of the table from the stage's shard states (manifest.ShardState)."""
    done = [st for st in states if st.state == "done" and st.started and st.finished]
    timing = [getattr(st, "timing", None) or {} for st in done]
    row = {"iter": iteration, "stage": stage, "shards": len(states), "done": len(done),
           "wall_s": round(max(st.finished for st in done) - min(st.started for st in done), 2) if done else None,
           "shard_s": round(sum(st.finished - st.started for st in done), 2) if done else None,
           "model_loads": sum(t.get("model_loads", 0) for t in timing) if any(timing) else None,
           "model_load_s": round(sum(t.get("model_load_s", 0.0) for t in timing), 2) if any(timing) else None,
           "tokens": None, "work_s": None, "tokens_per_s": None, "kind": None}
    trained = train_log_totals(train_log) if stage in TRAINING and train_log is not None else None
    generated = sum(t.get("generated_tokens", 0) for t in timing)
    if trained and trained[0]:
        row.update(kind="trained", tokens=int(trained[0]), work_s=round(trained[1], 2))
    elif generated:
        row.update(kind="generated", tokens=generated, work_s=round(sum(t.get("generate_s", 0.0) for t in timing), 2))
    if row["tokens"] and row["work_s"]:
        row["tokens_per_s"] = round(row["tokens"] / row["work_s"], 1)
    return row


def run_timing(manifest_root: Path, work_dir: Path | None = None) -> list[dict]:
    """A row per planned (iteration, stage) of the run, in pipeline order; training stages'
    tokens from <work_dir>/iter<k>/<stage>/train_log.jsonl."""
    from .manifest import StageManifest
    from .stages import EXTRA, ORDER

    rows = []
    iters = sorted(int(p.name[4:]) for p in Path(manifest_root).glob("iter*") if p.name[4:].isdigit())
    for k in iters:
        for stage in ORDER + EXTRA:
            man = StageManifest(manifest_root, k, stage)
            plan = man.plan()
            if plan is None:
                continue
            log = Path(work_dir) / f"iter{k}" / stage / "train_log.jsonl" if work_dir is not None else None
            rows.append(stage_row(k, stage, man.states(plan["n_shards"]), log))
    return rows


def _s(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_timing(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    if not rows:
        return
    print("\nwhere the time went (done shards; wall: first start to last end; shard-s: summed over shards)",
          file=out)
    print(f"{'iter':>4} {'stage':<10} {'done':>6} {'wall s':>8} {'shard-s':>8} {'loads':>5} {'load s':>7} "
          f"{'tokens':>8} {'tok/s':>8}", file=out)
    for r in rows:
        tokens = "-" if r["tokens"] is None else f"{r['tokens']}{'t' if r['kind'] == 'trained' else ''}"
        print(f"{r['iter']:>4} {r['stage']:<10} {r['done']:>6} {_s(r['wall_s']):>8} {_s(r['shard_s']):>8} "
              f"{'-' if r['model_loads'] is None else r['model_loads']:>5} {_s(r['model_load_s']):>7} {tokens:>8} "
              f"{_s(r['tokens_per_s']):>8}", file=out)
    total = [r for r in rows if r["shard_s"] is not None]
    if total:
        recorded = [r for r in total if r["model_loads"] is not None]
        loads = (f"{sum(r['model_load_s'] for r in recorded):.1f} s of them loading models "
                 f"({sum(r['model_loads'] for r in recorded)} loads)" if recorded else
                 "model loads not recorded (shards done before timing.py)")
        print(f"total: {sum(r['shard_s'] for r in total):.1f} shard-s, {loads}; tokens: t = trained (tok/s over the "
              f"training steps), else generated (tok/s inside generate)", file=out)
