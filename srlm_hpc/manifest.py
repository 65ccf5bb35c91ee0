"""Where every shard of every stage stands: pending, running, done or failed.

Layout, one directory per (run, iteration, stage):

    <manifest_root>/iter1/judge/plan.json          what the stage was split into
    <manifest_root>/iter1/judge/shard-00042.json   that shard's state and history
    <manifest_root>/iter1/judge/queued-00042.json  the job `submit` last queued for it

Why one file per shard: on a shared filesystem (NFS, Lustre) with a thousand array
tasks, a single manifest file needs a lock, and a task killed while holding it blocks
every other one; a read-modify-write without a lock loses updates. Here each shard's file
is written only by the task running that shard (and by `submit` when no task runs it),
always by atomic rename, so no update is lost, nothing is ever locked, and the whole
manifest can be read at any moment by listing the directory. The job id `submit` gets back
from sbatch goes into a file of its own: by then the task may already be running the shard
(or have finished it), and writing the shard's file would undo that.

Attempts and failures are counted apart: a preempted or requeued task starts the shard
again (attempt + 1) but has not failed; only failures count against `slurm.max_retries`.

A shard is done only when its state says so AND its output still exists with the
recorded size and sha256: a file truncated or replaced since makes it pending again.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .files import CorruptFileError, FileInfo, atomic_write_json, read_json, verify_file

STATES = ("pending", "running", "done", "failed")


class PlanMismatchError(RuntimeError):
    """A rerun whose config would split the stage differently from the recorded plan."""


@dataclass
class ShardState:
    shard: int
    state: str = "pending"
    attempt: int = 0  # how many times a task started this shard
    failures: int = 0  # how many of those ended in an error or a vanished job (not preemptions)
    job_id: str = ""
    array_index: int | None = None
    host: str = ""
    log: str = ""
    started: float | None = None
    heartbeat: float | None = None
    finished: float | None = None
    output: dict | None = None  # FileInfo of the shard's output when done
    error: str = ""
    traceback_tail: str = ""
    history: list[dict] = field(default_factory=list)  # one line per earlier attempt


def job_identity() -> dict:
    """Who runs this shard: Slurm's ids when inside a job, the pid otherwise."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", f"local-{os.getpid()}")
    return {"job_id": job, "array_index": int(task) if task else None, "host": socket.gethostname()}


class StageManifest:
    def __init__(self, root: str | Path, iteration: int, stage: str):
        self.dir = Path(root) / f"iter{iteration}" / stage
        self.iteration = iteration
        self.stage = stage

    # ---- the plan ---------------------------------------------------------------------
    @property
    def plan_path(self) -> Path:
        return self.dir / "plan.json"

    def write_plan(self, n_shards: int, keys: dict) -> dict:
        """Record how the stage is split; a rerun that would split it differently is refused."""
        plan = {"stage": self.stage, "iter": self.iteration, "n_shards": n_shards, "keys": keys}
        if self.plan_path.exists():
            old = read_json(self.plan_path)
            if (old["n_shards"], old["keys"]) != (n_shards, keys):
                changed = sorted(k for k in set(old["keys"]) | set(keys) if old["keys"].get(k) != keys.get(k))
                raise PlanMismatchError(
                    f"{self.plan_path}: stage {self.stage} of iter {self.iteration} was planned as "
                    f"{old['n_shards']} shards with {old['keys']}; now {n_shards} shards with {keys} "
                    f"(changed: {', '.join(changed) or 'n_shards'}). Finished shards would no longer "
                    f"line up: restore the old values, or use a new work_dir/run.")
            return old
        atomic_write_json(self.plan_path, plan)
        return plan

    def plan(self) -> dict | None:
        return read_json(self.plan_path) if self.plan_path.exists() else None

    # ---- shard states -----------------------------------------------------------------
    def path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:05d}.json"

    def get(self, shard: int) -> ShardState:
        p = self.path(shard)
        if not p.exists():
            return ShardState(shard)
        return ShardState(**read_json(p))

    def _put(self, st: ShardState) -> ShardState:
        atomic_write_json(self.path(st.shard), asdict(st))
        return st

    def mark_running(self, shard: int, log: str = "") -> ShardState:
        st = self.get(shard)
        if st.state in ("running", "failed") and st.attempt:
            st.history.append({k: getattr(st, k) for k in ("attempt", "state", "job_id", "host", "started",
                                                            "heartbeat", "error")})
        now = time.time()
        st.state, st.attempt, st.started, st.heartbeat, st.log = "running", st.attempt + 1, now, now, log
        st.finished, st.error, st.traceback_tail, st.output = None, "", "", None
        for k, v in job_identity().items():
            setattr(st, k, v)
        return self._put(st)

    def queued_path(self, shard: int) -> Path:
        return self.dir / f"queued-{shard:05d}.json"

    def mark_queued(self, shard: int, job_id: str) -> None:
        """The job that will run the shard: a rerun of submit leaves the shard alone while
        that job is in the queue. Written apart from the shard's state (see the module doc)."""
        atomic_write_json(self.queued_path(shard), {"job_id": job_id, "time": time.time()})

    def queued_job(self, shard: int) -> str:
        p = self.queued_path(shard)
        return read_json(p)["job_id"] if p.exists() else ""

    def heartbeat(self, shard: int) -> None:
        st = self.get(shard)
        if st.state == "running":
            st.heartbeat = time.time()
            self._put(st)

    def mark_done(self, shard: int, info: FileInfo) -> ShardState:
        st = self.get(shard)
        st.state, st.finished, st.output = "done", time.time(), asdict(info)
        st.error = st.traceback_tail = ""
        return self._put(st)

    def mark_failed(self, shard: int, exc: BaseException) -> ShardState:
        st = self.get(shard)
        st.state, st.finished, st.failures = "failed", time.time(), st.failures + 1
        st.error = f"{type(exc).__name__}: {exc}"
        st.traceback_tail = "".join(traceback.format_exception(exc))[-4000:]
        return self._put(st)

    def mark_pending(self, shard: int, reason: str, failed: bool = False) -> ShardState:
        """Give a shard back (stale task, corrupt output) so the next submit reruns it;
        `failed`: its task died (counts against the retry limit)."""
        st = self.get(shard)
        st.history.append({"attempt": st.attempt, "state": st.state, "job_id": st.job_id, "host": st.host,
                           "reset": reason})
        st.state, st.output, st.error, st.failures = "pending", None, reason, st.failures + failed
        return self._put(st)

    def mark_preempted(self, shard: int, reason: str) -> ShardState:
        """The running task was preempted or hit its time limit and requeued itself: pending
        again, its finished chunks or training checkpoint kept, no failure counted."""
        st = self.get(shard)
        st.history.append({"attempt": st.attempt, "state": "preempted", "job_id": st.job_id, "host": st.host,
                           "started": st.started, "heartbeat": st.heartbeat, "reason": reason})
        st.state, st.finished, st.error = "pending", time.time(), ""
        return self._put(st)

    def verified_output(self, st: ShardState) -> FileInfo | None:
        """The shard's output when it is done and its file matches size and hash, else None."""
        if st.state != "done" or not st.output:
            return None
        info = FileInfo(**st.output)
        try:
            verify_file(info.path, info.bytes, info.sha256)
        except CorruptFileError:
            return None
        return info

    def states(self, n_shards: int | None = None) -> list[ShardState]:
        if n_shards is None:
            plan = self.plan()
            n_shards = plan["n_shards"] if plan else 0
        return [self.get(i) for i in range(n_shards)]

    def counts(self, n_shards: int | None = None) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for st in self.states(n_shards):
            counts[st.state] += 1
        return counts
