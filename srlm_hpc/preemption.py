"""Preemption and time limits, as a task sees them.

Slurm warns a task before it takes its node away. Under submitit the warning is USR2,
`signal_delay_s` before the time limit (and at preemption, with the cluster's
`preempt_send_user_signal`); submitit's handler calls `ShardTask.checkpoint`, requeues the
job and exits. Under the plain sbatch scripts the batch shell gets USR2; it sends TERM to
the worker, waits for it to stop (after its checkpoint), and only then requeues the job
(slurm/common.sh). The worker takes that TERM as a preemption (`term_is_preemption`).
Either way the shard has not failed: `note_requeue` tells the runner so, and the manifest
records a preemption, which does not count against `slurm.max_retries`.

A data stage loses at most its open chunk and needs nothing more. A training step is not
a chunk: a handler that exits in the middle of one leaves the optimizer half-updated, and
everything since the last checkpoint is lost. So while a training loop runs, USR2 and TERM
are only noted (`deferred_signals`); the loop finishes its step, saves a checkpoint, and
then the signal takes its normal course (submitit requeues and exits; TERM ends the
process). A loop that stops early this way raises `Preempted` if the signal's own handler
returned, so an unfinished run is never saved as the stage's model.
"""

from __future__ import annotations

import contextlib
import signal
import threading

DEFERRED = (signal.SIGUSR2, signal.SIGTERM)

_requeued = False


class Preempted(RuntimeError):
    """A training loop stopped at a step boundary on a signal, its checkpoint saved."""


def note_requeue() -> None:
    """Called when this task has been (or is being) requeued: its shard is not a failure."""
    global _requeued
    _requeued = True


def note_not_requeued() -> None:
    """The requeue noted was declined after all (submitit, past slurm.max_timeouts time-outs):
    the shard failed."""
    global _requeued
    _requeued = False


def was_requeued() -> bool:
    return _requeued


def term_is_preemption() -> None:
    """For a worker started by a plain sbatch script: SIGTERM (from the script's USR2 trap, or
    Slurm's own preemption or scancel) and USR2 (when a signal meant for the batch shell also
    reaches srun, which forwards it) raise Preempted in the main thread, so the runner records
    a preemption instead of dying without a word. Inside a training loop the signal is
    deferred to the step boundary first (deferred_signals), then reaches this handler."""

    def handler(signum, frame):
        note_requeue()
        raise Preempted(f"{signal.Signals(signum).name} received: stopped, to be requeued")

    for s in DEFERRED:
        signal.signal(s, handler)


@contextlib.contextmanager
def handlers_kept(signals: tuple[int, ...] = DEFERRED):
    """Put this task's handlers of `signals` back after the block, whatever it installed: a
    library that takes SIGTERM over (ray.init, and vLLM through it when its pipeline spans
    Ray nodes) would otherwise end a preempted task at once, past every checkpoint and
    `finally`. Outside the main thread nothing can be set, and nothing is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in signals}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:  # None: set outside Python; nothing to restore it with
                signal.signal(s, handler)


class NotedSignals:
    def __init__(self):
        self.received: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.received)

    def names(self) -> str:
        return ", ".join(signal.Signals(s).name for s in self.received)


@contextlib.contextmanager
def deferred_signals(signals: tuple[int, ...] = DEFERRED):
    """Within, the signals are noted (the yielded object turns true) instead of handled. On
    leaving, the previous handlers come back and each noted signal is raised again, so it
    is handled then: after the caller has saved what it must."""
    noted = NotedSignals()
    if threading.current_thread() is not threading.main_thread():
        yield noted  # only the main thread may set handlers; signals go to it anyway
        return
    previous = {s: signal.signal(s, lambda signum, frame: noted.received.append(signum)) for s in signals}
    try:
        yield noted
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for s in dict.fromkeys(noted.received):
            signal.raise_signal(s)
