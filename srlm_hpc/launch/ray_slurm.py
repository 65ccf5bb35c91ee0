"""A Ray cluster inside one Slurm array task, for vLLM's pipeline parallelism across nodes.

vLLM spans nodes only through Ray. An array task of a generation stage with
`vllm.pipeline_parallel_size = P` holds P nodes, one task per node (launch/resources.py);
srun starts the worker on each. Task 0 starts the Ray head on its node, waits until all P
nodes have joined, and runs the shard with RAY_ADDRESS set, so `vllm.LLM(...,
distributed_executor_backend="ray")` finds the cluster. Every other task joins the head as a
Ray worker node and waits until the shard is no longer running (done, failed or requeued),
rank 0 is dead (its heartbeat stopped), or the head is gone (its port stopped answering),
then leaves.

Ray's ports are reachable by every user of the cluster, so this Ray is the job's own:
- token authentication (RAY_AUTH_MODE=token, Ray >= 2.52): a random token, written 0600 by
  task 0 into the job's folder on the shared filesystem, read by the other tasks;
- a temp dir of its own per job and node (/tmp/srlm-ray-<job id>), so sessions, sockets
  and logs of two jobs on one node never mix;
- every port it opens from a band of its own, chosen by the job id (`ray_ports`), where
  Ray's defaults (10001, 8265, 52365, workers 10002-19999) are the same for every job on a
  node; no dashboard;
- `ray start --block` runs under a small guard in a process group of its own: leaving stops
  that group, the processes this task started, never another task's (`ray stop` would). It
  also dies with us: a SIGKILLed task cannot stop it, so the kernel tells the guard
  (PR_SET_PDEATHSIG), which kills the whole group (GROUP_GUARD). A task killed outright
  leaves only its temp dir behind (Ray's logs, for the post-mortem).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from ..preemption import handlers_kept
from ..slurm_env import SLURM_BASE_PORT, SLURM_PORT_SPAN, first_host

# One job's Ray uses 11 service ports and one port per live worker process (each core worker
# binds its own gRPC port). A node holds the driver, one actor per GPU (<= 8) and the idle
# workers Ray may prestart when the driver connects (up to one per CPU); 188 worker ports
# cover a 128-core node. 200 ports per job leaves 100 bands in SLURM_BASE_PORT's 20000: two
# jobs on one node clash only when their ids are equal modulo 100, and then the second one's
# `ray start` fails on a taken port (loudly, never by mixing into the first job's Ray).
# Not in the band: Ray Client's per-connection servers (23000-24000, each on a free port),
# started only when a `ray://` client connects, which nothing here does.
RAY_PORT_BAND = 200
RAY_SERVICE_PORTS = 12  # offsets 0-10 are RayPorts' services, 11 is spare; workers take the rest


@dataclass(frozen=True)
class RayPorts:
    gcs: int                    # the head's port: what the other tasks join
    client_server: int          # Ray Client (head only, started when grpcio is installed)
    dashboard: int              # the head's API server (with ray[default]; even with the dashboard off)
    node_manager: int           # raylet
    object_manager: int
    dashboard_agent_http: int   # the agents' servers (with ray[default])
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics_export: int         # Prometheus endpoint (with ray[default])
    autoscaler_metrics: int     # the head's monitor (Ray's default 44217, set by environment only)
    dashboard_metrics: int      # the head's API server metrics (default 44227, environment only)
    min_worker: int
    max_worker: int

    def node_flags(self) -> list[str]:
        """Flags of every node, head or worker (each node runs a raylet and its agents)."""
        return [f"--node-manager-port={self.node_manager}", f"--object-manager-port={self.object_manager}",
                f"--dashboard-agent-listen-port={self.dashboard_agent_http}",
                f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
                f"--runtime-env-agent-port={self.runtime_env_agent}", f"--metrics-export-port={self.metrics_export}",
                f"--min-worker-port={self.min_worker}", f"--max-worker-port={self.max_worker}"]

    def head_flags(self) -> list[str]:
        # `ray start` refuses a client server port when grpcio is missing, and without grpcio
        # it starts no client server at all; with grpcio it would take 10001 on every head.
        client = ([f"--ray-client-server-port={self.client_server}"]
                  if importlib.util.find_spec("grpc") is not None else [])
        return [f"--port={self.gcs}", *client, f"--dashboard-port={self.dashboard}", *self.node_flags()]

    def head_env(self) -> dict[str, str]:
        return {"AUTOSCALER_METRIC_PORT": str(self.autoscaler_metrics),
                "DASHBOARD_METRIC_PORT": str(self.dashboard_metrics)}


def _job_number(job_id: str) -> int:
    # Slurm's ids are numbers; a local stand-in id ("local-<pid>") still gets a stable band.
    return int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())


def ray_ports(job_id: str) -> RayPorts:
    """The job's band of ports, the same on every node of the job, below Linux's ephemeral
    range (32768-60999) like slurm_env.slurm_port, so no outgoing connection holds one."""
    start = SLURM_BASE_PORT + _job_number(job_id) % (SLURM_PORT_SPAN // RAY_PORT_BAND) * RAY_PORT_BAND
    return RayPorts(*range(start, start + 11), min_worker=start + RAY_SERVICE_PORTS,
                    max_worker=start + RAY_PORT_BAND - 1)


def head_address(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return f"{first_host(env['SLURM_JOB_NODELIST'])}:{ray_ports(env['SLURM_JOB_ID']).gcs}"


def ray_command() -> str:
    """The `ray` of this interpreter's environment first: a Slurm task runs `.venv/bin/python`
    without the venv on PATH, and the head, the workers and the driver must be one Ray version."""
    ray = shutil.which("ray", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if ray is None:
        raise RuntimeError("vllm.pipeline_parallel_size > 1 spans nodes through Ray, but the `ray` command is "
                           "not installed here: pip install 'ray>=2.52' (the gpu extra brings it)")
    return ray


def job_temp_dir(job_id: str) -> str:
    """Node-local and short: Ray puts unix sockets under it (108-byte path limit)."""
    return f"/tmp/srlm-ray-{job_id}"


def write_token(path: Path) -> Path:
    """A fresh random token, readable by this user alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.replace(tmp, path)
    return path


