"""The Ray bootstrap of a multi-node vLLM task (launch/ray_slurm.py).

Two kinds of tests:
- the commands, the token and the leaving rules, against a stand-in `ray` that records each
  command, its auth settings and the token file's mode, and with --block stays up until
  stopped, as `ray start --block` does;
- the real Ray (CPU, the test extra installs it) on this one node: two jobs' heads at once,
  each on its own ports and temp dir, a client without the token refused, stopping one job
  leaving the other, and a SIGKILLed rank 0 whose follower leaves and whose Ray goes with
  it. A second "node" of a job is a second Ray on this machine, so the follower stand-in
  gets a job id of its own (its own ports and temp dir), as a second machine would not need.

Only the ports the minimal `ray` install opens are seen listening here; ray[default] adds the
dashboard agent's, the metrics export and the API server's, all set by the same flags.
A real Ray process is found through its job's temp dir (see Seen) and killed in a finalizer,
even when a test fails. The file takes about a minute: Ray starts in ~10 s on 2 cores.

    .venv/bin/python -m pytest tests/launch/test_ray_slurm.py -q"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # accelerate requires it
import pytest

from srlm_hpc.launch import ray_slurm

# ---------------------------------------------------------------- the stand-in `ray`


@pytest.fixture
def fake_ray(tmp_path, monkeypatch) -> Path:
    """A `ray` in place of the real one that logs its arguments and auth env; `ray start
    --address` fails twice first (the head is still starting); with --block it waits to be
    stopped."""
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
[[ -n "$AUTOSCALER_METRIC_PORT$DASHBOARD_METRIC_PORT" ]] && echo "env $AUTOSCALER_METRIC_PORT $DASHBOARD_METRIC_PORT" >> {log}
# named after its arguments, so a leaked one shows in `pgrep -f srlm-ray-<job>`
[[ " $* " == *" --block "* ]] && exec -a "ray $*" sleep 600
exit 0
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(ray_slurm, "ray_command", lambda: str(script))
    return log


# Job 812 is band 12: 10000 + 12 * 200 (golden numbers: a change of layout shows here).
NODE_FLAGS_812 = ("--node-manager-port=12403 --object-manager-port=12404 --dashboard-agent-listen-port=12405 "
                  "--dashboard-agent-grpc-port=12406 --runtime-env-agent-port=12407 --metrics-export-port=12408 "
                  "--min-worker-port=12412 --max-worker-port=12599")


def test_head_address_uses_first_host_and_job_port():
    env = {"SLURM_JOB_ID": "812", "SLURM_ARRAY_JOB_ID": "800", "SLURM_ARRAY_TASK_ID": "12",
           "SLURM_JOB_NODELIST": "gpu[007-009,011]"}
    assert ray_slurm.head_address(env) == "gpu007:12400"
    # every array element has its own SLURM_JOB_ID: two tasks on one node get two ports
    assert ray_slurm.head_address(dict(env, SLURM_JOB_ID="813")) == "gpu007:12600"


def band(job: str) -> set[int]:
    p = ray_slurm.ray_ports(job)
    return {p.gcs, p.client_server, p.dashboard, p.node_manager, p.object_manager, p.dashboard_agent_http,
            p.dashboard_agent_grpc, p.runtime_env_agent, p.metrics_export, p.autoscaler_metrics, p.dashboard_metrics,
            *range(p.min_worker, p.max_worker + 1)}


def test_every_port_of_a_jobs_ray_is_in_a_band_of_its_own():
    ports = ray_slurm.ray_ports("812")
    mine = band("812")
    assert len(mine) == 11 + 188  # 11 services and 188 worker ports, none shared (offset 11 is spare)
    assert min(mine) == ports.gcs and max(mine) == ports.gcs + ray_slurm.RAY_PORT_BAND - 1
    assert max(mine) < 32768  # below the ephemeral range: no outgoing connection holds one
    # neighbours (consecutive array elements) and ids far apart never share a port
    for other in ("811", "813", "899", "5"):
        assert mine.isdisjoint(band(other)), other
    assert band("912") == mine  # ids equal modulo 100 bands share one, as the module says
    # Ray's own fixed defaults are not used
    assert {6379, 8265, 10001, 52365, 44217, 44227}.isdisjoint(mine)
    assert ray_slurm.ray_ports("local-4242") == ray_slurm.ray_ports("local-4242")  # a stable band off Slurm too


def sleeping_ray_elsewhere() -> subprocess.Popen:
    """Another task's Ray process on the same node: must survive our stop."""
    return subprocess.Popen(["bash", "-c", "exec -a ray-other sleep 600"], start_new_session=True)


