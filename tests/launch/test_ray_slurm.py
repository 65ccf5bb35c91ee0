"""The Ray bootstrap of a multi-node vLLM task, against a stand-in `ray` command.

Ray and several GPU nodes are not available here; the stand-in records the commands the
bootstrap runs and fails the first joins, as a worker node does while the head starts.
What the real cluster must show is in README.md (cluster smoke test)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from srlm_hpc import slurm_env
from srlm_hpc.launch import ray_slurm


@pytest.fixture
def fake_ray(tmp_path, monkeypatch) -> Path:
    """A `ray` on PATH that logs its arguments; `ray start --address` fails twice first."""
    log = tmp_path / "ray.log"
    script = tmp_path / "bin" / "ray"
    script.parent.mkdir()
    script.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
if [[ "$1 $2" == start\\ --address=* ]]; then
    n=$(grep -c -- '--address=' {log})
    (( n > 2 )) || exit 1
fi
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    return log


def test_head_address_uses_first_host_and_job_port():
    env = {"SLURM_JOB_ID": "812", "SLURM_ARRAY_JOB_ID": "800", "SLURM_ARRAY_TASK_ID": "12",
           "SLURM_JOB_NODELIST": "gpu[007-009,011]"}
    assert ray_slurm.head_address(env) == f"gpu007:{slurm_env.slurm_port('812')}"
    # every array element has its own SLURM_JOB_ID: two tasks on one node get two ports
    assert ray_slurm.head_address(dict(env, SLURM_JOB_ID="813")) != ray_slurm.head_address(env)


def test_head_waits_for_every_node_then_stops(fake_ray):
    joined = iter([1, 1, 2, 3])
    with ray_slurm.ray_head("node1:20123", n_nodes=3, count_nodes=lambda a: next(joined)) as addr:
        assert os.environ["RAY_ADDRESS"] == addr == "node1:20123"
    assert "RAY_ADDRESS" not in os.environ
    assert fake_ray.read_text().splitlines() == ["start --head --port=20123 --disable-usage-stats", "stop --force"]


def test_head_gives_up_when_nodes_do_not_join(fake_ray):
    with pytest.raises(TimeoutError, match="1 of 2 nodes joined"):
        with ray_slurm.ray_head("node1:20123", n_nodes=2, timeout_s=0, count_nodes=lambda a: 1):
            pass
    assert fake_ray.read_text().splitlines()[-1] == "stop --force"  # never leaves a head running


def test_worker_retries_join_then_waits_for_the_shard(fake_ray):
    polls = iter([False, False, False, False, True])
    ray_slurm.ray_worker("node1:20123", shard_finished=lambda: next(polls), poll_s=0)
    lines = fake_ray.read_text().splitlines()
    assert lines == ["start --address=node1:20123 --disable-usage-stats"] * 3 + ["stop --force"]


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="pip install 'ray"):
        ray_slurm.ray_command()
