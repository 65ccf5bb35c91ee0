"""Faults on the real one-node Slurm: plain-sbatch preemption during SFT, two submits at once,
a submit killed while queueing, `scancel` of a running task, slurmd killed and restarted
mid-stage, slurmctld restarted while `submit wait=true` waits, a task timed out more often
than slurm.max_timeouts allows, a two-rank DeepSpeed SFT preempted.

The daemon scenarios restart the shared test cluster's own daemons the way its fixture starts
them (setup.sh start, which starts only what is missing: SlurmCluster.ensure_up) and leave the
node taking jobs for the tests that follow. Every command that runs them holds
/tmp/srlm-slurm.lock, so no other Slurm test runs meanwhile.

slurmd killed: slurmstepd outlives slurmd by design (a slurmd restart keeps jobs running), so
"the task dies with its node daemon" is a node crash: slurmd, every slurmstepd of this
cluster and their processes are stopped, then killed (SIGKILL), and slurmd is started again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.launch.slurm import queued_jobs
from srlm_hpc.manifest import StageManifest
from srlm_hpc.submit import main as submit
from tests.chaos.common import Clock, compare, leftovers, processes_naming, stray_processes, temp_files
from tests.stages.test_pipeline_e2e import e2e_args

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def sft_model(work: Path) -> dict[str, bytes]:
    d = work / "iter1" / "sft" / "model"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def test_plain_sbatch_preemption_during_sft_resumes_from_its_step(slurm, tmp_path, tiny_llama, chaos_results):
    """USR2 to the batch shell (what Slurm sends before a time limit or a preemption): the
    trap stops the worker with TERM, the worker finishes its step and saves a checkpoint,
    records a preemption, and only then is the job requeued; the requeued task resumes at
    that step and ends with the uninterrupted run's weights."""
    clock = Clock()
    local = tmp_path / "local"
    assert submit(["stage=sft", "iter=1", "executor=local", *e2e_args(local, tiny_llama)]) == 0
    want = sft_model(local / "run")

    base = tmp_path / "sbatch"
    args = ["stage=sft", "iter=1", *e2e_args(base, tiny_llama), "slurm.heartbeat_s=1"]
    config = subprocess.run([sys.executable, "-m", "srlm_hpc.worker", "--write-config", *args], check=True,
                            capture_output=True, text=True).stdout.strip()
    job = slurm.sbatch("--array=0", "--partition=low", "--cpus-per-task=1", f"--chdir={tmp_path}",
                       "--open-mode=append",  # the requeued run's log keeps the first run's lines
                       f"--export=ALL,SRLM_HOME={REPO},SRLM_PYTHON={sys.executable}",
                       str(REPO / "slurm" / "sft.sbatch"), config)
    ckpt = base / "run" / "iter1" / "sft" / "checkpoint" / "state.pt"
    slurm.wait_for(ckpt.exists, timeout=600, interval=0.2, what="SFT's first checkpoint")
    slurm.run(["scancel", "--batch", "--signal=USR2", f"{job}_0"])
    slurm.wait_final(job, timeout=900)

    man = StageManifest(build_config({"work_dir": str(base / "run")}).manifest_root, 1, "sft")
    st = man.get(0)
    log = (tmp_path / f"srlm-sft-{job}_0.out").read_text(errors="replace")
    lines = "\n".join(line for line in log.replace("\r", "\n").splitlines() if not line.startswith("sft:"))
    assert st.state == "done" and st.failures == 0 and st.attempt == 2, (st.state, st.attempt, st.history, lines)
    assert [h["state"] for h in st.history] == ["preempted"], lines  # recorded by the worker, not guessed later
    assert log.index("worker stopped; requeueing") > log.index("USR2 on")  # requeued after the worker stopped
    m = re.search(r"\[sft\] resumed from the checkpoint of step (\d+)", log)
    assert m and int(m.group(1)) >= 1, log[-3000:]
    assert sft_model(base / "run") == want
    left = leftovers(base)
    chaos_results.append({"scenario": "plain-sbatch preemption during SFT", "faults": {"sbatch USR2 during sft": 1},
                          "outputs_differing": int(sft_model(base / "run") != want), "records_lost": 0,
                          "records_duplicated": 0, "seconds": clock.seconds(), "temp_files_left": len(left),
                          "processes_left": len(stray_processes(base))})
    assert left == []


