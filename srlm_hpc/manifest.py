"""Where every shard of every stage stands: pending, running, done or failed.

Layout, one directory per (run, iteration, stage):

    <manifest_root>/iter1/judge/plan.json              what the stage was split into, and the config keys
                                                       that shape its outputs (fingerprint.py)
    <manifest_root>/iter1/judge/shard-00042.json       that shard's state and history
    <manifest_root>/iter1/judge/beat-00042.json        its owner's heartbeat
    <manifest_root>/iter1/judge/claim-00042-a0003.json who claimed attempt 3 (created O_EXCL)
    <manifest_root>/iter1/judge/queued-00042.json      the job `submit` last queued for it
    <manifest_root>/iter1/eval/finalize.json           the stage's finalize: its files and inputs

Why one file per shard: on a shared filesystem (NFS, Lustre) with a thousand array tasks,
a single manifest file needs a lock, and a task killed while holding it blocks every other
one; a read-modify-write without a lock loses updates. Here each shard's file is written
only by the task that owns the shard, always by atomic rename, and the whole manifest can
be read at any moment by listing the directory.

One owner per shard. A task claims an attempt by creating its claim file with O_EXCL
(atomic on NFSv3+ and Lustre): of two tasks starting the same attempt, one wins and the
other backs off. The winner's random token goes into the shard's state, and every later
write of that task (done, failed, preempted) first checks the token is still there: a task
that lost the shard (another took it over after its heartbeat stopped) writes nothing. A
shard that is running under a live owner (its heartbeat still advancing, or its process
alive on this host) is not taken: the second run backs off. Heartbeats go to a file of
their own, so a late beat can never put a finished shard back to running.

Attempts and failures are counted apart: a preempted or requeued task starts the shard
again (attempt + 1) but has not failed; only failures count against `slurm.max_retries`.

A shard is done only when its state says so AND its output still exists with the recorded
size and sha256, every file it consists of too (a model folder's weights, config and
tokenizer; the pairs files an index lists), AND every upstream output it read still has
the digest it had then: a damaged output, or a changed input, makes it pending again.
Files whose size, mtime and inode are unchanged since they were hashed are not hashed
again (verify=True hashes everything).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from .config import ConfigError
from .files import (CorruptFileError, FileInfo, atomic_write_json, describe_output, output_digest, output_info,
                    read_json, verify_output)
from .locks import break_stale, create_exclusive, is_stale, pid_alive, read_holder

STATES = ("pending", "running", "done", "failed")


class PlanMismatchError(RuntimeError, ConfigError):
    """A rerun whose config would split the stage differently from the recorded plan (a usage
    mistake: a ConfigError, exit status 2)."""


class ConfigChangedError(PlanMismatchError):
    """A rerun with another value of a config key that shapes the stage's outputs."""


class ShardBusyError(RuntimeError):
    """Another live task owns the shard: this one backs off."""


class OwnershipLostError(RuntimeError):
    """The shard was taken over by another task since this one claimed it."""


@dataclass
class ShardState:
    shard: int
    state: str = "pending"
    attempt: int = 0  # how many times a task started this shard
    failures: int = 0  # how many of those ended in an error or a vanished job (not preemptions)
    job_id: str = ""
    array_index: int | None = None
    host: str = ""
    pid: int | None = None
    owner: str = ""  # the random token of the task that claimed the current attempt
    log: str = ""
    started: float | None = None
    heartbeat: float | None = None
    finished: float | None = None
    output: dict | None = None  # FileInfo of the shard's output when done, with its parts and digest
    inputs: list[dict] = field(default_factory=list)  # upstream outputs it read: iter, stage, shard, digest
    timing: dict = field(default_factory=dict)  # model loads and generated tokens of the done attempt (timing.py)
    config: str = ""  # fingerprint of the config keys that shaped the output (fingerprint.py)
    error: str = ""
    traceback_tail: str = ""
    history: list[dict] = field(default_factory=list)  # one line per earlier attempt


