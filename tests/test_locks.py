"""The cross-node lock (srlm_hpc/locks.py): one holder among many processes, stale locks of
dead holders broken, a live holder's lock kept and named in the error."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import pytest

from srlm_hpc.locks import LockBusyError, file_lock


def _hold(args):
    path, log = args
    with file_lock(path, "test", wait_s=60, poll_s=0.01):
        with open(log, "a") as f:
            f.write(f"in {os.getpid()}\n")
        time.sleep(0.02)
        with open(log, "a") as f:
            f.write(f"out {os.getpid()}\n")
    return True


def test_many_processes_hold_the_lock_one_at_a_time(tmp_path):
    lock, log = tmp_path / "x.lock", tmp_path / "log"
    with mp.get_context("fork").Pool(8) as pool:
        assert all(pool.map(_hold, [(lock, log)] * 24))
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 48
    for a, b in zip(lines[::2], lines[1::2]):  # every "in" is followed by the same process's "out"
        assert a.startswith("in ") and b == "out " + a[3:]
    assert not lock.exists() and not list(tmp_path.glob(".x.lock.*"))


def test_a_live_holder_is_named_and_a_dead_one_is_broken(tmp_path):
    lock = tmp_path / "x.lock"
    with file_lock(lock, "the first submit"):
        with pytest.raises(LockBusyError, match=f"held by the first submit .host {socket.gethostname()}, pid {os.getpid()}"):
            with file_lock(lock, "a second submit"):
                pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "t", "what": "killed"}))
    with file_lock(lock, "after a kill") as me:  # its holder is a dead process of this host: stale
        assert json.loads(lock.read_text())["token"] == me["token"]
    # A holder on another node is judged by the lock's age alone (it touches it while alive).
    lock.write_text(json.dumps({"host": "other-node", "pid": 1, "token": "t2", "what": "elsewhere"}))
    with pytest.raises(LockBusyError):
        with file_lock(lock, "too early", stale_s=60):
            pass
    old = time.time() - 120
    os.utime(lock, (old, old))
    with file_lock(lock, "after its node died", stale_s=60):
        pass
    assert not lock.exists()


def test_the_holder_touches_its_lock_while_it_holds_it(tmp_path):
    lock = tmp_path / "x.lock"
    with file_lock(lock, "long", refresh_s=0.05):
        old = time.time() - 1000
        os.utime(lock, (old, old))
        time.sleep(0.3)
        assert time.time() - lock.stat().st_mtime < 5