def slurm_args(work: Path) -> list[str]:
    return [f"work_dir={work}", "engine=hf", "threads=1", "seed=11", "prompts.n_prompts=8", "prompts.shard_size=4",
            "prompts.max_tokens=12", "prompts.min_words=1", "responses.shard_size=2", "responses.batch_size=1",
            "responses.max_tokens=16", "slurm.partition=low", "slurm.cpus_per_task=1", "slurm.time_min=60",
            "slurm.heartbeat_s=1"]


SHARDS = {"prompts": 2, "responses": 4}  # what slurm_args makes: 8 prompts in 4s, 2 per responses shard


def shard_files(work: Path) -> dict[str, bytes]:
    return {f"{s}/{p.name}": p.read_bytes() for s in SHARDS
            for p in sorted((work / "iter1" / s).glob("shard-*.jsonl"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama) -> dict[str, bytes]:
    """The uninterrupted run of prompts and responses, here (executor=local): every scenario of
    this module that runs slurm_args compares its outputs with these bytes."""
    local = slurm_work(tmp_path_factory.mktemp("reference"), tiny_llama)
    assert submit(["stage=prompts,responses", "executor=local", *slurm_args(local)]) == 0
    return shard_files(local)


def slurm_work(tmp_path: Path, tiny_llama: Path) -> Path:
    """A work dir whose iteration 1 starts from tiny_llama as M1 (sft is not run)."""
    work = tmp_path / "slurm"
    shutil.copytree(tiny_llama, work / "iter1" / "sft" / "model")
    return work


def submit_cmd(work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "srlm_hpc.submit", "stage=prompts,responses", "executor=slurm", *slurm_args(work),
            *extra]


def manifests(work: Path) -> dict[str, StageManifest]:
    root = build_config({"work_dir": str(work)}).manifest_root
    return {stage: StageManifest(root, 1, stage) for stage in SHARDS}


def attempts(work: Path) -> dict[str, list[int]]:
    """Each stage's shards' attempts, after asserting that every shard is done."""
    out = {}
    for stage, man in manifests(work).items():
        states = man.states(SHARDS[stage])
        assert [s.state for s in states] == ["done"] * SHARDS[stage], [(s.shard, s.state, s.error) for s in states]
        out[stage] = [s.attempt for s in states]
    return out


def running_task(work: Path, stage: str):
    """(shard, its Slurm job id) of a shard of `stage` that a task is running now, or None."""
    man = manifests(work)[stage]
    for st in man.states(SHARDS[stage]):
        if st.state == "running" and st.job_id and not st.job_id.startswith("local-"):
            return st.shard, st.job_id
    return None


def record(chaos_results, scenario: str, faults: dict, work: Path, want: dict, clock: Clock) -> dict:
    """Compare the run's outputs with the reference, count what it left, and add the row to
    bench/results/chaos.json; the test asserts on the returned row."""
    row = {"scenario": scenario, "faults": faults, **compare(shard_files(work), want), "seconds": clock.seconds(),
           "temp_files_left": len(temp_files(work)), "processes_left": len(processes_naming(work))}
    chaos_results.append(row)
    return row


def assert_clean(row: dict, work: Path) -> None:
    assert row["outputs_differing"] == 0 and row["records_lost"] == 0 and row["records_duplicated"] == 0, row
    assert temp_files(work) == []
    assert processes_naming(work) == []


def test_two_submits_at_once_queue_each_shard_once(slurm, tmp_path, tiny_llama, reference, chaos_results):
    clock = Clock()
    work = slurm_work(tmp_path, tiny_llama)
    procs = [subprocess.Popen(submit_cmd(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    slurm.wait_for(lambda: not queued_jobs(), timeout=600, interval=1, what="the queue to drain")
    assert attempts(work) == {"prompts": [1, 1], "responses": [1, 1, 1, 1]}  # each shard ran once
    # the second submit waited for the first's lock, then found every shard queued
    assert any("0 submitted" in o or "already queued" in o for o in outs), outs
    row = record(chaos_results, "two submits at once", {"concurrent submit": 1}, work, reference, clock)
    assert_clean(row, work)


@pytest.mark.chaos_full
def test_a_submit_killed_between_queueing_and_recording(slurm, tmp_path, tiny_llama, reference, chaos_results):
    """The jobs are queued but their ids never reach the manifest: the next submit queues the
    shards again. Of the two tasks of a shard, one owns it; the other finds it running (its
    owner alive) or done, and backs off."""
    clock = Clock()
    work = slurm_work(tmp_path, tiny_llama)
    killed = subprocess.run(submit_cmd(work), env={**os.environ, "SRLM_FAULT_POINT": "after-queueing"},
                            capture_output=True)
    assert killed.returncode == -9
    again = subprocess.run(submit_cmd(work, "wait=true"), capture_output=True, text=True)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    slurm.wait_for(lambda: not queued_jobs(), timeout=600, interval=1, what="the queue to drain")
    attempts(work)
    row = record(chaos_results, "submit killed while queueing", {"submit killed": 1}, work, reference, clock)
    assert_clean(row, work)


def test_scancel_of_a_running_task_is_redone_once_by_the_rerun(slurm, tmp_path, tiny_llama, reference,
                                                                chaos_results):
    """`scancel` of one array task while it runs a responses shard: the waiting submit ends 1
    (a shard is not done), and the same command again queues that shard alone, which runs a
    second time; every other shard ran once, and the bytes are the uninterrupted run's."""
    clock = Clock()
    work = slurm_work(tmp_path, tiny_llama)
    cmd = submit_cmd(work, "wait=true")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shard, job = slurm.wait_for(lambda: running_task(work, "responses"), timeout=600, interval=0.2,
                                what="a responses task running its shard")
    slurm.run(["scancel", job])
    out = first.communicate(timeout=600)[0]
    assert first.returncode == 1, out[-4000:]
    assert "error: 1 shard(s) of the requested stages are not done" in out, out[-4000:]  # wait=true says which
    assert f"iter 1 responses shard {shard:05d}" in out, out[-4000:]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "1 submitted" in again.stdout, again.stdout  # the cancelled shard alone
    want_attempts = [2 if i == shard else 1 for i in range(SHARDS["responses"])]
    assert attempts(work) == {"prompts": [1, 1], "responses": want_attempts}
    assert manifests(work)["responses"].get(shard).failures == 1  # its job vanished while running
    row = record(chaos_results, "scancel of a running task", {"scancel": 1}, work, reference, clock)
    assert_clean(row, work)


def process_tree(roots: list[int]) -> list[int]:
    """`roots` and every process below them."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def crash_node(slurm) -> int:
    """What a node crash does to its jobs: slurmd, this cluster's slurmstepd processes and every
    process below them stop at once (SIGSTOP, so none reacts), then die (SIGKILL). How many died."""
    slurmd = slurm.daemon_pid("slurmd")
    assert slurmd, "slurmd of the test cluster is not running"
    victims = process_tree([slurmd, *slurm.step_daemons()])
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in victims:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    return len(victims)


@pytest.mark.chaos_full
def test_slurmd_killed_mid_stage_then_the_rerun_finishes(slurm, tmp_path, tiny_llama, reference, chaos_results):
    """The node's slurmd dies with the tasks it runs, mid-responses (see the module docstring);
    slurmd is started again at once, as the fixture starts it. The node never goes down, so
    Slurm finds the lost batch tasks only at a later registration of the node ("missing from
    batch node ... Requeuing job": about 5 min here), requeues them, and the requeued tasks
    take over the shards of their dead owners; the waiting submit and the same command run
    again both end with every shard done, the killed ones run again, and the bytes are the
    uninterrupted run's. (Full suite only: it spends most of its ~6 min waiting for Slurm.)"""
    clock = Clock()
    work = slurm_work(tmp_path, tiny_llama)
    cmd = submit_cmd(work, "wait=true")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        shard, _ = slurm.wait_for(lambda: running_task(work, "responses"), timeout=600, interval=0.2,
                                  what="a responses task running its shard")
        assert crash_node(slurm) >= 2  # slurmd and at least the running task's slurmstepd
        assert not stage_done_now(work, "responses")
    finally:
        slurm.ensure_up()
    out = first.communicate(timeout=900)[0]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (out + again.stdout + again.stderr)[-4000:]
    done = attempts(work)
    assert done["responses"][shard] >= 2, done  # the killed shard ran again
    row = record(chaos_results, "slurmd killed and restarted mid-stage", {"slurmd_restart": 1}, work, reference,
                 clock)
    assert_clean(row, work)
    assert_node_takes_jobs(slurm)


def stage_done_now(work: Path, stage: str) -> bool:
    return all(s.state == "done" for s in manifests(work)[stage].states(SHARDS[stage]))


def assert_node_takes_jobs(slurm) -> None:
    states = slurm.run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.split()
    assert states and all(s in ("idle", "mixed", "allocated") for s in states), states


CTLD_DOWN_S = 20  # 4 of wait=true's 5 s polls: several squeue calls fail, and back off


@pytest.mark.chaos_full
def test_slurmctld_restarted_while_submit_waits(slurm, tmp_path, tiny_llama, reference, chaos_results):
    """slurmctld stopped (SIGTERM: it saves its state) for CTLD_DOWN_S while `submit wait=true`
    waits on its jobs, then started again as the fixture starts it: the submit asks again with
    a growing pause (queued_jobs_patiently), its jobs go on, and it exits 0 with the
    uninterrupted run's bytes; no shard ran twice."""
    clock = Clock()
    work = slurm_work(tmp_path, tiny_llama)
    waiting = subprocess.Popen(submit_cmd(work, "wait=true"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        slurm.wait_for(lambda: running_task(work, "prompts"), timeout=600, interval=0.2,
                       what="a prompts task running (responses queued behind it)")
        slurm.stop_daemon("slurmctld", signal.SIGTERM)
        time.sleep(CTLD_DOWN_S)
        assert waiting.poll() is None, waiting.communicate()[0][-4000:]  # still waiting, not given up
    finally:
        slurm.ensure_up()
    out = waiting.communicate(timeout=900)[0]
    assert waiting.returncode == 0, out[-4000:]
    assert "asking again" in out, out[-4000:]  # it did find the controller gone
    assert attempts(work) == {"prompts": [1, 1], "responses": [1, 1, 1, 1]}
    row = record(chaos_results, "slurmctld restarted while submit waits", {"slurmctld_restart": 1}, work,
                 reference, clock)
    assert_clean(row, work)
    assert_node_takes_jobs(slurm)


def test_a_controller_that_stays_silent_ends_the_wait_with_one_line(slurm_cluster, tmp_path, monkeypatch, capsys):
    """The other side of the slurmctld restart: a controller that never answers (here a
    slurm.conf naming a port nothing listens on, so the real squeue fails) is asked again with
    a doubling pause, then gives up with one line, a WorkFailed (exit 1 under run_main)."""
    from srlm_hpc.cli import WorkFailed
    from srlm_hpc.launch.slurm import queued_jobs_patiently

    conf = tmp_path / "slurm.conf"
    text = re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=1", slurm_cluster.conf.read_text())
    conf.write_text(re.sub(r"(?m)^MessageTimeout=.*$", "MessageTimeout=1", text))  # squeue fails at once
    monkeypatch.setenv("SLURM_CONF", str(conf))
    with pytest.raises(WorkFailed) as err:
        queued_jobs_patiently(patience_s=6, first_pause_s=0.5)
    notes = [line for line in capsys.readouterr().err.splitlines() if "asking again" in line]
    # asked at 0, 0.5, 1.5 and 3.5 s; the next pause (4 s) would end past the 6 s allowed (on a
    # loaded machine, where squeue itself takes a while, one ask fewer)
    pauses = [n.rsplit("in ", 1)[1] for n in notes]
    assert len(pauses) >= 2 and pauses == ["0.5 s", "1 s", "2 s"][:len(pauses)], notes
    assert "\n" not in str(err.value) and "for 6 s of retries" in str(err.value), str(err.value)
    assert "Unable to contact slurm controller" in str(err.value)


def sft_args(base: Path, tiny_llama: Path, *extra: str) -> list[str]:
    """SFT of iteration 1 on the tiny model, queued on the low partition with one CPU a rank."""
    return ["stage=sft", "iter=1", *e2e_args(base, tiny_llama), "slurm.partition=low", "slurm.cpus_per_task=1",
            "slurm.heartbeat_s=1", *extra]


def sft_manifest(base: Path) -> StageManifest:
    return StageManifest(build_config({"work_dir": str(base / "run")}).manifest_root, 1, "sft")


def resumed_steps(base: Path) -> list[int]:
    """The step each resumed SFT run started from, in order: "[sft] resumed from the checkpoint
    of step N" in the task logs (submitit appends every run of a task to the same file)."""
    logs = sorted(p for p in (base / "run" / "logs" / "iter1" / "sft").glob("*_log.out"))
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    return [int(n) for n in re.findall(r"\[sft\] resumed from the checkpoint of step (\d+) of", text)]


def train_log_steps(base: Path) -> list[int]:
    path = base / "run" / "iter1" / "sft" / "train_log.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def train_log(base: Path) -> list[dict]:
    """SFT's training log without the wall-clock seconds of each step."""
    path = base / "run" / "iter1" / "sft" / "train_log.jsonl"
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in path.read_text().splitlines() if line.strip()]


def array_runs(slurm, job: str) -> list[str]:
    """sacct's state of every run of a (one-task) array job, first to last, once the last has
    ended (slurmdbd lists the task of a finished array a moment after it ends)."""
    def runs():
        rows = slurm.sacct(job, "JobID,State", duplicates=True)
        states = [state.split()[0] for _, state in rows]
        return states if states and states[-1] in ("FAILED", "COMPLETED", "TIMEOUT", "CANCELLED") else None

    return slurm.wait_for(runs, timeout=120, interval=1, what=f"sacct to list the runs of job {job}")


# SFT long enough to be running still at its second time-out: 32 examples in batches of 8,
# 4 steps an epoch, 768 steps. The time-outs come 20-50 s after each start (SHORT_LIMIT), so
# two runs train at most ~95 s between them: ~290 steps here (3 steps a second on one core,
# ~150 in a typical run), room for a machine 2.5 times as fast.
TIMEOUT_SFT = ["sft.epochs=192"]
# A one-minute limit whose warning (USR2) comes 10 s before the end: slurmctld looks at time
# limits every 30 s and sends the warning once end - 10 s is less than 30 s away, so at its
# first look 20 s or more after the start, 20-50 s in. (submitit's own 90 s, more than the
# limit, would send it at the first look: 0-30 s in, at times before submitit has set its
# handler, which USR2 then kills. On a real cluster the limit is hours, the warning minutes.)
SHORT_LIMIT = ["slurm.time_min=1", "slurm.extra=signal=USR2@10"]


@pytest.mark.chaos_full
def test_a_task_timed_out_past_max_timeouts_fails_and_the_rerun_resumes_it(slurm, tmp_path, tiny_llama,
                                                                          chaos_results, request):
    """A one-minute limit (SHORT_LIMIT) and slurm.max_timeouts=1 on SFT that needs longer;
    submitit counts every USR2 a time-out (a limit under 12.5 min guarantees no walltime).
    First time-out: the step finishes, a checkpoint is saved, submitit requeues the task (a
    preemption in the manifest, no failure). Second: the same save, but submitit does not requeue it again; the shard fails
    with that reason (worker.fail_when_submitit_stops_requeueing) and the job ends FAILED.
    The same command with a longer slurm.time_min (a launch key, free to change) queues it
    again: it resumes from the second save and ends with the uninterrupted run's weights."""
    clock = Clock()
    base = tmp_path / "slurm"
    args = [*sft_args(base, tiny_llama, *TIMEOUT_SFT, "slurm.max_timeouts=1"), "executor=slurm"]
    assert submit([*args, *SHORT_LIMIT]) == 0
    # The uninterrupted run, here, on the other core while the task waits for its time-outs.
    local = tmp_path / "local"
    reference = subprocess.Popen([sys.executable, "-m", "srlm_hpc.submit", "executor=local",
                                  *sft_args(local, tiny_llama, *TIMEOUT_SFT)],
                                 stdout=(tmp_path / "reference.log").open("w"), stderr=subprocess.STDOUT)
    request.addfinalizer(reference.kill)  # a no-op once it has ended
    man = sft_manifest(base)
    job = man.queued_job(0).split("_")[0]
    slurm.wait_for(lambda: not queued_jobs(), timeout=900, interval=1, what="the SFT task to time out twice")
    st = man.get(0)
    assert st.state == "failed" and st.failures == 1 and st.attempt == 2, (st.state, st.attempt, st.error,
                                                                           st.history)
    assert [h["state"] for h in st.history] == ["preempted"], st.history  # the first time-out: requeued
    assert st.error.startswith("NotRequeued: timed out more than slurm.max_timeouts=1 times"), st.error
    assert array_runs(slurm, job) == ["REQUEUED", "FAILED"]  # two runs of the one task, then no more
    saved = len(train_log_steps(base))  # the log is written with each checkpoint: the step saved last
    assert saved >= 1

    again = subprocess.run([sys.executable, "-m", "srlm_hpc.submit", *args, "slurm.time_min=60", "wait=true"],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "1 submitted" in again.stdout, again.stdout  # failures (1) < slurm.max_retries: queued again
    st = man.get(0)
    assert st.state == "done" and st.attempt == 3 and st.failures == 1, (st.state, st.attempt, st.history)
    steps = resumed_steps(base)  # the requeued run's (unless its time-out came before its first step), the rerun's
    assert steps[-1] == saved and steps == sorted(set(steps)), (saved, steps)  # on from the last save, not from 0
    assert reference.wait(timeout=900) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    want = sft_model(local / "run")
    assert train_log(base) == train_log(local)  # every step once, with the same loss, lr and grad norm
    got = sft_model(base / "run")
    row = {"scenario": "time limit past slurm.max_timeouts during SFT", "faults": {"time-out": 2},
           "outputs_differing": int(got != want), "records_lost": 0, "records_duplicated": 0,
           "seconds": clock.seconds(), "temp_files_left": len(leftovers(base)),
           "processes_left": len(stray_processes(base))}
    chaos_results.append(row)
    assert got == want
    assert row["temp_files_left"] == 0 and row["processes_left"] == 0, row


# 16 steps (4 epochs of 4), a checkpoint every 2: the preemption lands well before the end.
DS_SFT = ["sft.epochs=4", "sft.dropout=0.1", "sft.checkpoint_every=2"]


@pytest.mark.chaos_full
def test_two_rank_deepspeed_sft_preempted_on_slurm_resumes_from_its_step(slurm, tmp_path, tiny_llama, chaos_results):
    """DeepSpeed SFT as two srun ranks (ZeRO-2 on CPU, as tests/launch/test_slurm_deepspeed.py),
    preempted by a job of the high partition once the ranks have saved their first
    checkpoint: both ranks get submitit's USR2 (preempt_send_user_signal), finish their step
    and save it together, rank 0 requeues the job; the requeued job resumes on both ranks
    from that step, not from 0, trains each step once, and ends with the training log and
    the model bytes of the same two-rank run left alone. (Against a one-process torch run
    the 16 steps drift by 2e-5, rounding of the summation order, past the 1e-5 that
    test_slurm_deepspeed.py allows its 4 steps: so the reference is the two-rank run.)"""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (DS_BUILD_OPS=0 pip install deepspeed)")
    from srlm_hpc.training.distributed import latest_complete

    clock = Clock()
    two_ranks = ["sft.backend=deepspeed", "slurm.train_tasks_per_node=2", "slurm.time_min=60", "executor=slurm"]
    straight = tmp_path / "straight"
    assert submit([*sft_args(straight, tiny_llama, *DS_SFT, *two_ranks), "wait=true"]) == 0
    want, want_log = sft_model(straight / "run"), train_log(straight)

    base = tmp_path / "preempted"
    args = sft_args(base, tiny_llama, *DS_SFT, *two_ranks)
    assert submit(args) == 0
    ckpt = base / "run" / "iter1" / "sft" / "checkpoint"
    saved = slurm.wait_for(lambda: latest_complete(ckpt), timeout=600, interval=0.2,
                           what="the two ranks' first checkpoint")
    high = slurm.sbatch("--partition=high", "--cpus-per-task=8", "--output=/dev/null", "--wrap=sleep 4")
    slurm.wait_final(high, timeout=300)
    done = subprocess.run([sys.executable, "-m", "srlm_hpc.submit", *args, "wait=true"], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    st = sft_manifest(base).get(0)
    assert st.state == "done" and st.failures == 0 and st.attempt == 2, (st.state, st.attempt, st.history)
    assert [h["state"] for h in st.history] == ["preempted"], st.history
    resumed = resumed_steps(base)
    assert len(resumed) == 1 and saved["step"] <= resumed[0] < len(want_log), (saved, resumed)
    assert latest_complete(ckpt)["world_size"] == 2
    assert train_log(base) == want_log  # every step once, with the same loss, lr and grad norm
    got = sft_model(base / "run")
    row = {"scenario": "two-rank DeepSpeed preemption during SFT", "faults": {"partition preemption": 1},
           **compare(got, want), "seconds": clock.seconds(), "temp_files_left": len(leftovers(base)),
           "processes_left": len(stray_processes(base))}
    chaos_results.append(row)
    assert got == want
    assert row["temp_files_left"] == 0 and row["processes_left"] == 0, row
