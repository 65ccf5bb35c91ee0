"""Orchestration at 10,000 shards: `status`, submit's planning, and one shard's input check.

    python bench/orchestration.py                       # 10,000 done shards of 1 MB (10 GB in a temp dir)
    python bench/orchestration.py --shards 1000 --no-save  # a quick look
    python bench/orchestration.py --no-before           # skip the full-rehash ("before") timings

Builds a synthetic run on local disk (a temp dir, removed at the end unless --keep):
`responses` of iteration 1 with N done shards of --shard-mb MB each (real files; each marked
done through the manifest API as the runner does, mark_running then mark_done, so its entry
holds the real size, sha256 and stamp), and `judge` planned downstream with N shards of its
own, none run yet (judge.shard_size = responses.shard_size = 32: judge shard i reads exactly
responses shard i). Then times, with the package's own code paths:

  status            `python -m srlm_hpc.status work_dir=...` (and `--json`) as a subprocess,
                    start to exit: files re-hashed only where size, mtime or inode changed
  plan              what submit does per stage before it asks Slurm for anything:
                    runner.plan_stage + runner.unfinished_shards (launch/slurm.submit_stage),
                    for responses (expect 0 to run) and judge (expect N)
  verify one shard  what judge shard N-1 does before it runs: shards.upstream_range over its
                    32 records (verify the upstream shards it reads, read them), in a fresh
                    process; also at N/10 shards (--shards/10, a second synthetic run) to show
                    it does not grow with the stage. The offsets come from the stage's
                    record-count index (manifest.record_counts): the stage's first reader
                    builds it by reading every shard's entry once ("first reader", timed apart)

and, as "before" (the old behaviour, every output re-hashed each time), the same through the
code path that still hashes everything: `status --verify`, the planning with every output
hashed (verified_output(full=True)), and the input check with every upstream output hashed.

The hash cost is real: every byte of every shard is written (no sparse files), so --verify
reads them all (from the page cache when it holds them: a lower bound for a shared filesystem).
Targets (issue 15): status < 2 s, planning < 5 s, one shard's input check proportional to the
inputs it reads (10k/1k ratio ~1). Results: bench/results/orchestration-cpu.json, written only
when the machine was quiet (bench/_common.LoadGuard; exit 3 otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from srlm_hpc.config import absolute_paths, build_config
from srlm_hpc.files import FileInfo
from srlm_hpc.manifest import StageManifest
from srlm_hpc.shards import shard_output
from _common import LoadGuard, cpu_model, run_stamp, write_result

RESULTS = Path(__file__).parent / "results" / "orchestration-cpu.json"
UP, DOWN, PER_SHARD = "responses", "judge", 32
TARGETS = {"status_s": 2.0, "plan_s": 5.0}


def run_config(work: Path, n_shards: int):
    return absolute_paths(build_config({"work_dir": str(work), "prompts.n_prompts": str(n_shards * PER_SHARD),
                                        "responses.shard_size": str(PER_SHARD), "judge.shard_size": str(PER_SHARD)}))


def shard_bytes(shard: int, size: int) -> bytes:
    """PER_SHARD JSON lines, `size` bytes in all, different in every shard (the index leads each line)."""
    pad = (size // PER_SHARD) - 80
    body = "x" * max(pad, 1)
    lines = [json.dumps({"prompt_id": f"p{shard * PER_SHARD + i}", "prompt": f"prompt {shard}/{i}",
                         "responses": [{"text": body}]}) for i in range(PER_SHARD)]
    return ("\n".join(lines) + "\n").encode()


def make_run(work: Path, n_shards: int, size: int) -> tuple[float, int]:
    """The synthetic run: every upstream shard written and marked done, the downstream planned.
    Returns (seconds, bytes written)."""
    from srlm_hpc.runner import plan_stage

    t0 = time.perf_counter()
    cfg = run_config(work, n_shards)
    man, n = plan_stage(cfg, UP)
    assert n == n_shards, (n, n_shards)
    written = 0
    for shard in range(n_shards):
        data = shard_bytes(shard, size)
        path = shard_output(cfg, UP, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
        man.mark_running(shard)
        man.mark_done(shard, FileInfo(str(path), PER_SHARD, len(data), hashlib.sha256(data).hexdigest()))
        if shard and shard % 1000 == 0:
            print(f"  {shard}/{n_shards} shards written ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    plan_stage(cfg, DOWN)
    return time.perf_counter() - t0, written


def timed_command(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run `args` (a PATH without squeue: the synthetic run has no jobs, and a Slurm that a test
    fixture may have started here must not add its answer time)."""
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PATH": "/nonexistent"})
    return time.perf_counter() - t0, proc


