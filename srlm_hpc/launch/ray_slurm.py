"""A Ray cluster inside one Slurm array task, for vLLM's pipeline parallelism across nodes.

vLLM spans nodes only through Ray. An array task of a generation stage with
`vllm.pipeline_parallel_size = P` holds P nodes, one task per node (launch/resources.py);
srun starts the worker on each. Task 0 starts the Ray head on its node, waits until all P
nodes have joined, and runs the shard with RAY_ADDRESS set, so `vllm.LLM(...,
distributed_executor_backend="ray")` finds the cluster. Every other task joins the head as a
Ray worker node and waits until the shard is no longer running (done, failed or requeued)
or rank 0 is dead (its heartbeat stopped), then leaves.

Ray's ports are reachable by every user of the cluster, so this Ray is the job's own:
- token authentication (RAY_AUTH_MODE=token, Ray >= 2.52): a random token, written 0600 by
  task 0 into the job's folder on the shared filesystem, read by the other tasks;
- a temp dir of its own per job and node (/tmp/srlm-ray-<job id>), so sessions, sockets
  and logs of two jobs on one node never mix;
- the head's port from the job id (slurm_env.slurm_port), no dashboard;
- `ray start --block` runs as our child in a process group of its own: leaving stops that
  group, the processes this task started, never another task's (`ray stop` would).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

from ..slurm_env import first_host, slurm_port


def head_address(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return f"{first_host(env['SLURM_JOB_NODELIST'])}:{slurm_port(env['SLURM_JOB_ID'])}"


def ray_command() -> str:
    ray = shutil.which("ray")
    if ray is None:
        raise RuntimeError("vllm.pipeline_parallel_size > 1 spans nodes through Ray, but the `ray` command is "
                           "not installed here: pip install 'ray[default]' (the gpu extra brings it)")
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
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def alive_nodes(address: str) -> int:
    import ray

    ray.init(address=address, ignore_reinit_error=True, logging_level="ERROR")
    try:
        return sum(1 for n in ray.nodes() if n.get("Alive"))
    finally:
        ray.shutdown()


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`ray start ... --block` as the leader of a new process group: everything it starts
    (GCS, raylet, workers) stays in that group, which `_stop` ends."""
    return subprocess.Popen(args, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def ray_head(address: str, n_nodes: int, token_path: Path, job_id: str, timeout_s: float = 600,
             count_nodes: Callable[[str], int] = alive_nodes) -> Iterator[str]:
    """Start the head here, wait for `n_nodes` nodes, yield with RAY_ADDRESS set; stop it after."""
    port = address.rsplit(":", 1)[1]
    env = ray_env(write_token(token_path))
    proc = _start([ray_command(), "start", "--head", f"--port={port}", "--disable-usage-stats",
                   "--include-dashboard=false", f"--temp-dir={job_temp_dir(job_id)}", "--block"], env)
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    os.environ.update(RAY_ADDRESS=address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    try:
        deadline = time.monotonic() + timeout_s
        while (seen := count_nodes(address)) < n_nodes:
            if proc.poll() is not None:
                raise RuntimeError(f"ray head {address}: `ray start --head` exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray head {address}: {seen} of {n_nodes} nodes joined within {timeout_s:.0f}s")
            time.sleep(2)
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
               poll_s: float = 5, join_timeout_s: float = 600) -> None:
    """Join the head (retrying while it starts), then wait until the shard is finished or
    rank 0 is gone (`shard_finished` says both)."""
    deadline = time.monotonic() + join_timeout_s
    while True:
        if shard_finished():
            return
        if token_path.exists():
            proc = _start([ray_command(), "start", f"--address={address}", "--disable-usage-stats",
                           f"--temp-dir={job_temp_dir(job_id)}", "--block"], ray_env(token_path))
            time.sleep(poll_s)
            if proc.poll() is None:
                break  # joined, and stays up
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not join ray head {address} within {join_timeout_s:.0f}s")
        time.sleep(poll_s)
    try:
        while not shard_finished():
            if proc.poll() is not None:  # the head went away (rank 0 died): nothing to lend a node to
                print(f"[ray] head {address} is gone; leaving", flush=True)
                return
            time.sleep(poll_s)
    finally:
        _stop(proc)
        shutil.rmtree(job_temp_dir(job_id), ignore_errors=True)
