"""A lock that holds across the nodes of a cluster: a lock file made by an atomic link(2).

    with file_lock(work_dir / "iter1" / "submit.lock", "submit of iter 1"):
        ...

`flock` does not do: Lustre mounted `noflock` refuses it, and with `localflock` (Lustre) or
`nolock` (NFS) it only excludes processes of the same node. link(2) to an existing name
fails atomically on every NFS version and on Lustre, and the file linked already names its
holder (host, pid, a random token, what it does), so a lock is never seen empty. A thread
touches it every `refresh_s` while held. A lock is stale, and is broken, when its holder is
a dead process of this host, or when it was not touched for `stale_s` (a holder on another
node that died with its node). Breaking renames the file to a unique name first, so of two
processes breaking the same stale lock only one succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator


class LockBusyError(RuntimeError):
    """Another live process holds the lock."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def read_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: judged by its age alone


def is_stale(path: Path, holder: dict, stale_s: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not pid_alive(holder["pid"]):
            return True
    try:
        return now - path.stat().st_mtime > stale_s
    except FileNotFoundError:
        return True


def create_exclusive(path: Path, content: dict) -> bool:
    """Create `path` holding `content` unless it exists; atomic across nodes (see _try_create)."""
    return _try_create(path, dict(content, token=content.get("token") or uuid.uuid4().hex))


def _try_create(path: Path, me: dict) -> bool:
    """Write the holder to a temp file, then link(2) it to the lock's name: atomic, refused if
    the name exists, and the lock is never seen empty (a holder killed between an O_EXCL
    create and its write would leave an empty lock that names no one). NFS may lose the
    reply to a link that succeeded: then the temp file's link count tells."""
    tmp = path.with_name(f".{path.name}.{me['token']}.tmp")
    with open(tmp, "w") as f:
        json.dump(me, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        return os.stat(tmp).st_nlink == 2
    finally:
        tmp.unlink(missing_ok=True)


def _sweep_temps(path: Path, older_than_s: float = 60.0) -> None:
    """Temp files of lockers killed between writing them and linking."""
    now = time.time()
    for p in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()


def break_stale(path: Path, holder: dict) -> None:
    _break(path, holder)


def _break(path: Path, holder: dict) -> None:
    """Remove a stale lock, unless someone replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process broke it first
    moved = read_holder(aside)
    if holder and moved and moved.get("token") != holder.get("token"):
        # A new holder created the lock between our look and the rename: give it back.
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


@contextlib.contextmanager
def file_lock(path: str | Path, what: str, wait_s: float = 0.0, stale_s: float = 300.0,
              refresh_s: float = 30.0, poll_s: float = 0.5) -> Iterator[dict]:
    """Hold `path` as a lock while inside; raise LockBusyError, naming the holder, when a live
    holder keeps it longer than `wait_s`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "what": what,
          "since": time.time()}
    deadline = time.monotonic() + wait_s
    _sweep_temps(path)
    while not _try_create(path, me):
        holder = read_holder(path)
        if holder is None:
            continue  # released meanwhile
        if is_stale(path, holder, stale_s):
            _break(path, holder)
            continue
        if time.monotonic() >= deadline:
            raise LockBusyError(
                f"{path}: held by {holder.get('what', 'another process')} (host {holder.get('host', '?')}, pid "
                f"{holder.get('pid', '?')}, for {time.time() - holder.get('since', time.time()):.0f}s); wait for it "
                f"to finish. If that process is gone, the lock counts as stale after {stale_s:.0f}s without a touch, "
                f"or delete {path} by hand.")
        time.sleep(poll_s)
    stop = threading.Event()

    def touch():
        while not stop.wait(refresh_s):
            with contextlib.suppress(OSError):
                os.utime(path)

    toucher = threading.Thread(target=touch, name=f"lock-{path.name}", daemon=True)
    toucher.start()
    try:
        yield me
    finally:
        stop.set()
        toucher.join()
        held = read_holder(path)
        if held and held.get("token") == me["token"]:
            path.unlink(missing_ok=True)
