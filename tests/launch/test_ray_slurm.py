"""The Ray bootstrap of a multi-node vLLM task, against a stand-in `ray` command.

Ray and several GPU nodes are not available here; the stand-in records each command, its
auth settings and the token file's mode, and with --block stays up until stopped, as `ray
start --block` does. What the real cluster must show is in README.md (cluster smoke test)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from srlm_hpc import slurm_env
from srlm_hpc.launch import ray_slurm


@pytest.fixture
def fake_ray(tmp_path, monkeypatch) -> Path:
    """A `ray` on PATH that logs its arguments and auth env; `ray start --address` fails twice
    first (the head is still starting); with --block it waits to be stopped."""
    log = tmp_path / "ray.log"
    script = tmp_path / "bin" / "ray"
    script.parent.mkdir()
    script.write_text(f"""#!/usr/bin/env bash
mode=$(stat -c %a "$RAY_AUTH_TOKEN_PATH" 2>/dev/null)
echo "$* | $RAY_AUTH_MODE $mode" >> {log}
if [[ "$2" == --address=* ]]; then
    n=$(grep -c -- '--address=' {log})
    (( n > 2 )) || exit 1
fi
[[ " $* " == *" --block "* ]] && exec sleep 600
exit 0
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


def sleeping_ray_elsewhere() -> subprocess.Popen:
    """Another task's Ray process on the same node: must survive our stop."""
    return subprocess.Popen(["bash", "-c", "exec -a ray-other sleep 600"], start_new_session=True)


def test_head_is_the_jobs_own_and_stops_only_what_it_started(fake_ray, tmp_path):
    other = sleeping_ray_elsewhere()
    token = tmp_path / "ray" / "812" / "auth_token"
    joined = iter([1, 1, 2, 3])
    try:
        with ray_slurm.ray_head("node1:20123", n_nodes=3, token_path=token, job_id="812",
                                count_nodes=lambda a: next(joined)) as addr:
            assert os.environ["RAY_ADDRESS"] == addr == "node1:20123"
            assert os.environ["RAY_AUTH_MODE"] == "token"
            assert len(token.read_text()) == 64 and stat.S_IMODE(token.stat().st_mode) == 0o600
        assert "RAY_ADDRESS" not in os.environ and "RAY_AUTH_MODE" not in os.environ
        time.sleep(0.2)
        assert other.poll() is None  # another task's Ray lives on
    finally:
        other.kill()
    (line,) = fake_ray.read_text().splitlines()
    assert line == ("start --head --port=20123 --disable-usage-stats --include-dashboard=false "
                    "--temp-dir=/tmp/srlm-ray-812 --block | token 600")
    assert "stop" not in fake_ray.read_text()  # no `ray stop --force`: it kills every Ray of the node


def test_head_gives_up_when_nodes_do_not_join(fake_ray, tmp_path):
    with pytest.raises(TimeoutError, match="1 of 2 nodes joined"):
        with ray_slurm.ray_head("node1:20123", n_nodes=2, token_path=tmp_path / "t", job_id="9", timeout_s=0,
                                count_nodes=lambda a: 1):
            pass
    out = subprocess.run(["pgrep", "-f", "srlm-ray-9"], capture_output=True, text=True).stdout
    assert out == ""  # never leaves a head running


def test_worker_retries_join_then_waits_for_the_shard(fake_ray, tmp_path):
    token = ray_slurm.write_token(tmp_path / "t")
    polls = iter([False, False, False, False, False, True])
    ray_slurm.ray_worker("node1:20123", shard_finished=lambda: next(polls), token_path=token, job_id="9",
                         poll_s=0.5)  # a failed join has exited by then, even on a loaded machine
    lines = fake_ray.read_text().splitlines()
    assert lines == ["start --address=node1:20123 --disable-usage-stats --temp-dir=/tmp/srlm-ray-9 --block | "
                     "token 600"] * 3
    assert subprocess.run(["pgrep", "-f", "srlm-ray-9"], capture_output=True).stdout == b""


def test_a_follower_leaves_when_rank0_stops_beating(tmp_path, monkeypatch):
    from srlm_hpc.manifest import StageManifest
    from srlm_hpc.runner import rank0_finished

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    man = StageManifest(tmp_path / "m", 1, "responses")
    man.claim(0, "rank0")  # rank 0 of job 77 runs the shard
    finished = rank0_finished(man, 0, liveness=0.3)
    assert not finished()
    man.heartbeat(0, "rank0")
    assert not finished()
    time.sleep(0.5)  # rank 0 was SIGKILLed: no beat since
    assert finished()


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="pip install 'ray"):
        ray_slurm.ray_command()
