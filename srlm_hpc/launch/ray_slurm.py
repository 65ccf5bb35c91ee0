"""A Ray cluster inside one Slurm array task, for vLLM's pipeline parallelism across nodes.

vLLM spans nodes only through Ray. An array task of a generation stage with
`vllm.pipeline_parallel_size = P` holds P nodes, one task per node (launch/resources.py);
srun starts the worker on each. Task 0 starts the Ray head on its node, waits until all P
nodes have joined, and runs the shard with RAY_ADDRESS set, so `vllm.LLM(...,
distributed_executor_backend="ray")` finds the cluster. Every other task joins the head as a
Ray worker node and waits until the shard is no longer running (done, failed or requeued),
then leaves. The port comes from the job id (slurm_env.slurm_port), so two array tasks
sharing a node do not meet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
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


def alive_nodes(address: str) -> int:
    import ray

    ray.init(address=address, ignore_reinit_error=True, logging_level="ERROR")
    try:
        return sum(1 for n in ray.nodes() if n.get("Alive"))
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_head(address: str, n_nodes: int, timeout_s: float = 600,
             count_nodes: Callable[[str], int] = alive_nodes) -> Iterator[str]:
    """Start the head here, wait for `n_nodes` nodes, yield with RAY_ADDRESS set; stop it after."""
    port = address.rsplit(":", 1)[1]
    ray = ray_command()
    subprocess.run([ray, "start", "--head", f"--port={port}", "--disable-usage-stats"], check=True)
    os.environ["RAY_ADDRESS"] = address
    try:
        deadline = time.monotonic() + timeout_s
        while (seen := count_nodes(address)) < n_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray head {address}: {seen} of {n_nodes} nodes joined within {timeout_s:.0f}s")
            time.sleep(2)
        print(f"[ray] head {address}: {n_nodes} nodes up", flush=True)
        yield address
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        subprocess.run([ray, "stop", "--force"], check=False)


def ray_worker(address: str, shard_finished: Callable[[], bool], poll_s: float = 5,
               join_timeout_s: float = 600) -> None:
    """Join the head (retrying while it starts), then wait until the shard is finished."""
    ray = ray_command()
    deadline = time.monotonic() + join_timeout_s
    while subprocess.run([ray, "start", f"--address={address}", "--disable-usage-stats"]).returncode != 0:
        if shard_finished():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not join ray head {address} within {join_timeout_s:.0f}s")
        time.sleep(poll_s)
    try:
        while not shard_finished():
            time.sleep(poll_s)
    finally:
        subprocess.run([ray, "stop", "--force"], check=False)