def job_identity() -> dict:
    """Who runs this shard: Slurm's ids when inside a job, the pid otherwise."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", f"local-{os.getpid()}")
    return {"job_id": job, "array_index": int(task) if task else None, "host": socket.gethostname(),
            "pid": os.getpid()}


def new_owner_token() -> str:
    return uuid.uuid4().hex


# ---- what a shard read -------------------------------------------------------------------------
_reads: list[dict] | None = None


@contextlib.contextmanager
def recording_reads() -> Iterator[list[dict]]:
    """Collect, while inside, every upstream output the shard reads (note_read)."""
    global _reads
    outer, _reads = _reads, []
    try:
        yield _reads
    finally:
        _reads = outer


def read_label(entry: dict) -> str:
    """`stage/iter/shard:digest` of one input a shard read (note_read) or a model it uses."""
    return f"{entry['stage']}/{entry['iter']}/{entry['shard']}:{entry['digest']}"


def current_reads() -> list[dict]:
    """What the shard has read so far (empty outside recording_reads)."""
    return list(_reads or [])


def note_read(iteration: int, stage: str, shard: int, digest: str) -> None:
    if _reads is not None:
        entry = {"iter": iteration, "stage": stage, "shard": shard, "digest": digest}
        if entry not in _reads:
            _reads.append(entry)


_digests: dict[str, tuple[tuple, str | None]] = {}  # manifest file -> (its stat, its output's digest)


def recorded_digest(root: Path, iteration: int, stage: str, shard: int) -> str | None:
    """The digest of the output the manifest now records for that shard (None: none). Cached
    by the manifest file's stat: checking inputs costs a stat, not a read, per input."""
    p = root / f"iter{iteration}" / stage / f"shard-{shard:05d}.json"
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return None
    key = (st.st_size, st.st_mtime_ns, st.st_ino)
    hit = _digests.get(str(p))
    if hit and hit[0] == key:
        return hit[1]
    try:
        out = read_json(p).get("output")
    except (CorruptFileError, OSError):
        return None
    digest = output_digest(out) if out else None
    _digests[str(p)] = (key, digest)
    return digest


