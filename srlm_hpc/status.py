"""Where a pipeline stands: per iteration and stage, shard counts, what running shards are
doing (chunk or step, rate, ETA), and the shards to look at, with their logs.

    python -m srlm_hpc.status work_dir=runs/demo [run=NAME] [manifest_dir=DIR] [slurm.stale_after_s=900]
    python -m srlm_hpc.status preset=demo --json           # the same facts, for programs
    python -m srlm_hpc.status work_dir=runs/demo --verify  # hash every output file again (default: only
                                                           # files whose size, mtime or inode changed)
    python -m srlm_hpc.status work_dir=runs/demo --timing  # and where the time went: wall, model loads,
                                                           # tokens/s per stage (timing.py; in --json too)
    until python -m srlm_hpc.status work_dir=runs/r1; do sleep 60; done   # wait for the run

Exit status: 0 when every planned shard of the run is done and verified; 1 when any is
failed, stale or given up (failed slurm.max_retries times); 3 when nothing failed but work
is still pending or running; 2 for a usage error or a run with nothing planned yet (a wrong
work_dir= or run= most likely), so the `until` loop above stops on anything but 3.

A running shard is stale when its heartbeat is older than `stale_after` seconds, or, under
Slurm, when its job has left the queue.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import progress
from .cli import EXIT_FAILED, EXIT_OK, EXIT_PENDING, EXIT_USAGE, main_with_help
from .config import config_from_cli
from .manifest import StageManifest
from .stages import EXTRA, ORDER

STAGES = ORDER + EXTRA  # eft too: it runs on request only, but it has shards like any other


def live_jobs() -> dict[str, str] | None:
    """Slurm's queue when there is one (None without Slurm, or when it does not answer: then
    only heartbeats count)."""
    import shutil

    if not shutil.which("squeue"):
        return None
    try:
        from .launch.slurm import queued_jobs

        return queued_jobs()
    except Exception as e:  # noqa: BLE001 - any failure to ask the queue: judge by heartbeats alone
        print(f"note: Slurm does not answer ({str(e).strip().splitlines()[-1] if str(e).strip() else e!r}); "
              f"running shards are judged by their heartbeats alone", file=sys.stderr)
        return None


def stage_report(man: StageManifest, stale_after: float, now: float, queue: dict[str, str] | None = None,
                 max_retries: int | None = None, verify: bool = False) -> dict:
    plan = man.plan()
    states = man.states(plan["n_shards"]) if plan else []
    counts = {"pending": 0, "running": 0, "done": 0, "failed": 0, "stale": 0}
    attention, running, given_up = [], [], []
    for st in states:
        state = st.state
        if state == "done" and man.verified_output(st, full=verify) is None:
            state = "pending"  # its output changed since: it will rerun
        if state == "running":
            job_gone = queue is not None and not st.job_id.startswith("local-") and st.job_id not in queue
            if job_gone or (st.heartbeat or 0) < now - stale_after:
                state = "stale"
        counts[state] += 1
        if state in ("pending", "failed") and max_retries is not None and st.failures >= max_retries:
            given_up.append(st.shard)
            attention.append((st.shard, "given up", f"failed {st.failures} times (slurm.max_retries={max_retries})"
                              + (f", last: {st.error}" if st.error else ""), st.log))
        elif state in ("failed", "stale"):
            why = st.error if state == "failed" else (
                f"job {st.job_id} is no longer queued" if queue is not None and st.job_id not in queue
                else f"no heartbeat for {now - (st.heartbeat or 0):.0f}s")
            attention.append((st.shard, state, f"{why} (attempt {st.attempt})", st.log))
        elif state == "running":
            running.append({"shard": st.shard, "job_id": st.job_id, "host": st.host, "attempt": st.attempt,
                            "heartbeat_age_s": round(now - (st.heartbeat or now), 1), "log": st.log,
                            "progress": progress.read(man.dir, st.shard)})
    return {"n_shards": len(states), "counts": counts, "attention": attention, "running": running,
            "given_up": given_up}


def report(manifest_root: Path, stale_after: float = 900.0, max_retries: int | None = None,
           queue: dict[str, str] | None | bool = True, verify: bool = False) -> list[tuple[int, str, dict]]:
    """[(iteration, stage, stage_report)] for every planned stage; `queue`: True asks Slurm."""
    rows = []
    now = time.time()
    queue = live_jobs() if queue is True else queue
    iters = [p for p in Path(manifest_root).glob("iter*") if p.name[4:].isdigit()]
    for it_dir in sorted(iters, key=lambda p: int(p.name[4:])):
        k = int(it_dir.name[4:])
        for stage in STAGES:
            if (it_dir / stage / "plan.json").exists():
                rows.append((k, stage, stage_report(StageManifest(manifest_root, k, stage), stale_after, now, queue,
                                                    max_retries, verify)))
    return rows


def exit_code(rows) -> int:
    """The contract: 0 all done and verified, 1 anything failed/stale/given up, 3 work left, 2 nothing planned."""
    if not rows:
        return EXIT_USAGE
    if any(r["counts"]["failed"] or r["counts"]["stale"] or r["given_up"] for _, _, r in rows):
        return EXIT_FAILED
    if any(r["counts"]["pending"] or r["counts"]["running"] for _, _, r in rows):
        return EXIT_PENDING
    return EXIT_OK


def print_report(rows, out=None) -> None:
    out = out or sys.stdout
    if not rows:
        print("no stage has been planned yet", file=out)
        return
    last = None
    for k, stage, r in rows:
        if k != last:  # one table per iteration
            print(("" if last is None else "\n") + f"iteration {k} (M{k} -> M{k + 1})", file=out)
            print(f"{'iter':>4} {'stage':<10} {'shards':>6} {'done':>6} {'running':>8} {'pending':>8} {'failed':>7} "
                  f"{'stale':>6}", file=out)
            last = k
        c = r["counts"]
        print(f"{k:>4} {stage:<10} {r['n_shards']:>6} {c['done']:>6} {c['running']:>8} {c['pending']:>8} "
              f"{c['failed']:>7} {c['stale']:>6}", file=out)
        for run in r.get("running", []):
            where = f" on {run['host']}" if run["host"] else ""
            doing = progress.describe(run["progress"]) or "no progress reported yet"
            print(f"       shard {run['shard']:05d} running{where} (job {run['job_id']}): {doing}", file=out)
        for shard, state, why, log in r["attention"]:
            print(f"       shard {shard:05d} {state}: {why}" + (f" (log: {log})" if log else ""), file=out)


def as_json(cfg, rows, code: int) -> dict:
    state = {EXIT_OK: "done", EXIT_FAILED: "failed", EXIT_PENDING: "pending", EXIT_USAGE: "nothing planned"}[code]
    return {"run": cfg.run.run, "manifest_root": str(cfg.manifest_root), "state": state, "exit_code": code,
            "stages": [{"iter": k, "stage": s, "n_shards": r["n_shards"], "counts": r["counts"],
                        "given_up": r["given_up"], "running": r["running"],
                        "attention": [{"shard": sh, "state": st, "why": why, "log": log}
                                      for sh, st, why, log in r["attention"]]} for k, s, r in rows]}


def submitit_log(cfg, k: int, stage: str, job_id: str) -> str:
    """The log submitit writes for array element `job_id` (1234_5 -> 1234_5_0_log.out), if it exists."""
    path = cfg.log_dir / f"iter{k}" / stage / f"{job_id}_0_log.out"
    return str(path) if job_id and path.exists() else ""


def unfinished_shards_of(cfg, stages: list[str]) -> list[dict]:
    """Every shard of `stages` (iteration cfg.run.iter) without a verified output: why, and its log."""
    out = []
    k = cfg.run.iter
    for stage in stages:
        man = StageManifest(cfg.manifest_root, k, stage)
        plan = man.plan()
        if plan is None:
            out.append({"iter": k, "stage": stage, "shard": None, "state": "never planned",
                        "why": "not queued: an earlier stage did not finish", "log": ""})
            continue
        for st in man.states(plan["n_shards"]):
            if man.verified_output(st) is not None:
                continue
            job_log = submitit_log(cfg, k, stage, man.queued_job(st.shard))
            never_ran = ("its job ended before the shard started (see its log)" if job_log else
                         "never ran: its job was cancelled or is gone (an upstream shard failed?)")
            why = st.error or ("done, but its output no longer matches the manifest" if st.state == "done" else
                               never_ran if st.state == "pending" and not st.attempt else st.state)
            log = st.log or job_log
            out.append({"iter": k, "stage": stage, "shard": st.shard, "state": st.state, "why": why, "log": log})
    return out


def outcome_after_wait(work) -> int:
    """submit wait=true: the status table, then 0 when every requested stage of every requested
    iteration ([(config of iteration k, its stages)]) is done and verified; else 1, with the
    shards that are not, and their logs, printed last."""
    cfg = work[0][0]
    print_report(report(cfg.manifest_root, cfg.slurm.stale_after_s, cfg.slurm.max_retries))
    missing = [u for c, stages in work for u in unfinished_shards_of(c, stages)]
    sys.stdout.flush()
    if not missing:
        print("every requested stage is done and verified")
        return EXIT_OK
    print(f"error: {len(missing)} shard(s) of the requested stages are not done after the wait; rerun the same "
          f"command to resubmit them:", file=sys.stderr)
    for m in missing:
        shard = "(all)" if m["shard"] is None else f"shard {m['shard']:05d}"
        why = " ".join(str(m["why"]).split())  # one line per shard, however long the error
        why = why if len(why) <= 240 else why[:237] + "..."
        print(f"  iter {m['iter']} {m['stage']} {shard} {m['state']}: {why}"
              + (f" (log: {m['log']})" if m["log"] else ""), file=sys.stderr)
    return EXIT_FAILED


def _status(argv: list[str]) -> int:
    from . import timing

    want_json, verify, want_timing = "--json" in argv, "--verify" in argv, "--timing" in argv
    cfg = config_from_cli([a for a in argv if a not in ("--json", "--verify", "--timing")])
    if cfg is None:
        return EXIT_USAGE
    rows = report(cfg.manifest_root, cfg.slurm.stale_after_s, cfg.slurm.max_retries, verify=verify)
    code = exit_code(rows)
    # the timing table reads every shard's entry again and the training logs: asked for, not by default
    times = timing.run_timing(cfg.manifest_root, cfg.work_dir) if want_timing else None
    if want_json:
        print(json.dumps({**as_json(cfg, rows, code), **({"timing": times} if want_timing else {})}, indent=1))
        return code
    print(f"run {cfg.run.run!r}, manifests in {cfg.manifest_root}")
    if not rows:
        print(f"nothing planned under {cfg.manifest_root}: no submit has run with this work_dir=/run=/manifest_dir= "
              f"yet", file=sys.stderr)
        return code
    print_report(rows)
    if want_timing:
        timing.print_timing(times)
    return code


def main(argv: list[str] | None = None) -> int:
    return main_with_help(argv, __doc__ + "\nKeys it reads: work_dir, run, manifest_dir, preset, slurm.stale_after_s, "
                          "slurm.max_retries (`python -m srlm_hpc.submit --help` lists them all).", _status)


if __name__ == "__main__":
    sys.exit(main())
