"""Queue stages as Slurm array jobs through submitit, chained with afterok.

For each iteration of the range and each stage, in order: plan it, find the shards without a verified output, leave alone
those whose job is still in the queue, and submit one array job for the rest, depending
on the jobs of the stage it reads (iteration k+1's first stage on iteration k's dpo), whether
this command queued them or an earlier one did. Rerunning after any failure submits only what is missing.

A shard that has failed slurm.max_retries times (an error, or its job vanished while
running it; preemptions and requeues do not count) is not resubmitted: submit reports it,
and the stages after it are not queued, since they could not start.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import faults
from ..cli import WorkFailed
from ..config import Config
from ..iterations import not_ready_message, outside_upstreams, stage_progress, upstreams_of
from ..manifest import StageManifest
from ..runner import finish_stage_if_complete, plan_stage, unfinished_shards
from .resources import stage_resources
from ..worker import ShardTask


@dataclass
class StageSubmission:
    stage: str
    n_shards: int
    done: int
    submitted: dict[int, str] = field(default_factory=dict)  # shard -> job id of this submit
    in_queue: dict[int, str] = field(default_factory=dict)  # shard -> job id of an earlier submit
    exhausted: list[int] = field(default_factory=list)  # shards past max_retries

    def job_ids(self) -> list[str]:
        return sorted(set(self.submitted.values()) | set(self.in_queue.values()))

    def array_jobs(self) -> list[str]:
        """The array jobs this submit queued: several when the shards exceed MaxArraySize."""
        return sorted({j.split("_")[0] for j in self.submitted.values()}, key=lambda j: (len(j), j))  # 999 < 1000


class SlurmUnavailable(WorkFailed):
    """squeue did not answer: no controller running, a wrong SLURM_CONF, munge down."""

    def __init__(self, squeue_error: str):
        self.squeue_error = squeue_error
        super().__init__(f"{squeue_error}. Check the controller (`scontrol ping`), or run here with executor=local")


def queued_jobs() -> dict[str, str]:
    """Every job and array element in the queue: {'1234_5': 'RUNNING', ...}; SlurmUnavailable,
    with squeue's own error, when the controller does not answer."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmUnavailable(f"Slurm does not answer: squeue: {e}") from e
    if proc.returncode != 0:
        said = " ".join(proc.stderr.split())[-300:] or "no message"
        raise SlurmUnavailable(f"Slurm does not answer: `squeue` exited {proc.returncode}: {said}")
    return dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip())


# How long a waiting submit bears a controller that does not answer: a slurmctld restart
# recovers its state in seconds to a minute, a failover takes SlurmctldTimeout (120 s by
# default); 15 min covers both with room, and still ends a wait on a cluster that is gone.
WAIT_PATIENCE_S = 900.0


def queued_jobs_patiently(patience_s: float = WAIT_PATIENCE_S, first_pause_s: float = 2.0) -> dict[str, str]:
    """queued_jobs for a caller that waits on its jobs (submit wait=true). A controller that
    does not answer (restarted, failing over, swamped) is asked again after 2, 4, 8 ... 60 s;
    the jobs keep running meanwhile, so this is not a failure of the work. After patience_s
    without an answer: SlurmUnavailable, one line, exit 1. (Without this, one squeue failure
    during a slurmctld restart ended `submit wait=true` with exit 1 while its jobs ran on:
    tests/chaos/test_slurm_faults.py.)"""
    deadline = time.monotonic() + patience_s
    pause = first_pause_s
    while True:
        try:
            return queued_jobs()
        except SlurmUnavailable as e:
            if time.monotonic() + pause > deadline:
                raise SlurmUnavailable(f"{e.squeue_error}, for {patience_s:.0f} s of retries") from e
            print(f"note: {e.squeue_error}; asking again in {pause:g} s", file=sys.stderr, flush=True)
            time.sleep(pause)
            pause = min(2 * pause, 60.0)


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices must stay below it); Slurm's default when
    scontrol does not say."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 1001
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return max(2, int(value.strip()))
    return 1001


def make_executor(cfg: Config, stage: str, dependency: list[str]):
    import submitit

    s = cfg.slurm
    folder = cfg.log_dir / f"iter{cfg.run.iter}" / stage
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=s.max_timeouts)
    extra = dict(e.split("=", 1) if "=" in e else (e, "") for e in s.extra)
    extra["kill-on-invalid-dep"] = "yes"  # a failed upstream task cancels dependents; rerun resubmits
    if dependency:
        extra["dependency"] = "afterok:" + ":".join(dependency)
    params = dict(name=f"srlm-{cfg.run.run}-i{cfg.run.iter}-{stage}", timeout_min=s.time_min,
                  slurm_array_parallelism=s.array_parallelism, slurm_additional_parameters=extra,
                  stderr_to_stdout=True, **stage_resources(cfg, stage).submitit_parameters())
    if s.partition:
        params["slurm_partition"] = s.partition
    if s.account:
        params["slurm_account"] = s.account
    if s.qos:
        params["slurm_qos"] = s.qos
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    executor.update_parameters(**params)
    return executor


