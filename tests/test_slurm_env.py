"""slurm_env: a task's rank, its job's first node, and the job's port."""

from __future__ import annotations

import pytest

from srlm_hpc import slurm_env
from srlm_hpc.slurm_env import task_rank


def test_task_rank_reads_srun_environment():
    assert task_rank({}) == (0, 1)
    assert task_rank({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}) == (3, 8)


@pytest.mark.parametrize("nodelist, first", [("gpu[007-009,011]", "gpu007"), ("n1,n2", "n1"), ("solo", "solo"),
                                             ("rack[2-3]-gpu[05,09],cpu1", "rack2-gpu05")])
def test_first_host_of_a_nodelist(nodelist, first):
    assert slurm_env.first_host(nodelist) == first


def test_first_host_agrees_with_scontrol(slurm):
    for nodelist in ("gpu[007-009,011]", "x[01,3-4],y", "rack[2-3]-gpu[05,09],cpu1"):
        out = slurm.run(["scontrol", "show", "hostnames", nodelist]).stdout.split()
        assert slurm_env.first_host(nodelist) == out[0]