def ray_env(token_path: Path) -> dict[str, str]:
    # RAY_AUTH_TOKEN would win over the file: a token left in the user's environment must not.
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def head_command(address: str, job_id: str) -> list[str]:
    ports = replace(ray_ports(job_id), gcs=int(address.rsplit(":", 1)[1]))  # the port the others join
    return [ray_command(), "start", "--head", *ports.head_flags(), "--disable-usage-stats",
            "--include-dashboard=false", f"--temp-dir={job_temp_dir(job_id)}", "--block"]


def worker_command(address: str, job_id: str) -> list[str]:
    return [ray_command(), "start", f"--address={address}", *ray_ports(job_id).node_flags(),
            "--disable-usage-stats", f"--temp-dir={job_temp_dir(job_id)}", "--block"]


def alive_nodes(address: str) -> int:
    """Nodes up in the cluster, asked as a Ray driver. ray.init takes SIGTERM over, and after
    ray.shutdown a SIGTERM still ends the process at once, past every Python handler and
    `finally` (Ray 2.60); the task's own handler (preemption.py) is put back."""
    import ray

    with handlers_kept():
        ray.init(address=address, ignore_reinit_error=True, logging_level="ERROR")
        try:
            return sum(1 for n in ray.nodes() if n.get("Alive"))
        finally:
            ray.shutdown()


