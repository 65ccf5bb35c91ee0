"""srlm_hpc/preemption.py: the task's own signal handlers survive a library that takes them
over (ray.init, vLLM over Ray). The real Ray case: tests/launch/test_ray_slurm.py, where a
SIGTERMed rank 0 must leave through its handler after alive_nodes ran ray.init."""

from __future__ import annotations

import signal
import threading

from srlm_hpc.preemption import handlers_kept


def test_handlers_installed_inside_are_undone_on_leaving():
    def ours(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, ours)
    try:
        with handlers_kept():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what ray.init does to SIGTERM
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) is ours
        assert signal.getsignal(signal.SIGUSR2) is not signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_outside_the_main_thread_it_changes_nothing():
    seen = []

    def worker():
        with handlers_kept():
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(seen) == 1
