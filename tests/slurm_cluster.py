"""pytest fixtures for a real one-node Slurm cluster (see slurm/cluster/).

Register from the root ``conftest.py`` with::

    pytest_plugins = ["tests.slurm_cluster"]

or run ad hoc with ``python -m pytest -p tests.slurm_cluster ...``.

Fixtures
--------
``slurm_cluster`` (session)
    Installs (apt, when missing) and starts the cluster when running as root,
    points ``SLURM_CONF`` at it for the whole session (so ``sbatch``,
    ``sacct``, submitit... in this process and its children use it), and stops
    it at the end *if this session started it*.  Skips with a reason when not
    root or when install/start fails -- unless ``SRLM_REQUIRE_SLURM=1`` (CI),
    in which case it fails instead.
``slurm`` (function)
    The same object, after cancelling any job left over by a previous test so
    that every test starts with an idle node.

Environment
-----------
``SRLM_SLURM_STATE``    state dir (default /tmp/srlm-slurm), passed to setup.sh
``SRLM_REQUIRE_SLURM``  1: a cluster that cannot be had is a failure, not a skip
``SRLM_SLURM_KEEP``     1: leave the cluster running after the session
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, Union

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_SH = REPO_ROOT / "slurm" / "cluster" / "setup.sh"

LOW_PARTITION = "low"  # default partition, preemptable (PreemptMode=REQUEUE)
HIGH_PARTITION = "high"  # preempts jobs of the low partition

#: sacct states after which a job will not run again by itself.
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)

Cmd = Union[str, Sequence[str]]


def array_task_ids(spec: str) -> list[int]:
    """Task ids of an sbatch ``--array`` spec: ``0-3``, ``1,4,7``, ``0-9:3``, ``0-15%4``."""
    ids: list[int] = []
    for part in spec.split("%")[0].split(","):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        ids += range(int(lo), int(hi or lo) + 1, int(step or 1))
    return ids


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class SlurmCluster:
    """Handle on the running test cluster."""

    state_dir: Path
    conf: Path
    low_partition: str = LOW_PARTITION
    high_partition: str = HIGH_PARTITION
    started_here: bool = False
    env: dict = field(default_factory=dict)
    _array_tasks: dict = field(default_factory=dict, repr=False)  # job id -> task ids of --array

    @property
    def partitions(self) -> tuple:
        return (self.low_partition, self.high_partition)

    @property
    def default_partition(self) -> str:
        return self.low_partition

    # -- running commands -------------------------------------------------
    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command (list, or a string for ``bash -c``) against the cluster."""
        full_env = {**os.environ, **self.env, **(env or {})}
        args = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"command failed ({proc.returncode}): {args}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def sbatch(self, *args: str, script: str | None = None) -> str:
        """``sbatch --parsable ARGS [script]`` (script text goes to stdin); returns the job id."""
        full_env = {**os.environ, **self.env}
        proc = subprocess.run(
            ["sbatch", "--parsable", *args],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
            env=full_env,
        )
        if proc.returncode != 0:
            raise AssertionError(f"sbatch {args} failed: {proc.stderr}")
        job_id = proc.stdout.strip().split(";")[0]
        array = [a.split("=", 1)[1] for a in args if a.startswith("--array=")]
        if array:
            self._array_tasks[job_id] = array_task_ids(array[-1])
        return job_id

    # -- job states ---------------------------------------------------------
    def sacct(self, job_id: str, fields: str = "JobID,State,ExitCode", duplicates: bool = False) -> list:
        """Allocation lines (no steps) for ``job_id`` as lists of fields.

        With ``duplicates=True`` every run of a requeued job is listed (``-D``).
        """
        cmd = ["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", fields]
        if duplicates:
            cmd.insert(1, "-D")
        out = self.run(cmd, check=False).stdout
        return [line.split("|") for line in out.splitlines() if line.strip()]

    def state(self, job_id: str) -> str | None:
        """sacct state of a (non-array) job, e.g. ``COMPLETED``; None if unknown yet."""
        rows = self.sacct(job_id, "JobID,State")
        for jid, state in rows:
            if jid == str(job_id):
                return state.split()[0]  # "CANCELLED by 0" -> "CANCELLED"
        return None

    def wait_final(self, job_id: str, timeout: float = 60) -> dict:
        """Wait until every allocation of ``job_id`` (array tasks too) is final.

        Returns {job id: state}.
        """
        deadline = time.monotonic() + timeout
        # An array job is final only once sacct lists every task: right after the tasks end,
        # slurmdbd may still hold a single not-yet-split record for the whole array.
        expected = {f"{job_id}_{i}" for i in self._array_tasks.get(str(job_id), ())}
        states: dict = {}
        while time.monotonic() < deadline:
            rows = self.sacct(job_id, "JobID,State")
            states = {jid: st.split()[0] for jid, st in rows}
            # A failed squeue (slurmctld busy on a loaded machine) prints nothing: that must not
            # read as "nothing queued".
            queue = self.run(["squeue", "-h", "-j", str(job_id), "-o", "%i"], check=False)
            queued = queue.returncode != 0 or queue.stdout.strip()
            complete = set(states) == expected if expected else bool(states)
            if complete and not queued and all(s in FINAL_STATES for s in states.values()):
                return states
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not finished after {timeout}s: {states}\n{self.debug_info()}")

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
        """Poll ``predicate()`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.debug_info()}")

    def wait_file(self, path: Path, timeout: float = 60, min_lines: int = 1) -> list:
        """Wait for ``path`` to have at least ``min_lines`` lines; return them."""
        path = Path(path)

        def lines():
            try:
                got = path.read_text().splitlines()
            except FileNotFoundError:
                return None
            return got if len(got) >= min_lines else None

        return self.wait_for(lines, timeout, what=f"{min_lines} line(s) in {path}")

    def cancel_all(self, wait: float = 30) -> None:
        """Cancel every job of this cluster and wait until the queue is empty."""
        jobs = self.run(["squeue", "-h", "-o", "%A"], check=False).stdout.split()
        if not jobs:
            return
        self.run(["scancel", "--full", *jobs], check=False)
        self.wait_for(
            lambda: not self.run(["squeue", "-h", "-o", "%A"], check=False).stdout.strip(),
            wait,
            interval=0.5,
            what="queue to drain",
        )

    # -- daemon faults (tests/chaos) -------------------------------------------
    def daemon_pid(self, name: str) -> int | None:
        """Pid of one of this cluster's daemons (slurmd, slurmctld...), from setup.sh's pid file."""
        try:
            return int((self.state_dir / "run" / f"{name}.pid").read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def stop_daemon(self, name: str, sig: int = 15, timeout: float = 60) -> None:
        """Send `sig` to one daemon of this cluster and wait until it is gone."""
        pid = self.daemon_pid(name)
        assert pid, f"{name} of this cluster is not running"
        os.kill(pid, sig)
        self.wait_for(lambda: not _alive(pid), timeout, what=f"{name} ({pid}) to exit")

    def step_daemons(self) -> list[int]:
        """slurmstepd processes of this cluster (their environment names our SLURM_CONF), as
        setup.sh stop finds them."""
        pids = []
        for p in Path("/proc").glob("[0-9]*"):
            try:
                if (p / "comm").read_text().strip() != "slurmstepd":
                    continue
                env = (p / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"SLURM_CONF={self.conf}".encode() in env:
                pids.append(int(p.name))
        return pids

    def ensure_up(self, timeout: float = 180) -> None:
        """Start whatever daemon of this cluster is not running, the way the session fixture
        does (setup.sh start starts only the missing ones, then waits for the node), and make
        sure the node takes jobs: resumed if it went down or drained."""
        env = {**os.environ, "SRLM_SLURM_STATE": str(self.state_dir)}
        proc = _setup("start", env, timeout=timeout)
        assert proc.returncode == 0, f"setup.sh start failed:\n{proc.stderr[-3000:]}"

        def node_ok():
            states = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.split()
            if states and all(s in ("idle", "mixed", "allocated", "completing") for s in states):  # no "*"
                return True
            if any(s.startswith(("down", "drain", "fail")) for s in states):
                node = self.run(["sinfo", "-h", "-N", "-o", "%N"], check=False).stdout.split()
                for n in node:
                    self.run(["scontrol", "update", f"nodename={n}", "state=resume"], check=False)
            return False

        self.wait_for(node_ok, timeout, interval=1, what="the node to take jobs again")

    def debug_info(self) -> str:
        parts = []
        for cmd in (["squeue", "-l"], ["sinfo", "-N", "-l"]):
            try:
                parts.append(f"$ {' '.join(cmd)}\n" + self.run(cmd, check=False, timeout=10).stdout)
            except Exception as exc:  # pragma: no cover - diagnostics only
                parts.append(f"$ {' '.join(cmd)}: {exc}")
        log = self.state_dir / "log" / "slurmctld.log"
        if log.exists():
            parts.append("slurmctld.log (tail):\n" + "\n".join(log.read_text().splitlines()[-20:]))
        return "\n".join(parts)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed daemon lingers as one until the
    container's init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _setup(action: str, env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SETUP_SH), action],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env),
    )


def _unavailable(reason: str) -> None:
    if _truthy("SRLM_REQUIRE_SLURM"):
        pytest.fail(f"Slurm cluster required (SRLM_REQUIRE_SLURM=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"no Slurm test cluster: {reason}")


def _cluster_state_dir() -> Path:
    return Path(os.environ.get("SRLM_SLURM_STATE", "/tmp/srlm-slurm"))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Session-wide one-node Slurm cluster (partitions ``low`` and ``high``)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        _unavailable("needs Linux")
    if os.geteuid() != 0:
        _unavailable("tests must run as root (apt install; jobs run as root with SlurmUser=root)")
    if not SETUP_SH.exists():
        _unavailable(f"{SETUP_SH} missing")

    state_dir = _cluster_state_dir()
    env = {**os.environ, "SRLM_SLURM_STATE": str(state_dir)}

    try:
        proc = _setup("install", env, timeout=900)
    except subprocess.TimeoutExpired:
        _unavailable("apt-get install timed out")
    if proc.returncode != 0:
        _unavailable(f"install failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    already_up = _setup("status", env, timeout=60).returncode == 0
    if not already_up:
        try:
            proc = _setup("start", env, timeout=180)
        except subprocess.TimeoutExpired:
            _setup("stop", env, timeout=120)
            _unavailable("cluster start timed out")
        if proc.returncode != 0:
            _setup("stop", env, timeout=120)
            _unavailable(f"cluster start failed:\n{proc.stderr[-4000:]}")

    conf = state_dir / "etc" / "slurm.conf"
    cluster = SlurmCluster(
        state_dir=state_dir,
        conf=conf,
        started_here=not already_up,
        env={"SLURM_CONF": str(conf)},
    )
    # Every subprocess started by the tests (sbatch, submitit, the package)
    # must talk to this cluster, not to whatever /etc/slurm says.
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", str(conf))
    try:
        yield cluster
    finally:
        mp.undo()
        if cluster.started_here and not _truthy("SRLM_SLURM_KEEP"):
            _setup("stop", env, timeout=120)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """``slurm_cluster`` with an empty queue before and after the test."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()


def bash_script(body: str, sbatch_lines: Iterable[str] = ()) -> str:
    """A batch script: shebang, ``#SBATCH`` lines, then ``body``."""
    head = ["#!/bin/bash"] + [f"#SBATCH {line}" for line in sbatch_lines]
    return "\n".join(head) + "\n" + body.strip() + "\n"


__all__ = ["SlurmCluster", "slurm_cluster", "slurm", "bash_script", "LOW_PARTITION", "HIGH_PARTITION"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the one-node Slurm test cluster (tests/slurm_cluster.py)")
