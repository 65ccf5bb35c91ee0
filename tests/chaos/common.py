"""What every scenario needs: the tiny iteration's arguments, a run in a subprocess that can be
killed, and the comparison of a run's outputs with an uninterrupted run's."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zstandard

from tests.stages.test_pipeline_e2e import e2e_args

STAGES = ("sft", "prompts", "responses", "judge", "pairs", "ref_logps", "dpo", "eval")
HIDDEN_OK = {".srlm-fingerprint.json"}  # a cache beside a model, not an output


def args_for(base: Path, tiny_llama: Path) -> list[str]:
    return ["stage=all", "iter=1", "executor=local", *e2e_args(base, tiny_llama), "slurm.heartbeat_s=1"]


def only(args: list[str], stage: str) -> list[str]:
    """The same command for one stage (`stage=responses` instead of `stage=all`)."""
    return [f"stage={stage}" if a.startswith("stage=") else a for a in args]


def work_of(base: Path) -> Path:
    return base / "run"


def manifest_dir(base: Path, stage: str) -> Path:
    return work_of(base) / "manifests" / "default" / "iter1" / stage


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "srlm_hpc.submit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stderr.close()


def finish(args: list[str], tries: int = 3, timeout: float = 1800, env: dict | None = None) -> int:
    """Rerun the same command until it succeeds (what a user does); how many runs it took."""
    for n in range(1, tries + 1):
        proc = start(args, env)
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode == 0:
            return n
    raise AssertionError(f"not done after {tries} reruns: {err.decode()[-3000:]}")


def stage_running(base: Path, stage: str) -> bool:
    for p in manifest_dir(base, stage).glob("shard-*.json"):
        try:
            if json.loads(p.read_text()).get("state") == "running":
                return True
        except (OSError, ValueError):
            pass
    return False


def running_in(base: Path, pid: int) -> str | None:
    """The stage a shard of which process `pid` is running now (its manifest entry says so),
    or None: between stages, starting up, or gone. A killed run's shard stays "running" with
    the dead pid until a rerun claims it, so the state alone would mislead."""
    for stage in STAGES:
        for p in manifest_dir(base, stage).glob("shard-*.json"):
            try:
                entry = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if entry.get("state") == "running" and entry.get("pid") == pid:
                return stage
    return None


def stage_done(base: Path, stage: str) -> bool:
    d = manifest_dir(base, stage)
    try:
        n = json.loads((d / "plan.json").read_text())["n_shards"]
        return all(json.loads((d / f"shard-{i:05d}.json").read_text())["state"] == "done" for i in range(n))
    except (OSError, ValueError, KeyError):
        return False


def stage_windows(base: Path) -> dict[str, float]:
    """Seconds each stage took in a finished run, from its manifest's start and finish times."""
    out = {}
    for stage in STAGES:
        times = [json.loads(p.read_text()) for p in manifest_dir(base, stage).glob("shard-*.json")]
        if times:
            out[stage] = max(1.0, max(t["finished"] for t in times) - min(t["started"] for t in times))
    return out


def output_files(base: Path) -> dict[str, bytes]:
    """Everything a stage hands on, with the run's own path written as <work> (summary.json
    names the models by path)."""
    work = work_of(base)
    it = work / "iter1"
    paths = [*it.glob("*/shard-*.jsonl"), *it.glob("pairs/pairs-*.jsonl.zst"), it / "pairs" / "index.json",
             it / "pairs" / "stats.json", it / "eval" / "metrics.json", it / "summary.json",
             *[p for m in ("sft", "dpo") for p in (it / m / "model").glob("*") if p.name not in HIDDEN_OK]]
    return {str(p.relative_to(work)): p.read_bytes().replace(str(work).encode(), b"<work>")
            for p in sorted(paths) if p.is_file()}


def _lines(name: str, data: bytes) -> list[bytes]:
    if name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return [line for line in data.split(b"\n") if line.strip()]


def compare(got: dict[str, bytes], want: dict[str, bytes]) -> dict:
    """Files that differ (or are missing or extra), and records lost or duplicated across the
    record files (JSON Lines, plain or zstd)."""
    differing = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
    lost = duplicated = 0
    for name in set(got) | set(want):
        if ".jsonl" not in name:
            continue
        g = collections.Counter(_lines(name, got.get(name, b"")))
        w = collections.Counter(_lines(name, want.get(name, b"")))
        lost += sum((w - g).values())
        duplicated += sum((g - w).values())
    return {"outputs_differing": len(differing), "differing": differing[:20], "records_lost": lost,
            "records_duplicated": duplicated}


def leftovers(base: Path) -> list[str]:
    """Temp files or folders, and half-written checkpoints, that a run left behind."""
    return temp_files(work_of(base))


def temp_files(work: Path) -> list[str]:
    left = [p for p in work.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name or p.name.endswith(".old")]
    left += [p for p in work.rglob(".merge.lock*")]
    return sorted(str(p.relative_to(work)) for p in left)


def stray_processes(base: Path) -> list[str]:
    """Processes still running whose command line names this run's folder."""
    return processes_naming(work_of(base))


def processes_naming(work: Path) -> list[str]:
    """Processes whose command line names `work` (a Slurm task's names its log folder there)."""
    out = subprocess.run(["pgrep", "-af", str(work)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


class Clock:
    def __init__(self):
        self.t0 = time.monotonic()

    def seconds(self) -> float:
        return round(time.monotonic() - self.t0, 1)
