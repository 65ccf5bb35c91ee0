"""What a process learns from the environment srun gives it: its rank among the tasks of its
job step, the job's first node, and a port every task of the job agrees on. DeepSpeed's
rendezvous (training/distributed.py) uses `slurm_port`; the Ray of a multi-node vLLM task
takes a band of 200 ports in the same range from its job id (launch/ray_slurm.ray_ports).
"""

from __future__ import annotations

import os
from typing import Mapping

# Below Linux's ephemeral range (32768-60999), so an outgoing connection never holds it.
SLURM_BASE_PORT, SLURM_PORT_SPAN = 10000, 20000


def task_rank(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, number of tasks) of this process within its srun step; (0, 1) outside Slurm.
    A stage task spans several processes for DeepSpeed ranks or vLLM's Ray nodes."""
    env = os.environ if env is None else env
    return int(env.get("SLURM_PROCID", 0)), int(env.get("SLURM_NTASKS", 1))


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: `gpu[007-009,011],cpu01` -> `gpu007`. Parsed here
    (the first host needs no full expansion) so it works wherever the task runs, with or
    without `scontrol`; tests/test_slurm_env.py checks it against `scontrol show hostnames`."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    first = nodelist[:end]
    while "[" in first:  # one bracket group after another, e.g. rack[1-2]-gpu[3-4]
        head, rest = first.split("[", 1)
        inside, tail = rest.split("]", 1)
        first = head + inside.split(",")[0].split("-")[0] + tail
    return first


def slurm_port(job_id: str) -> int:
    """A port every task of a Slurm job computes alike from its job id. Each array element has
    its own SLURM_JOB_ID, so two jobs sharing a node get different ports (unless their ids
    differ by 20000*k)."""
    return SLURM_BASE_PORT + int(job_id) % SLURM_PORT_SPAN