def test_head_is_the_jobs_own_and_stops_only_what_it_started(fake_ray, tmp_path):
    other = sleeping_ray_elsewhere()
    token = tmp_path / "ray" / "812" / "auth_token"
    joined = iter([1, 1, 2, 3])
    try:
        with ray_slurm.ray_head("node1:12400", n_nodes=3, token_path=token, job_id="812",
                                count_nodes=lambda a: next(joined), poll_s=0.1) as addr:
            assert os.environ["RAY_ADDRESS"] == addr == "node1:12400"
            assert os.environ["RAY_AUTH_MODE"] == "token"
            assert len(token.read_text()) == 64 and stat.S_IMODE(token.stat().st_mode) == 0o600
        assert "RAY_ADDRESS" not in os.environ and "RAY_AUTH_MODE" not in os.environ
        time.sleep(0.2)
        assert other.poll() is None  # another task's Ray lives on
    finally:
        other.kill()
    line, env = fake_ray.read_text().splitlines()
    client = " --ray-client-server-port=12401" if _has_grpc() else ""
    assert line == (f"start --head --port=12400{client} --dashboard-port=12402 {NODE_FLAGS_812} "
                    "--disable-usage-stats --include-dashboard=false --temp-dir=/tmp/srlm-ray-812 --block | token 600")
    assert env == "env 12409 12410"  # the monitor's and the API server's metrics ports
    assert "stop" not in fake_ray.read_text()  # no `ray stop --force`: it kills every Ray of the node


def _has_grpc() -> bool:
    import importlib.util

    return importlib.util.find_spec("grpc") is not None


def test_head_gives_up_when_nodes_do_not_join(fake_ray, tmp_path):
    with pytest.raises(TimeoutError, match="1 of 2 nodes joined"):
        with ray_slurm.ray_head("node1:20123", n_nodes=2, token_path=tmp_path / "t", job_id="9", timeout_s=0,
                                count_nodes=lambda a: 1):
            pass
    out = subprocess.run(["pgrep", "-f", "srlm-ray-9 "], capture_output=True, text=True).stdout
    assert out == ""  # never leaves a head running


def test_worker_waits_for_the_head_retries_join_then_waits_for_the_shard(fake_ray, tmp_path):
    token = ray_slurm.write_token(tmp_path / "t")
    answers = iter([False] + [True] * 20)  # no `ray start` before the head's port answers
    polls = iter([False] * 5 + [True])
    # joined = still up after poll_s; a failed stand-in exits in ~50 ms, 1 s is room for a loaded machine
    ray_slurm.ray_worker("node1:12400", shard_finished=lambda: next(polls), token_path=token, job_id="812",
                         poll_s=1.0, head_up=lambda a: next(answers))
    lines = fake_ray.read_text().splitlines()
    assert lines == [f"start --address=node1:12400 {NODE_FLAGS_812} --disable-usage-stats "
                     "--temp-dir=/tmp/srlm-ray-812 --block | token 600"] * 3
    assert next(polls, "all used") == "all used"
    assert subprocess.run(["pgrep", "-f", "srlm-ray-812 "], capture_output=True).stdout == b""


def test_a_follower_leaves_when_the_head_stops_answering(fake_ray, tmp_path):
    token = ray_slurm.write_token(tmp_path / "t")
    fake_ray.write_text("--address=\n--address=\n")  # the stand-in joins at once
    answers = iter([True, True, True, False, True, False, False, False])
    ray_slurm.ray_worker("node1:12400", shard_finished=lambda: False, token_path=token, job_id="812",
                         poll_s=0.1, head_up=lambda a: next(answers))
    # a miss followed by an answer starts the count again: it left on the third miss in a row
    assert next(answers, "all used") == "all used"
    assert subprocess.run(["pgrep", "-f", "srlm-ray-812 "], capture_output=True).stdout == b""


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


def test_ray_is_the_one_beside_this_python_first(monkeypatch, tmp_path):
    # a Slurm task runs .venv/bin/python without the venv on PATH
    beside = Path(sys.executable).with_name("ray")
    assert beside.exists()  # the test extra installs Ray
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ray_slurm.ray_command() == str(beside)


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(RuntimeError, match="pip install 'ray"):
        ray_slurm.ray_command()


# ---------------------------------------------------------------- the real Ray on this node

# Job ids of the same length (none a prefix of another's temp dir) in bands 41-44.
JOB_A, JOB_B, JOB_C, JOB_D = "99041", "99042", "99043", "99044"
HOST = socket.gethostname()

