"""Fault injection for the fault-injection suite (tests/chaos/); inert unless its variables are set.

A clock cannot aim a kill at the few milliseconds between two writes, so the suite names
the write instead. Every write another run relies on passes `commit_point()` just before
the rename that makes it visible (files.atomic_open, files.replace_dir, the merge's pairs
files), in the main thread of the process running a shard:

    SRLM_FAULT_POINT=before-mark-done      SIGKILL at the named point (`at(name)`)
    SRLM_FAULT_COMMIT=pairs:3              SIGKILL just before the 3rd commit inside the
                                           pairs stage (its temp file written, not renamed)
    SRLM_FAULT_COMMIT=pairs:3:after        ... just after that rename, before anything else
    SRLM_FAULT_LOG=<file>                  append "<stage>\\t<n>" per commit (a measured run
                                           tells the suite how many commits each stage has)

Heartbeats (a background thread, on a clock) are not counted: the n-th commit is the same
write in every run with the same inputs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

_stage = ""
_commits: dict[str, int] = {}


@contextlib.contextmanager
def in_stage(stage: str) -> Iterator[None]:
    """Count the commits made while inside as `stage`'s."""
    global _stage
    outer, _stage = _stage, stage
    try:
        yield
    finally:
        _stage = outer


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def at(name: str) -> None:
    """SIGKILL this process here when SRLM_FAULT_POINT names this point. The named points sit
    where no clock lands reliably: between an output's rename and its mark_done
    ("before-mark-done"), inside a finalize ("before-mark-finalized"), and in submit between
    queueing an array and recording its job ids ("after-queueing")."""
    if os.environ.get("SRLM_FAULT_POINT") == name:
        _die()


def commit_point(after: bool = False) -> None:
    """Called with after=False just before a rename that publishes a write, and with after=True
    just after it (see the module's docstring)."""
    want = os.environ.get("SRLM_FAULT_COMMIT")
    log = os.environ.get("SRLM_FAULT_LOG")
    if not (want or log) or not _stage or threading.current_thread() is not threading.main_thread():
        return
    if not after:
        _commits[_stage] = n = _commits.get(_stage, 0) + 1
        if log:
            with open(log, "a") as f:
                f.write(f"{_stage}\t{n}\n")
    else:
        n = _commits.get(_stage, 0)
    if want:
        stage, _, rest = want.partition(":")
        k, _, when = rest.partition(":")
        if stage == _stage and k.isdigit() and int(k) == n and (when == "after") == after:
            _die()
