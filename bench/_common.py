"""What every benchmark records beside its numbers: the command, the date, the machine, the
commit, and peak-memory readings from /proc. Imported by the scripts in this folder."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_stamp() -> dict:
    """The command that made a result file (interpreter name + argv), and when (UTC)."""
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]),
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