# Rank 0 of a task: the head, held until a file says stop (the shard is done: the runner
# leaves its `with ray_head`), or SIGTERM (Slurm's preemption: its handler, set before Ray
# came, leaves the same way), or SIGKILL (which ends nothing: the kernel has to).
RANK0 = """
import signal, sys, time
from pathlib import Path
from srlm_hpc.launch import ray_slurm
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
address, n_nodes, token, job, up = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
with ray_slurm.ray_head(address, n_nodes, token, job, timeout_s=240, poll_s=0.5):
    up.write_text("up")
    while not up.with_suffix(".stop").exists():
        time.sleep(0.2)
"""


@dataclass
class Seen:
    """What marks a job's Ray processes, as seen while it ran: the process groups of those
    naming its temp dir (the guard, `ray start`, GCS, raylet; the agents rename themselves
    but stay in the group), and its raylets' pids (core workers, ray::IDLE and the like, get
    groups of their own but carry RAY_RAYLET_PID)."""
    groups: set[int] = field(default_factory=set)
    raylets: set[str] = field(default_factory=set)

    def look(self, job: str) -> "Seen":
        pattern = re.compile(re.escape(ray_slurm.job_temp_dir(job)) + r"(/|\s|$)")
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                if pattern.search(" ".join(p.info["cmdline"] or [])):
                    self.groups.add(os.getpgid(p.pid))
                    if p.info["name"] == "raylet":
                        self.raylets.add(str(p.pid))
        self.groups.discard(os.getpgrp())  # never this test's own
        return self