class StageManifest:
    def __init__(self, root: str | Path, iteration: int, stage: str):
        self.root = Path(root)
        self.dir = self.root / f"iter{iteration}" / stage
        self.iteration = iteration
        self.stage = stage

    # ---- the plan ---------------------------------------------------------------------
    @property
    def plan_path(self) -> Path:
        return self.dir / "plan.json"

    def write_plan(self, n_shards: int, keys: dict, shaping: dict | None = None, output_dir: str = "") -> dict:
        """Record how the stage is split and the config values that shape its outputs; a rerun
        that would split it differently, or change a shaping value, is refused."""
        plan = {"stage": self.stage, "iter": self.iteration, "n_shards": n_shards, "keys": keys}
        if shaping is not None:
            plan["shaping"] = shaping
        if self.plan_path.exists():
            old = read_json(self.plan_path)
            if (old["n_shards"], old["keys"]) != (n_shards, keys):
                changed = sorted(k for k in set(old["keys"]) | set(keys) if old["keys"].get(k) != keys.get(k))
                raise PlanMismatchError(
                    f"{self.plan_path}: stage {self.stage} of iter {self.iteration} was planned as "
                    f"{old['n_shards']} shards with {old['keys']}; now {n_shards} shards with {keys} "
                    f"(changed: {', '.join(changed) or 'n_shards'}). Finished shards would no longer "
                    f"line up: restore the old values, or start the stage afresh: "
                    f"{self.afresh_hint(output_dir)}")
            if shaping is None:
                return old
            if "shaping" not in old:  # planned before shaping values were recorded: record them now
                atomic_write_json(self.plan_path, dict(old, shaping=shaping))
                return dict(old, shaping=shaping)
            from .fingerprint import changed_keys

            changed = changed_keys(old["shaping"], shaping)
            if changed:
                listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed)
                raise ConfigChangedError(
                    f"stage {self.stage} of iter {self.iteration} was started with other values of keys that shape "
                    f"its outputs ({listed}); its finished shards, chunks and checkpoints belong to the old values "
                    f"({self.plan_path}). Restore them to finish the stage, or start it afresh: "
                    f"{self.afresh_hint(output_dir)}")
            return old
        atomic_write_json(self.plan_path, plan)
        return plan

    def afresh_hint(self, output_dir: str = "") -> str:
        return (f"`rm -r {self.dir}" + (f" {output_dir}" if output_dir else "") + "`, then rerun (stages after it "
                f"rerun where their inputs changed)")

    def plan(self) -> dict | None:
        return read_json(self.plan_path) if self.plan_path.exists() else None

    # ---- shard states -----------------------------------------------------------------
    def path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:05d}.json"

    def beat_path(self, shard: int) -> Path:
        return self.dir / f"beat-{shard:05d}.json"

    def claim_path(self, shard: int, attempt: int) -> Path:
        return self.dir / f"claim-{shard:05d}-a{attempt:04d}.json"

    def get(self, shard: int) -> ShardState:
        p = self.path(shard)
        if not p.exists():
            return ShardState(shard)
        d = read_json(p)
        known = ShardState.__dataclass_fields__
        st = ShardState(**{k: v for k, v in d.items() if k in known})
        if st.state == "running" and st.owner:
            beat = self.last_beat(shard, st.owner)
            if beat is not None and beat > (st.heartbeat or 0):
                st.heartbeat = beat
        return st

    def _put(self, st: ShardState) -> ShardState:
        atomic_write_json(self.path(st.shard), asdict(st))
        return st

    def last_beat(self, shard: int, owner: str) -> float | None:
        """When `owner` last beat for this shard (None: never, or another owner beats now)."""
        try:
            beat = read_json(self.beat_path(shard))
        except (FileNotFoundError, CorruptFileError):
            return None
        return beat.get("time") if beat.get("owner") == owner else None

    def _archive(self, st: ShardState, state: str | None = None, **extra) -> None:
        if st.attempt:
            st.history.append({**{k: getattr(st, k) for k in ("attempt", "state", "job_id", "host", "started",
                                                              "heartbeat", "error")},
                               **({"state": state} if state else {}), **extra})

    def owner_alive(self, st: ShardState, liveness_s: float, poll_s: float = 0.5) -> bool:
        """Whether the task that owns a running shard lives: its process, when on this host;
        otherwise whether its heartbeat advances within `liveness_s` (watched for that long
        only when its last beat is recent)."""
        if st.host == socket.gethostname() and st.pid:
            return pid_alive(st.pid)
        first = st.heartbeat or st.started or 0
        deadline = time.monotonic() + max(0.0, liveness_s - (time.time() - first))
        while True:
            now = self.get(st.shard)
            if now.owner != st.owner or now.state != "running" or (now.heartbeat or 0) > first:
                return True  # it beat, finished, or someone else took it: not ours to take
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def claim(self, shard: int, owner: str, log: str = "", liveness_s: float = 0.0,
              config: str = "", force: bool = False) -> ShardState:
        """Make `owner` the owner of a new attempt; ShardBusyError when a live task owns the
        shard or another task claimed the same attempt first. `force`: take a running shard
        without asking whether its owner lives."""
        st = self.get(shard)
        if st.state == "running" and st.owner and st.owner != owner and not force:
            if self.owner_alive(st, liveness_s):
                raise ShardBusyError(
                    f"{self.stage} shard {shard} of iter {self.iteration} is running under job {st.job_id} on "
                    f"{st.host} (attempt {st.attempt}, heartbeat {time.time() - (st.heartbeat or 0):.0f}s ago); "
                    f"this task backs off")
            st = self.get(shard)
            self._archive(st, "abandoned", reason="its task's heartbeat stopped; taken over")
        elif st.state in ("running", "failed"):
            self._archive(st)
        attempt = st.attempt + 1
        self.dir.mkdir(parents=True, exist_ok=True)
        self._claim_attempt(shard, attempt, owner, liveness_s)
        for earlier in range(1, attempt):  # older attempts' claims are settled (by name: no listing of a
            self.claim_path(shard, earlier).unlink(missing_ok=True)  # folder of 10,000 shards' files)
        now = time.time()
        st.state, st.attempt, st.started, st.heartbeat, st.log = "running", attempt, now, now, log
        st.finished, st.error, st.traceback_tail, st.output, st.inputs, st.timing = None, "", "", None, [], {}
        st.owner, st.config = owner, config
        for k, v in job_identity().items():
            setattr(st, k, v)
        return self._put(st)

    def _claim_attempt(self, shard: int, attempt: int, owner: str, liveness_s: float) -> None:
        """Create this attempt's claim file; of two tasks only one can. A claim whose task died
        before writing the shard's state (it would block the attempt forever) is broken."""
        path = self.claim_path(shard, attempt)
        me = {"owner": owner, **job_identity(), "time": time.time()}
        for _ in range(2):
            if create_exclusive(path, me):
                return
            other = read_holder(path) or {}
            if self.get(shard).attempt < attempt and is_stale(path, other, max(liveness_s, 5.0)):
                break_stale(path, other)
                continue
            raise ShardBusyError(f"{self.stage} shard {shard} of iter {self.iteration}: attempt {attempt} was "
                                 f"claimed by job {other.get('job_id', '?')} on {other.get('host', '?')}; this "
                                 f"task backs off")
        raise ShardBusyError(f"{self.stage} shard {shard} of iter {self.iteration}: attempt {attempt} is being "
                             f"claimed by another task; this task backs off")

    def mark_running(self, shard: int, log: str = "", owner: str | None = None) -> ShardState:
        """Claim the shard without waiting on a previous owner (the runner uses `claim`)."""
        return self.claim(shard, owner or new_owner_token(), log, force=True)

    def _owned(self, shard: int, owner: str | None) -> ShardState:
        st = self.get(shard)
        if owner is not None and st.owner != owner:
            raise OwnershipLostError(
                f"{self.stage} shard {shard} of iter {self.iteration}: now owned by job {st.job_id} on {st.host} "
                f"(attempt {st.attempt}, {st.state}); this task's result is not recorded")
        return st

    def queued_path(self, shard: int) -> Path:
        return self.dir / f"queued-{shard:05d}.json"

    def mark_queued(self, shard: int, job_id: str) -> None:
        """The job that will run the shard: a rerun of submit leaves the shard alone while
        that job is in the queue. Written apart from the shard's state (see the module doc)."""
        atomic_write_json(self.queued_path(shard), {"job_id": job_id, "time": time.time()})

    def queued_job(self, shard: int) -> str:
        p = self.queued_path(shard)
        return read_json(p)["job_id"] if p.exists() else ""

    def heartbeat(self, shard: int, owner: str | None = None) -> bool:
        """Beat for the shard's owner (into beat-NNNNN.json, never the shard's own file); false
        once the shard is no longer this owner's."""
        owner = owner if owner is not None else self.get(shard).owner
        st = self.get(shard)
        if st.owner != owner or st.state != "running":
            return False
        atomic_write_json(self.beat_path(shard), {"owner": owner, "time": time.time()})
        return True

    def mark_done(self, shard: int, info: FileInfo | dict, owner: str | None = None,
                  inputs: list[dict] | None = None, timing: dict | None = None) -> ShardState:
        st = self._owned(shard, owner)
        st.state, st.finished = "done", time.time()
        st.output = info if isinstance(info, dict) else describe_output(info)
        st.inputs = list(inputs or [])
        st.timing = dict(timing or {})
        st.error = st.traceback_tail = ""
        return self._put(st)

    def mark_failed(self, shard: int, exc: BaseException, owner: str | None = None) -> ShardState:
        st = self._owned(shard, owner)
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
        st.owner = ""
        return self._put(st)

    def mark_preempted(self, shard: int, reason: str, owner: str | None = None) -> ShardState:
        """The running task was preempted or hit its time limit and requeued itself: pending
        again, its finished chunks or training checkpoint kept, no failure counted."""
        st = self._owned(shard, owner)
        st.history.append({"attempt": st.attempt, "state": "preempted", "job_id": st.job_id, "host": st.host,
                           "started": st.started, "heartbeat": st.heartbeat, "reason": reason})
        st.state, st.finished, st.error, st.owner = "pending", time.time(), "", ""
        return self._put(st)

    # ---- done means verified ---------------------------------------------------------------
    def changed_inputs(self, st: ShardState) -> list[dict]:
        """The upstream outputs this shard read that the manifest now records otherwise."""
        return [i for i in st.inputs
                if recorded_digest(self.root, i["iter"], i["stage"], i["shard"]) != i["digest"]]

    def output_problem(self, st: ShardState, full: bool = False) -> str | None:
        """Why a done shard does not count as done (None: it does)."""
        if st.state != "done" or not st.output:
            return f"state {st.state}"
        try:
            verify_output(st.output, full=full)
        except CorruptFileError as e:
            return str(e)
        changed = self.changed_inputs(st)
        if changed:
            c = changed[0]
            return (f"its input, {c['stage']} shard {c['shard']} of iter {c['iter']}, changed since it was read"
                    + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))
        return None

    def verified_output(self, st: ShardState, full: bool = False) -> FileInfo | None:
        """The shard's output when it is done, every file of it matches, and its inputs are
        unchanged; else None."""
        if self.output_problem(st, full) is not None:
            return None
        return output_info(st.output)

    # ---- where each shard's records start: for a downstream shard reading a range -------------
    QUIET_S = 2.0  # a folder changed this recently may still change within its mtime's granularity

    @property
    def records_index_path(self) -> Path:
        return self.dir.parent / f".{self.stage}.records.json"  # beside the folder: writing it leaves that alone

    def record_counts(self, n_shards: int) -> list[int | None]:
        """Records of each shard's recorded output (None: not done). A downstream shard needs
        them all to find where its range starts, but reading 10,000 shard files costs ~0.5 s
        locally and a metadata round trip each on a shared filesystem: the counts are kept in
        an index beside the stage's folder, valid while the folder's mtime (which every atomic
        rename of a shard's state moves) is unchanged. So a stage's first reader pays the
        pass, and the rest one stat and one read."""
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except FileNotFoundError:
            return [None] * n_shards
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            index = json.loads(self.records_index_path.read_text())
            if index["dir_mtime_ns"] == mtime and len(index["records"]) == n_shards:
                return index["records"]
        counts = [st.output.get("records") if st.state == "done" and st.output else None
                  for st in self.states(n_shards)]
        if None not in counts and time.time() - mtime / 1e9 > self.QUIET_S:
            with contextlib.suppress(OSError):  # a read-only manifest: just no index
                atomic_write_json(self.records_index_path, {"dir_mtime_ns": mtime, "records": counts})
        return counts

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

    # ---- the stage's finalize (eval's metrics.json, eft's training file, dpo's summary) ----
    @property
    def finalize_path(self) -> Path:
        return self.dir / "finalize.json"

    def finalized(self, inputs: list[str]) -> bool:
        """Whether finalize ran over exactly these shard outputs and its files are intact."""
        if not self.finalize_path.exists():
            return False
        try:
            rec = read_json(self.finalize_path)
            if rec.get("inputs") != inputs:
                return False
            for out in rec["files"]:
                verify_output(out)
        except (CorruptFileError, KeyError, TypeError):
            return False
        return True

    def mark_finalized(self, inputs: list[str], files: list[FileInfo]) -> None:
        atomic_write_json(self.finalize_path, {"inputs": inputs, "files": [describe_output(f) for f in files],
                                               "time": time.time(), **job_identity()})