def triage(man: StageManifest, todo: list[int], queue: dict[str, str], max_retries: int, sub: StageSubmission) -> list[int]:
    """Sort unfinished shards into sub.in_queue (a job for it is still queued or running),
    sub.exhausted (failed max_retries times) and the returned list, to submit now."""
    to_submit = []
    for shard in todo:
        st = man.get(shard)
        live = next((j for j in (st.job_id, man.queued_job(shard)) if j and j in queue), "")
        if live:
            sub.in_queue[shard] = live
            continue
        if st.state == "running":  # its job left the queue without finishing: a dead node, a kill
            st = man.mark_pending(shard, f"job {st.job_id} left the queue while running (attempt {st.attempt})",
                                  failed=True)
        if st.failures >= max_retries:
            sub.exhausted.append(shard)
        else:
            to_submit.append(shard)
    return to_submit


def submit_stage(cfg: Config, config_path: Path, stage: str, dependency: list[str],
                 queue: dict[str, str]) -> StageSubmission:
    man, n_shards = plan_stage(cfg, stage)
    todo = unfinished_shards(man, n_shards)
    sub = StageSubmission(stage, n_shards, n_shards - len(todo))
    to_submit = triage(man, todo, queue, cfg.slurm.max_retries, sub)
    if not todo:  # every shard done: its finalize too (redone here if a task's was cut short)
        finish_stage_if_complete(cfg, stage)
    if to_submit:
        executor = make_executor(cfg, stage, dependency)
        # Slurm refuses an array index >= MaxArraySize (1001 by default): one array job per slice.
        size = max_array_size() - 1
        for i in range(0, len(to_submit), size):
            part = to_submit[i:i + size]
            jobs = executor.map_array(ShardTask(str(config_path), stage), part)
            faults.at("after-queueing")  # queued, not yet recorded: a killed submit leaves this
            for shard, job in zip(part, jobs):
                sub.submitted[shard] = job.job_id
                man.mark_queued(shard, job.job_id)
    return sub


class UpstreamNotQueuedError(RuntimeError):
    """A stage's input is neither done, nor made by this command, nor queued: nothing to wait for."""


def live_jobs(cfg: Config, k: int, stage: str, queue: dict[str, str]) -> list[str]:
    """Job ids in the queue that are running or will run an unfinished shard of `stage` of iteration k."""
    man = StageManifest(cfg.manifest_root, k, stage)
    plan = man.plan()
    if plan is None:
        return []
    jobs = set()
    for shard in unfinished_shards(man, plan["n_shards"]):
        st = man.get(shard)
        jobs |= {j for j in (st.job_id, man.queued_job(shard)) if j and j in queue}
    return sorted(jobs)


def outside_dependencies(work: list[tuple[Config, Path, list[str]]], queue: dict[str, str]) -> dict:
    """(iteration, stage) -> queued job ids, for every input of this command that another command
    queued and that is not done yet; an input neither done nor queued is an error, raised before
    anything is submitted."""
    cfg = work[0][0]
    deps, problems = {}, []
    for k, stage in outside_upstreams([(c, stages) for c, _, stages in work]):
        done, progress = stage_progress(cfg, k, stage)
        if done:
            continue
        jobs = live_jobs(cfg, k, stage, queue)
        if jobs:
            deps[(k, stage)] = jobs
        else:
            problems.append(not_ready_message(work[-1][0], k, stage, progress, ", and no job of it is queued"))
    if problems:
        raise UpstreamNotQueuedError("\n  ".join(problems))
    return deps


def submit_range(work: list[tuple[Config, Path, list[str]]]) -> list[StageSubmission]:
    """Queue every stage of every iteration in `work` ((config, its saved path, stages) per
    iteration, in order) at once. Each stage depends (afterok) on the jobs of the stages it
    reads: those this command queued or found queued, and jobs other commands queued for
    inputs this command does not run (iteration k+1's prompts waits for iteration k's dpo)."""
    queue = queued_jobs()
    jobs = outside_dependencies(work, queue)  # (iteration, stage) -> job ids to wait for
    subs = []
    for cfg, config_path, stages in work:
        k = cfg.run.iter
        for stage in stages:
            dependency = sorted({j for u in upstreams_of(k, stage) for j in jobs.get(u, [])})
            sub = submit_stage(cfg, config_path, stage, dependency, queue)
            subs.append(sub)
            print(f"[{stage}] iter {k}: {sub.n_shards} shard(s): {sub.done} done, "
                  f"{len(sub.in_queue)} already queued, {len(sub.submitted)} submitted"
                  + (f" as job {','.join(sub.array_jobs())}"
                     if sub.submitted else "") + (f" after {','.join(dependency)}" if sub.submitted and dependency
                                                  else ""), flush=True)
            if sub.exhausted:
                print(f"[{stage}] iter {k}: shard(s) {sub.exhausted} failed {cfg.slurm.max_retries} times and are "
                      f"not resubmitted; see `python -m srlm_hpc.status` for their errors and logs. Later stages "
                      f"are not queued.", flush=True)
                return subs
            jobs[(k, stage)] = sorted({j.split("_")[0] for j in sub.submitted.values()} | set(sub.in_queue.values()))
    return subs


def submit_iteration(cfg: Config, config_path: Path, stages: list[str]) -> list[StageSubmission]:
    """One iteration: submit_range of a single iteration."""
    return submit_range([(cfg, config_path, stages)])
