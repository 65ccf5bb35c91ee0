"""Benchmark the pairs merger against the zstd CLI on the same bytes.

    python bench/merge.py                      # 250k prompts x 4 responses (~2.5 GB of judge shards)
    python bench/merge.py --prompts 20000 --no-save   # a quick look

Makes synthetic judge shards (realistic lengths: prompts ~25 words, responses ~230 tokens
capped at judge.max_tokens' 512, three judge texts of 50-100 words each per response, 5 %
unparseable), registers them done in a real judge manifest, then in the same run times:

  zstd-in    `zstd -T1 -3` on the JSON Lines bytes the merge streams (the judge shards)
  merge      the pairs stage as the runner runs it (plan, run_shard, mark_done) in a fresh
             process: wall time and that process's peak RSS
  zstd-out   `zstd -T1 -3` on the merge's output, decompressed (for reference: the merge
             also has to read and parse ~4x those bytes)
  resume     the same stage again once finished: the runner's check, and the merger's own
             check when the runner's record is lost

Target (issue 5): merge <= 1.5x zstd-in, peak RSS < 500 MB, resume < 1 s. Results go to
bench/results/merge.json with the command, machine and date, and print as a table.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from srlm_hpc.config import absolute_paths, build_config, env_threads
from srlm_hpc.files import FileInfo
from srlm_hpc.manifest import StageManifest
from srlm_hpc.shards import shard_output
from srlm_hpc.stages import pairs
from _common import LoadGuard, cpu_model, write_result

RESULTS = Path(__file__).parent / "results" / "merge.json"
# Judges justify with the rubric's own words (SPEC.md, Fig. 2), which zstd finds again and again.
RUBRIC = ["The response is relevant and provides some information related to the user's inquiry.",
          "It addresses a substantial portion of the user's question, but does not completely resolve the query.",
          "The response answers the basic elements of the user's question in a useful way.",
          "It is clearly written from an AI Assistant's perspective, addressing the user's question directly.",
          "It is well-organized and helpful, even if there is slight room for improvement in clarity.",
          "The response is impeccably tailored to the user's question, reflecting expert knowledge.",
          "However, it contains some irrelevant content and lacks a direct answer.",
          "Overall, the response is incomplete."]


def make_corpus(rng: np.random.Generator, n_words: int) -> str:
    """Zipf-distributed pseudo-words: compresses about as well as English with zstd -3 (~3x)."""
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    lengths = np.clip(rng.poisson(4.7, 30_000), 1, 14)
    vocab = ["".join(map(chr, rng.choice(letters, n, p=None))) for n in lengths]
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    idx = rng.choice(len(vocab), n_words, p=p / p.sum())
    return " ".join(vocab[i] for i in idx)


def make_shards(cfg, n_prompts: int, per_shard: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    corpus = make_corpus(rng, 8_000_000)
    size = len(corpus) - 20_000

    def text(n_chars: int) -> str:
        start = int(rng.integers(0, size))
        return corpus[start:start + n_chars]

    man = StageManifest(cfg.manifest_root, cfg.run.iter, "judge")
    n_shards = -(-n_prompts // per_shard)
    man.write_plan(n_shards, {"shard_size": per_shard})
    total = 0
    for s in range(n_shards):
        lines = []
        for j in range(min(per_shard, n_prompts - s * per_shard)):
            pid = f"i1-s{s:05d}-{j:05d}"
            tokens = np.clip(rng.lognormal(np.log(230), 0.6, 4), 5, 512).astype(int)
            quality = np.clip(rng.integers(1, 6) + rng.choice([-1, 0, 0, 1], 4), 0, 5)  # responses to one prompt agree
            responses = []
            for r in range(4):
                samples = [None if rng.random() < 0.05 else float(np.clip(quality[r] + rng.choice([-1, 0, 0, 0, 1]), 0, 5))
                           for _ in range(3)]
                judge_texts = [" ".join(rng.choice(RUBRIC, 2)) + " " + text(int(rng.integers(200, 450)))
                               + (f"\nScore: {sc:g}" if sc is not None else "") for sc in samples]
                valid = [x for x in samples if x is not None]
                responses.append({"response_id": f"{pid}-r{r}", "text": text(int(tokens[r] * 4.2)),
                                  "n_tokens": int(tokens[r]), "finish_reason": "length" if tokens[r] == 512 else "stop",
                                  "judge_texts": judge_texts, "judge_scores": samples,
                                  "score": sum(valid) / len(valid) if valid else None})
            prompt = text(int(np.clip(rng.lognormal(np.log(150), 0.7), 15, 900)))
            lines.append(orjson.dumps({"prompt_id": pid, "prompt": prompt, "responses": responses},
                                      option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE))
        data = b"".join(lines)
        path = shard_output(cfg, "judge", s)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        man.mark_done(s, FileInfo(str(path), len(lines), len(data), hashlib.sha256(data).hexdigest()))
        total += len(data)
    return total


def peak_rss_mb() -> float:
    """VmHWM, the high-water mark of this process image; not getrusage's ru_maxrss, which
    keeps the forking parent's peak across exec."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(work_dir: str, what: str) -> None:
    """Runs in a fresh process, so its peak RSS is the merge's own."""
    cfg = absolute_paths(build_config({"work_dir": work_dir}))
    man = StageManifest(cfg.manifest_root, cfg.run.iter, "pairs")
    rss0 = peak_rss_mb()
    cpu0 = _cpu(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    man.write_plan(*pairs.plan(cfg))
    out: dict = {}
    if what == "merge":
        man.mark_running(0)
        info = pairs.run_shard(cfg, 0)
        man.mark_done(0, info)
        out["wall_s"] = time.perf_counter() - t0
        out["cpu_s"] = _cpu(resource.RUSAGE_SELF) - cpu0  # all threads: parsing, sha256 ahead, zstd workers
        out["pairs"] = info.records
    else:  # resume: the runner's skip (plan + verified index), then the merger's own check
        assert man.verified_output(man.get(0)) is not None
        out["runner_skip_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        pairs.run_shard(cfg, 0)
        out["merger_check_s"] = time.perf_counter() - t1
    out["rss_after_imports_mb"] = rss0
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def run_child(work_dir: Path, what: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", what, "--work-dir", str(work_dir)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child {what} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def timed(cmd: str) -> tuple[float, float]:
    """Wall and CPU seconds of a shell command (the shell's own share is negligible)."""
    c0, t0 = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    return time.perf_counter() - t0, _cpu(resource.RUSAGE_CHILDREN) - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=250_000)
    ap.add_argument("--per-shard", type=int, default=125)  # 2,000 shards at the default size
    ap.add_argument("--dir", default="/tmp/srlm_bench_merge")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--work-dir")
    a = ap.parse_args()
    if a.child:
        return child(a.work_dir, a.child)
    guard = LoadGuard.start()  # a result only from a quiet machine (bench/_common.py)
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    work = root / "work"
    cfg = absolute_paths(build_config({"work_dir": str(work)}))
    t0 = time.perf_counter()
    in_bytes = make_shards(cfg, a.prompts, a.per_shard)
    gen_s = time.perf_counter() - t0
    shards = sorted(cfg.stage_dir("judge").glob("shard-*.jsonl"))
    (root / "shards.txt").write_text("".join(f"{p}\n" for p in shards))
    print(f"made {len(shards)} judge shards, {a.prompts} prompts, {in_bytes / 1e9:.2f} GB in {gen_s:.0f}s", flush=True)

    zstd_in, zstd_in_cpu = timed(f"zstd -T1 -3 -q -c --filelist={root / 'shards.txt'} > {root / 'in.zst'}")
    merge = run_child(work, "merge")
    resume = run_child(work, "resume")
    pair_files = " ".join(str(p) for p in pairs.pair_files(cfg))
    subprocess.run(f"zstd -d -q -c {pair_files} > {root / 'out.jsonl'}", shell=True, check=True)
    out_raw = (root / "out.jsonl").stat().st_size
    zstd_out, zstd_out_cpu = timed(f"zstd -T1 -3 -q -c {root / 'out.jsonl'} > {root / 'out.zst'}")
    out_bytes = sum(p.stat().st_size for p in pairs.pair_files(cfg))
    stats = json.loads((cfg.stage_dir("pairs") / "stats.json").read_text())

    rows = [
        ("judge shards in", f"{len(shards)} files, {a.prompts:,} prompts, {4 * a.prompts:,} responses, "
                            f"{in_bytes / 1e6:,.0f} MB"),
        ("pairs out", f"{merge['pairs']:,} pairs, {out_raw / 1e6:,.0f} MB raw, {out_bytes / 1e6:,.0f} MB zstd"),
        ("zstd -T1 -3, judge shards", f"{zstd_in:.2f} s ({in_bytes / zstd_in / 1e6:.0f} MB/s)"),
        ("merge (pairs stage)", f"{merge['wall_s']:.2f} s ({in_bytes / merge['wall_s'] / 1e6:.0f} MB/s of input)"),
        ("merge / zstd-in", f"{merge['wall_s'] / zstd_in:.2f}x wall (target <= 1.5x), "
                            f"{merge['cpu_s'] / zstd_in_cpu:.2f}x CPU ({merge['cpu_s']:.1f} s / {zstd_in_cpu:.1f} s)"),
        ("zstd -T1 -3, pairs output", f"{zstd_out:.2f} s; merge / zstd-out = {merge['wall_s'] / zstd_out:.2f}x"),
        ("merge peak RSS", f"{merge['peak_rss_mb']:.0f} MB ({merge['rss_after_imports_mb']:.0f} MB after imports; "
                           f"target < 500 MB)"),
        ("resume a finished merge", f"runner skip {resume['runner_skip_s']:.3f} s, merger check "
                                    f"{resume['merger_check_s']:.3f} s (target < 1 s)"),
        ("length ratio chosen/rejected", f"{stats['length_ratio']:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"host": platform.node(), "cpus": env_threads(), "cpu": cpu_model(fallback=platform.processor()), "python": platform.python_version(),
                    "zstd_cli": subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip(),
                    "load_avg_1m_at_end": os.getloadavg()[0]},
        "input": {"prompts": a.prompts, "responses": 4 * a.prompts, "shards": len(shards), "bytes": in_bytes},
        "output": {"pairs": merge["pairs"], "raw_bytes": out_raw, "zstd_bytes": out_bytes,
                   "files": len(pairs.pair_files(cfg))},
        "zstd_in_s": zstd_in, "merge_s": merge["wall_s"], "ratio_merge_to_zstd_in": merge["wall_s"] / zstd_in,
        "zstd_in_cpu_s": zstd_in_cpu, "merge_cpu_s": merge["cpu_s"], "zstd_out_cpu_s": zstd_out_cpu,
        "zstd_out_s": zstd_out, "ratio_merge_to_zstd_out": merge["wall_s"] / zstd_out,
        "merge_peak_rss_mb": merge["peak_rss_mb"], "merge_rss_after_imports_mb": merge["rss_after_imports_mb"],
        "resume_runner_skip_s": resume["runner_skip_s"], "resume_merger_check_s": resume["merger_check_s"],
        "table": [list(r) for r in rows],
    }
    saved = a.no_save or write_result(RESULTS, result, guard, headline={
        "merge_vs_zstd_in": round(merge["wall_s"] / zstd_in, 3), "merge_peak_rss_mb": round(merge["peak_rss_mb"])})
    shutil.rmtree(root, ignore_errors=True)
    if not saved:
        raise SystemExit(3)


if __name__ == "__main__":
    main()
