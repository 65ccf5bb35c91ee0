"""Where a pipeline stands: per iteration and stage, shard counts and the shards to look at.

    python -m srlm_hpc.status work_dir=runs/demo [run=NAME] [slurm.stale_after_s=900]

A running shard is stale when its heartbeat is older than `stale_after` seconds, or, under
Slurm, when its job has left the queue.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .config import config_from_cli
from .manifest import StageManifest
from .stages import ORDER


def live_jobs() -> dict[str, str] | None:
    """Slurm's queue when there is one (None without Slurm: then only heartbeats count)."""
    import shutil
    import subprocess

    if not shutil.which("squeue"):
        return None
    try:
        from .launch.slurm import queued_jobs

        return queued_jobs()
    except (subprocess.CalledProcessError, OSError):
        return None


def stage_report(man: StageManifest, stale_after: float, now: float, queue: dict[str, str] | None = None) -> dict:
    plan = man.plan()
    states = man.states(plan["n_shards"]) if plan else []
    counts = {"pending": 0, "running": 0, "done": 0, "failed": 0, "stale": 0}
    attention = []
    for st in states:
        state = st.state
        if state == "done" and man.verified_output(st) is None:
            state = "pending"  # its output changed since: it will rerun
        if state == "running":
            job_gone = queue is not None and not st.job_id.startswith("local-") and st.job_id not in queue
            if job_gone or (st.heartbeat or 0) < now - stale_after:
                state = "stale"
        counts[state] += 1
        if state in ("failed", "stale"):
            why = st.error if state == "failed" else (
                f"job {st.job_id} is no longer queued" if queue is not None and st.job_id not in queue
                else f"no heartbeat for {now - (st.heartbeat or 0):.0f}s")
            attention.append((st.shard, state, f"{why} (attempt {st.attempt})", st.log))
    return {"n_shards": len(states), "counts": counts, "attention": attention}


def report(manifest_root: Path, stale_after: float = 900.0) -> list[tuple[int, str, dict]]:
    rows = []
    now = time.time()
    queue = live_jobs()
    for it_dir in sorted(manifest_root.glob("iter*"), key=lambda p: int(p.name[4:])):
        k = int(it_dir.name[4:])
        for stage in ORDER:
            if (it_dir / stage / "plan.json").exists():
                rows.append((k, stage, stage_report(StageManifest(manifest_root, k, stage), stale_after, now, queue)))
    return rows


def print_report(rows, out=sys.stdout) -> None:
    if not rows:
        print("no stage has been planned yet", file=out)
        return
    print(f"{'iter':>4} {'stage':<10} {'shards':>6} {'done':>6} {'running':>8} {'pending':>8} {'failed':>7} "
          f"{'stale':>6}", file=out)
    for k, stage, r in rows:
        c = r["counts"]
        print(f"{k:>4} {stage:<10} {r['n_shards']:>6} {c['done']:>6} {c['running']:>8} {c['pending']:>8} "
              f"{c['failed']:>7} {c['stale']:>6}", file=out)
        for shard, state, why, log in r["attention"]:
            print(f"       shard {shard:05d} {state}: {why}" + (f" (log: {log})" if log else ""), file=out)


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_cli(argv)
    if cfg is None:
        return 2
    print(f"run {cfg.run.run!r}, manifests in {cfg.manifest_root}")
    print_report(report(cfg.manifest_root, cfg.slurm.stale_after_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