def head_reachable(address: str, timeout_s: float = 2) -> bool:
    """Whether the head's GCS port takes a TCP connection (auth is checked per call, later)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def _term_with_parent() -> Callable[[], None]:
    """For the child, before exec: SIGTERM it when the thread that started it dies (the
    runner starts Ray from its main thread: when the task's process dies, even by SIGKILL).
    libc is looked up here, in the parent: loading a library in a forked child can deadlock."""
    prctl, parent, PR_SET_PDEATHSIG = ctypes.CDLL(None, use_errno=True).prctl, os.getpid(), 1

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return arm


# The leader of our Ray's process group: it runs `ray start --block` and, on SIGTERM (ours, or
# the kernel's when our process dies) or when `ray start` ends, SIGKILLs the whole group.
# Ray's own fate sharing is not enough: with `ray start` SIGKILLed, its GCS and raylet die but
# the raylet's agents (ray::DashboardAgent, ray::RuntimeEnvAgent) live on as orphans (seen with
# Ray 2.60). And `ray start` drains for up to 30 s on SIGTERM, for nothing a finished shard needs.
GROUP_GUARD = ('trap "kill -KILL 0" TERM; "$@" & wait $!; '
               'echo "[ray] ray start exited with status $?" >&2; kill -KILL 0')


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`ray start ... --block` under GROUP_GUARD in a new session: everything Ray starts
    (GCS, raylet, agents) stays in that process group, which `_stop` or our death ends."""
    return subprocess.Popen(["bash", "-c", GROUP_GUARD, "srlm-ray-guard", *args], env=env, start_new_session=True,
                            preexec_fn=_term_with_parent())


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """TERM our group (the guard then KILLs it), KILL it ourselves if that took too long."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of our group is left
    proc.wait()


@contextlib.contextmanager
def ray_head(address: str, n_nodes: int, token_path: Path, job_id: str, timeout_s: float = 600,
             count_nodes: Callable[[str], int] = alive_nodes, poll_s: float = 2) -> Iterator[str]:
    """Start the head here, wait for `n_nodes` nodes, yield with RAY_ADDRESS set; stop it after."""
    env = {**ray_env(write_token(token_path)), **ray_ports(job_id).head_env()}
    proc = _start(head_command(address, job_id), env)
    keys = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(RAY_ADDRESS=address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    try:
        deadline = time.monotonic() + timeout_s
        while (seen := count_nodes(address)) < n_nodes:
            if proc.poll() is not None:
                raise RuntimeError(f"ray head {address}: `ray start --head` exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray head {address}: {seen} of {n_nodes} nodes joined within {timeout_s:.0f}s")
            time.sleep(poll_s)
        print(f"[ray] head {address}: {n_nodes} nodes up", flush=True)
        yield address
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _stop(proc)
        shutil.rmtree(job_temp_dir(job_id), ignore_errors=True)


def ray_worker(address: str, shard_finished: Callable[[], bool], token_path: Path, job_id: str,
               poll_s: float = 5, join_timeout_s: float = 600, head_lost_after: int = 3,
               head_up: Callable[[str], bool] = head_reachable) -> None:
    """Join the head (retrying while it starts), then lend this node until the shard is
    finished or rank 0 is gone (`shard_finished` says both), or the head is: its port
    refused `head_lost_after` checks in a row, `poll_s` apart. A SIGKILLed rank 0 takes its
    head with it, so a follower leaves within about head_lost_after * poll_s."""
    proc = _join(address, shard_finished, token_path, job_id, poll_s, join_timeout_s, head_up)
    if proc is None:
        return
    try:
        _lend_node(proc, address, shard_finished, poll_s, head_lost_after, head_up)
    finally:
        _stop(proc)
        shutil.rmtree(job_temp_dir(job_id), ignore_errors=True)


def _join(address: str, shard_finished: Callable[[], bool], token_path: Path, job_id: str, poll_s: float,
          join_timeout_s: float, head_up: Callable[[str], bool]) -> subprocess.Popen | None:
    """Our `ray start` once it stays up, or None when the shard finished before we joined."""
    deadline = time.monotonic() + join_timeout_s
    while not shard_finished():
        if token_path.exists() and head_up(address):
            proc = _start(worker_command(address, job_id), ray_env(token_path))
            try:
                time.sleep(poll_s)
            except BaseException:  # stopped while joining: leave no Ray behind
                _stop(proc)
                raise
            if proc.poll() is None:
                return proc  # joined, and stays up
            _stop(proc)  # what a failed `ray start` may have left in its group
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not join ray head {address} within {join_timeout_s:.0f}s")
        time.sleep(poll_s)
    return None


def _lend_node(proc: subprocess.Popen, address: str, shard_finished: Callable[[], bool], poll_s: float,
               head_lost_after: int, head_up: Callable[[str], bool]) -> None:
    misses = 0
    while not shard_finished():
        if proc.poll() is not None:
            print(f"[ray] this node's ray (head {address}) stopped; leaving", flush=True)
            return
        misses = 0 if head_up(address) else misses + 1
        if misses >= head_lost_after:  # rank 0 died and its head with it: nothing to lend a node to
            print(f"[ray] head {address} refused {misses} checks {poll_s:g}s apart; it is gone, leaving", flush=True)
            return
        time.sleep(poll_s)
