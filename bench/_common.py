"""What every benchmark records beside its numbers: the command, the date, the machine, the
commit, and peak-memory readings from /proc; and the load guard that refuses to record a
number taken while other work shared the machine. Imported by the scripts in this folder.

    guard = LoadGuard.start()        # first thing in main(): prints the threshold
    ...                               # the measurements
    write_result(out, result, guard, headline={"dpo_vs_trl_like_for_like": 1.52})  # or refuses
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repo_relative(arg: str) -> str:
    """An argument naming a path inside the repository, relative to its root (no machine's paths)."""
    p = Path(arg)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else arg


def run_stamp() -> dict:
    """The command that made a result file (interpreter name + argv, paths inside the repository
    relative to its root), and when (UTC)."""
    return {"command": " ".join([Path(sys.executable).name, *map(repo_relative, sys.argv)]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def cpu_model(fallback: str | None = None) -> str:
    """The first `model name` of /proc/cpuinfo; else `fallback`, or the platform's processor."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (platform.processor() or platform.machine()) if fallback is None else fallback


def git_rev() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB, e.g. VmRSS or VmHWM (the peak)."""
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    raise KeyError(key)


def reset_rss_peak() -> int:
    """VmHWM := VmRSS, so later peaks count from here; returns VmRSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS") * 1024


# ----------------------------------------------------------------------------- load guard
# Others may keep at most this many cores' worth of runnable threads per core busy: 0.25 on a
# 2-core machine is half a core. A benchmark's own threads are subtracted (it is busy by design).
MAX_LOAD_PER_CORE = float(os.environ.get("SRLM_BENCH_MAX_LOAD_PER_CORE", "0.25"))
SAMPLE_S = 5.0  # the kernel updates the load average every 5 s
WINDOW_S = 60.0  # the 1-minute load average's horizon


def cpu_busy_seconds() -> float:
    """Seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds of `root` (default: this process) and every live descendant, plus the
    children it already reaped (cutime/cstime). /proc/<pid>/stat fields 14-17, after the
    parenthesised name, which may itself hold spaces."""
    root = os.getpid() if root is None else root
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float, float]] = {}  # pid -> (ppid, own, reaped children)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(entry)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / tick,
                             (int(rest[13]) + int(rest[14])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1] + stats[pid][2]
            todo += children.get(pid, [])
    return total


class LoadGuard:
    """Watches the machine while a benchmark runs: the 1-minute load average at the start and
    the end, and every SAMPLE_S the CPU time used by the machine and by this benchmark's own
    process tree. `verdict()` says whether other work was busier than `max_per_core` (runnable
    threads per core): at the start (load average), at the end (load average minus this
    benchmark's own busy threads over the last minute), or in any minute of the run (others'
    measured CPU time)."""

    def __init__(self, max_per_core: float = MAX_LOAD_PER_CORE):
        self.max_per_core, self.cores = max_per_core, os.cpu_count() or 1
        self.load_start = os.getloadavg()[0]
        self.samples: list[tuple[float, float, float]] = []  # (time, machine busy s, own busy s)
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, max_per_core: float | None = None, settle_s: float | None = None) -> "LoadGuard":
        """Start watching once the 1-minute load average has settled at or below the threshold
        (up to `settle_s`, SRLM_BENCH_SETTLE_S, default 240 s): it trails the CPU use of the
        minute before by design (exp(-t/60)), so a benchmark started a few seconds after other
        work ended would otherwise be refused after its whole run for load it never saw."""
        limit = MAX_LOAD_PER_CORE if max_per_core is None else max_per_core
        settle_s = float(os.environ.get("SRLM_BENCH_SETTLE_S", 240)) if settle_s is None else settle_s
        cores, deadline = os.cpu_count() or 1, time.monotonic() + settle_s
        while os.getloadavg()[0] / cores > limit and time.monotonic() < deadline:
            print(f"load guard: waiting for the 1-minute load average {os.getloadavg()[0]:.2f} to settle at or "
                  f"below {limit * cores:g}", file=sys.stderr, flush=True)
            time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))
        guard = cls(limit)
        print(f"load guard: a result is written only if other work keeps the load at or below "
              f"{guard.max_per_core:g} per core ({guard.max_per_core * guard.cores:g} on {guard.cores} cores; "
              f"this benchmark's own threads are not counted); 1-minute load average now "
              f"{guard.load_start:.2f}", file=sys.stderr, flush=True)
        return guard

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), cpu_busy_seconds(), process_tree_cpu_seconds()))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def verdict(self) -> dict:
        """Stops the sampling; the readings, and `busy` with the reasons when over the threshold."""
        self._stop.set()
        self._thread.join()
        self._sample()
        load_end = os.getloadavg()[0]
        t_end, busy_end, own_end = self.samples[-1]
        # own busy threads over the last minute (what the end's load average mostly reflects)
        last = next((s for s in self.samples if s[0] >= t_end - WINDOW_S), self.samples[0])
        own_threads = (own_end - last[2]) / max(t_end - last[0], 1e-9)
        others_max = 0.0
        for i, a in enumerate(self.samples):  # others' CPU use in each minute (or the whole run if shorter)
            b = next((s for s in self.samples[i:] if s[0] >= a[0] + WINDOW_S), self.samples[-1])
            if b[0] - a[0] >= min(WINDOW_S, t_end - self.samples[0][0]) - 1e-6 and b is not a:
                others = max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0])
                others_max = max(others_max, others)
        out = {"threshold_load_per_core": self.max_per_core, "cores": self.cores,
               "load_avg_start": round(self.load_start, 2), "load_avg_end": round(load_end, 2),
               "own_threads_last_minute": round(own_threads, 2),
               "others_load_end_per_core": round(max(0.0, load_end - own_threads) / self.cores, 3),
               "others_cpu_per_core_max_minute": round(others_max / self.cores, 3),
               "seconds": round(t_end - self.samples[0][0], 1)}
        reasons = []
        if self.load_start / self.cores > self.max_per_core:
            reasons.append(f"load average {self.load_start:.2f} at the start is {self.load_start / self.cores:.2f} "
                           f"per core")
        if out["others_load_end_per_core"] > self.max_per_core:
            reasons.append(f"load average {load_end:.2f} at the end, less this benchmark's {own_threads:.2f} busy "
                           f"threads, is {out['others_load_end_per_core']:.2f} per core")
        if out["others_cpu_per_core_max_minute"] > self.max_per_core:
            reasons.append(f"other processes kept {out['others_cpu_per_core_max_minute']:.2f} of every core busy in "
                           f"the busiest minute")
        out["busy"] = bool(reasons)
        out["reasons"] = reasons
        return out


def write_result(path: Path, result: dict, guard: LoadGuard, headline: dict | None = None) -> bool:
    """Write `result` as JSON to `path`, with a top-level `headline` (the given ratios, then
    load_avg_start and load_avg_end) and the guard's readings under `load_guard`; or, when the
    machine was busy, write nothing, say why with the threshold on stderr, and return False."""
    v = guard.verdict()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    if v["busy"]:
        print(f"NOT writing {shown}: the machine was busy beyond {v['threshold_load_per_core']:g} load per core "
              f"(load average over the {v['cores']} cores, this benchmark's own threads not counted): "
              + "; ".join(v["reasons"]) + ". Rerun on a quiet machine (SRLM_BENCH_MAX_LOAD_PER_CORE sets the "
              "threshold, and is recorded).", file=sys.stderr, flush=True)
        return False
    head = {**(headline or {}), "load_avg_start": v["load_avg_start"], "load_avg_end": v["load_avg_end"]}
    body = {k: val for k, val in result.items() if k != "headline"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"headline": head, **body, "load_guard": v}, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {shown}", flush=True)
    return True