def job_processes(job: str, seen: Seen | None = None, workers: bool = True) -> list[psutil.Process]:
    """The job's live processes on this node (zombies are dead: reaping them is init's job)."""
    now = Seen().look(job)
    groups, raylets = now.groups | (seen.groups if seen else set()), now.raylets | (seen.raylets if seen else set())
    found = []
    for p in psutil.process_iter(["pid", "status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(p.pid) in groups or (workers and p.environ().get("RAY_RAYLET_PID") in raylets):
                found.append(p)
    return found


def kill_job(job: str, seen: Seen | None = None) -> None:
    """Every process of the job's Ray and the groups they are in, then its temp dir."""
    seen = (seen or Seen()).look(job)
    procs = job_processes(job, seen)
    for g in seen.groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)
    shutil.rmtree(ray_slurm.job_temp_dir(job), ignore_errors=True)


def wait_gone(job: str, seen: Seen | None = None, timeout_s: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (left := job_processes(job, seen)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


class Rank0:
    """A rank-0 process holding the job's head, started in its own session."""

    def __init__(self, job: str, n_nodes: int, token: Path, workdir: Path):
        self.job, self.token = job, token
        self.address = f"{HOST}:{ray_slurm.ray_ports(job).gcs}"
        self.marker, self.log = workdir / f"up-{job}", workdir / f"rank0-{job}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", RANK0, self.address, str(n_nodes), str(token), job,
                                          str(self.marker)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_up(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.marker.exists():
            assert self.proc.poll() is None, f"rank 0 of {self.job} exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"rank 0 of {self.job} not up:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.3)

    def stop(self) -> int:
        self.marker.with_suffix(".stop").write_text("done")
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def real_ray_cleanup():
    """Register Rank0s, job ids and what was seen of them; all of it dies at the end, pass or fail."""
    started: list[Rank0] = []
    jobs: set[str] = set()
    seen = Seen()
    yield started, jobs, seen
    for r in started:
        r.kill()
    for job in jobs | {r.job for r in started}:
        kill_job(job, seen)


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    """Two jobs' heads on this node at once, each held by its own rank 0."""
    work = tmp_path_factory.mktemp("two_heads")
    heads = [Rank0(job, 1, work / "ray" / job / "auth_token", work) for job in (JOB_A, JOB_B)]
    try:
        for h in heads:
            h.wait_up()
        yield heads
    finally:
        for h in heads:
            seen = Seen().look(h.job)  # its raylet's workers, before the raylet goes
            h.kill()
            kill_job(h.job, seen)


def listening_ports(procs) -> set[int]:
    ports = set()
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            ports |= {c.laddr.port for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    return ports


def services_up(job: str, timeout_s: float = 60) -> set[int]:
    """The job's listening ports once the services this install runs all listen (the agents
    and the monitor come up after `ray start` reports the node; ray[default] adds more)."""
    import importlib.util

    p = ray_slurm.ray_ports(job)
    expected = {p.gcs, p.node_manager, p.object_manager, p.runtime_env_agent}
    expected |= {p.client_server} if _has_grpc() else set()
    expected |= {p.autoscaler_metrics} if importlib.util.find_spec("prometheus_client") else set()
    deadline = time.monotonic() + timeout_s
    while not expected <= (ports := listening_ports(job_processes(job))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert expected <= ports, f"job {job}: not listening on {sorted(expected - ports)}"
    return ports


def test_two_jobs_on_one_node_each_run_their_own_ray(two_heads):
    seen = {}
    for head in two_heads:
        ports = services_up(head.job)
        assert ports <= band(head.job), f"job {head.job} listens outside its band: {sorted(ports - band(head.job))}"
        procs = job_processes(head.job)
        assert {"gcs_server", "raylet"} <= {p.name() for p in procs}
        temp = Path(ray_slurm.job_temp_dir(head.job))
        assert any(temp.glob("session_*")), f"no session under {temp}"
        assert stat.S_IMODE(head.token.stat().st_mode) == 0o600
        seen[head.job] = {pr.pid for pr in procs}
    assert seen[JOB_A].isdisjoint(seen[JOB_B])


def connect(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print('nodes', len([n for n in ray.nodes() if n['Alive']]), flush=True)" % address)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_a_client_without_the_token_is_refused(two_heads, tmp_path):
    head = two_heads[1]
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    bare["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    # ray.init asks the GCS 20 times, 1 s apart, before it gives up; 2 show the refusal
    refused_fast = {**bare, "RAY_NUM_REDIS_GET_RETRIES": "2"}
    for env in (refused_fast, {**refused_fast, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        out = connect(head.address, env)
        assert out.returncode != 0 and "nodes" not in out.stdout, out.stdout + out.stderr[-2000:]
        assert "InvalidAuthToken" in out.stderr, out.stderr[-2000:]  # the GCS said no, not the network
    # the same call with the job's token file gets in: the refusals above are the token's doing
    ok = connect(head.address, {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(head.token)})
    assert ok.returncode == 0 and "nodes 1" in ok.stdout, ok.stderr[-2000:]


def test_stopping_one_job_leaves_the_other_running(two_heads):
    a, b = two_heads
    a_seen = Seen().look(a.job)
    b_procs = job_processes(b.job, workers=False)  # its workers may retire when idle: not these
    assert a_seen.groups and a_seen.raylets and b_procs
    a.proc.send_signal(signal.SIGTERM)  # rank 0 of A is preempted: its handler leaves `with ray_head`
    assert a.proc.wait(timeout=60) == 0, a.log.read_text()[-2000:]  # not killed by Ray's own SIGTERM handler
    assert wait_gone(a.job, a_seen) == []
    assert not Path(ray_slurm.job_temp_dir(a.job)).exists()
    assert all(p.is_running() for p in b_procs), [p.pid for p in b_procs if not p.is_running()]
    assert ray_slurm.head_reachable(b.address)
    b_seen = Seen().look(b.job)
    assert b.stop() == 0  # B's shard is done: rank 0 leaves `with ray_head` the ordinary way
    assert wait_gone(b.job, b_seen) == []
    assert not Path(ray_slurm.job_temp_dir(b.job)).exists()


def test_a_follower_leaves_when_rank0_is_sigkilled_and_nothing_of_the_job_is_left(real_ray_cleanup, tmp_path):
    started, jobs, seen = real_ray_cleanup
    jobs.add(JOB_D)
    token = tmp_path / "ray" / JOB_C / "auth_token"
    rank0 = Rank0(JOB_C, 2, token, tmp_path)  # up once the follower joined
    started.append(rank0)
    killed = threading.Event()

    def kill_rank0_once_up() -> None:
        try:
            rank0.wait_up()
            seen.look(JOB_C).look(JOB_D)  # to find what outlives them
            os.kill(rank0.proc.pid, signal.SIGKILL)  # rank 0 alone: its Ray must go with it
        finally:
            killed.set()

    threading.Thread(target=kill_rank0_once_up, daemon=True).start()
    t0 = time.monotonic()
    gave_up = []

    def never_finished() -> bool:  # the shard never ends: only the head's death lets it go
        if time.monotonic() - t0 > 240:
            gave_up.append(True)  # safety valve so a regression fails instead of hanging
            return True
        return False

    ray_slurm.ray_worker(rank0.address, shard_finished=never_finished, token_path=token, job_id=JOB_D,
                         poll_s=0.5, join_timeout_s=180)
    assert killed.wait(timeout=10) and rank0.proc.wait(timeout=10) == -signal.SIGKILL, rank0.log.read_text()[-3000:]
    assert not gave_up, "the follower stayed although rank 0 and its head were dead"
    assert len(seen.groups) >= 2 and len(seen.raylets) == 2  # the head's and the follower's
    left = wait_gone(JOB_C, seen) + wait_gone(JOB_D, seen)
    assert left == [], f"the job's Ray outlived rank 0: {[(p.pid, p.name()) for p in left]}"
    assert not Path(ray_slurm.job_temp_dir(JOB_D)).exists()