def status_command(work: Path, *flags: str) -> dict:
    """`python -m srlm_hpc.status` on the run, in a fresh process, start to exit."""
    wall, proc = timed_command([sys.executable, "-m", "srlm_hpc.status", f"work_dir={work}", *flags])
    if proc.returncode not in (0, 3):  # 3: judge is pending, as built
        raise SystemExit(f"status {' '.join(flags)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), "exit": proc.returncode, "stdout": proc.stdout}


def child(work: Path, n_shards: int, what: str) -> None:
    """One measurement in a fresh process (no manifest cache from an earlier one): prints JSON."""
    from srlm_hpc.manifest import recording_reads
    from srlm_hpc.runner import plan_stage, unfinished_shards
    from srlm_hpc.shards import upstream_range

    cfg = run_config(work, n_shards)
    out: dict = {}
    t0 = time.perf_counter()
    if what in ("plan", "plan-full"):
        for stage in (UP, DOWN):
            man, n = plan_stage(cfg, stage)
            if what == "plan":
                todo = unfinished_shards(man, n)
            else:  # the old behaviour: every output hashed
                todo = [st.shard for st in man.states(n) if man.verified_output(st, full=True) is None]
            out[f"{stage}_to_run"] = len(todo)
    elif what in ("verify-one", "verify-one-first"):
        if what == "verify-one-first":  # the stage's first reader: builds the record-count index
            StageManifest(cfg.manifest_root, 1, UP).records_index_path.unlink(missing_ok=True)
            t0 = time.perf_counter()
        shard = n_shards - 1  # the last: the one whose records sit farthest into the stage
        with recording_reads() as reads:
            records = upstream_range(cfg, UP, shard * PER_SHARD, (shard + 1) * PER_SHARD)
        out.update(records=len(records), inputs_recorded=len(reads))
    elif what == "verify-one-full":  # the old behaviour: every upstream output hashed, then the range read
        man = StageManifest(cfg.manifest_root, 1, UP)
        bad = [st.shard for st in man.states(n_shards) if man.output_problem(st, full=True) is not None]
        assert not bad, bad[:5]
        shard = n_shards - 1
        out.update(records=len(upstream_range(cfg, UP, shard * PER_SHARD, (shard + 1) * PER_SHARD)))
    else:
        raise SystemExit(f"unknown measurement {what!r}")
    out["wall_s"] = round(time.perf_counter() - t0, 4)
    print(json.dumps(out))


def measure(work: Path, n_shards: int, what: str, repeats: int = 1) -> dict:
    """The best of `repeats` fresh-process runs of `child` (the least disturbed one)."""
    best = None
    for _ in range(repeats):
        _, proc = timed_command([sys.executable, __file__, "--child", what, "--work", str(work),
                                 "--shards", str(n_shards)])
        if proc.returncode:
            raise SystemExit(f"{what} failed: {proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        best = got if best is None or got["wall_s"] < best["wall_s"] else best
    return best


def table(rows: list[tuple[str, str, str]]) -> None:
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print()
    for name, value, target in rows:
        print(f"  {name:<{w0}}  {value:>{w1}}  {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--shard-mb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each fast measurement")
    ap.add_argument("--no-before", action="store_true", help="skip the full-rehash timings (they read every byte)")
    ap.add_argument("--dir", help="where to build the synthetic runs (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic runs")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--child")
    ap.add_argument("--work")
    a = ap.parse_args()
    if a.child:
        return child(Path(a.work), a.shards, a.child)
    size = int(a.shard_mb * 1e6)
    small = max(2, a.shards // 10)
    need = (a.shards + small) * size
    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="srlm_bench_orch."))
    free = shutil.disk_usage(root if root.exists() else root.parent).free
    if need > 0.9 * free:
        raise SystemExit(f"{root}: {need / 1e9:.1f} GB needed for {a.shards} + {small} shards of {a.shard_mb} MB, "
                         f"{free / 1e9:.1f} GB free: pass --dir on a larger disk, or fewer --shards / --shard-mb")
    guard = LoadGuard.start()
    try:
        result = run_all(root, a, size, small)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    head = result.pop("headline_numbers")
    saved = a.no_save or write_result(Path(a.out), result, guard, headline=head)
    if not saved:
        raise SystemExit(3)


def run_all(root: Path, a, size: int, small: int) -> dict:
    n = a.shards
    big, little = root / f"run-{n}", root / f"run-{small}"
    setup_s, written = make_run(big, n, size)
    print(f"built {n} done shards ({written / 1e9:.2f} GB) in {setup_s:.0f}s", file=sys.stderr, flush=True)
    setup_small_s, _ = make_run(little, small, size)

    st = min((status_command(big) for _ in range(a.repeats)), key=lambda r: r["wall_s"])
    st_json = min((status_command(big, "--json") for _ in range(a.repeats)), key=lambda r: r["wall_s"])
    stages = {s["stage"]: s["counts"] for s in json.loads(st_json["stdout"])["stages"]}
    plan = measure(big, n, "plan", a.repeats)
    quiet_since = max(os.stat(StageManifest(run_config(w, 1).manifest_root, 1, UP).dir).st_mtime for w in (big, little))
    time.sleep(max(0.0, StageManifest.QUIET_S + 0.1 - (time.time() - quiet_since)))  # the index is written then
    first = measure(big, n, "verify-one-first", a.repeats)
    one = measure(big, n, "verify-one", a.repeats)
    one_small = measure(little, small, "verify-one", a.repeats)
    before = {}
    if not a.no_before:
        before["status_verify_s"] = status_command(big, "--verify")["wall_s"]
        before["plan_full_rehash_s"] = measure(big, n, "plan-full")["wall_s"]
        before["verify_one_shard_full_rehash_s"] = measure(big, n, "verify-one-full")["wall_s"]

    k = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    ratio = one["wall_s"] / one_small["wall_s"]
    rows = [
        (f"status ({n} + {n} shards)", f"{st['wall_s']:.2f} s", f"target < {TARGETS['status_s']:g} s"),
        ("status --json", f"{st_json['wall_s']:.2f} s", f"target < {TARGETS['status_s']:g} s"),
        ("plan (submit: both stages)", f"{plan['wall_s']:.2f} s",
         f"target < {TARGETS['plan_s']:g} s; to run: {UP} {plan[f'{UP}_to_run']}, {DOWN} {plan[f'{DOWN}_to_run']}"),
        (f"verify one shard's inputs ({n})", f"{one['wall_s'] * 1e3:.1f} ms",
         f"{one['inputs_recorded']} input(s), {one['records']} records read"),
        (f"  the stage's first reader ({n})", f"{first['wall_s'] * 1e3:.1f} ms",
         "reads every shard's record count once and indexes them"),
        (f"verify one shard's inputs ({small})", f"{one_small['wall_s'] * 1e3:.1f} ms",
         f"{n}/{small} ratio {ratio:.2f} (target ~1: proportional to its inputs)"),
    ]
    rows += [(f"before: {name}", f"{v:.2f} s", "every output re-hashed (the old behaviour)")
             for name, v in (("status --verify", before.get("status_verify_s")),
                             ("plan, full rehash", before.get("plan_full_rehash_s")),
                             ("verify one shard, full rehash", before.get("verify_one_shard_full_rehash_s")))
             if v is not None]
    table(rows)
    headline = {f"status_{k}_s": st["wall_s"], f"plan_{k}_s": plan["wall_s"], f"verify_one_shard_{k}_s": one["wall_s"],
                f"verify_one_shard_{small}_s": one_small["wall_s"], f"verify_first_shard_{k}_s": first["wall_s"],
                "verify_one_shard_ratio": round(ratio, 2)}
    headline.update({f"before_{name.removesuffix('_s')}_{k}_s": v for name, v in before.items()})
    return {**run_stamp(), "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
            "setup": {"shards": n, "shards_small": small, "shard_bytes": size, "bytes_written": written,
                      "setup_s": round(setup_s, 1), "setup_small_s": round(setup_small_s, 1),
                      "stages": [UP, DOWN], "records_per_shard": PER_SHARD},
            "targets": TARGETS, "status": {k2: v for k2, v in st.items() if k2 != "stdout"},
            "status_json": {k2: v for k2, v in st_json.items() if k2 != "stdout"}, "status_counts": stages,
            "plan": plan, "verify_one_shard": one, "verify_first_shard": first, "verify_one_shard_small": one_small,
            "before": before,
            "table": [list(r) for r in rows], "headline_numbers": headline}


if __name__ == "__main__":
    main()
