"""Run stage shards and keep the manifest true; the executors (local, Slurm) call this.

`run_shard` is the one worker entry point: whatever launched it (this process, a
submitit array task, a plain sbatch script), it marks the shard running, runs it, and
marks it done with its output's size and hash, or failed with the error.
"""

from __future__ import annotations

import contextlib
import threading
import time

import torch

from .config import Config, env_threads
from .manifest import StageManifest
from .preemption import Preempted, was_requeued
from .stages import get_stage


def setup_process(cfg: Config) -> None:
    torch.set_num_threads(cfg.run.threads or env_threads())


def stage_manifest(cfg: Config, stage: str) -> StageManifest:
    return StageManifest(cfg.manifest_root, cfg.run.iter, stage)


def plan_stage(cfg: Config, stage: str) -> tuple[StageManifest, int]:
    """Split the stage (its upstream must be done) and record the plan; a rerun must agree."""
    man = stage_manifest(cfg, stage)
    n_shards, keys = get_stage(stage).plan(cfg)
    man.write_plan(n_shards, keys)
    return man, n_shards


def unfinished_shards(man: StageManifest, n_shards: int) -> list[int]:
    """Shards without a verified output: pending, failed, stale running, or done-but-corrupt."""
    return [st.shard for st in man.states(n_shards) if man.verified_output(st) is None]


@contextlib.contextmanager
def heartbeat(man: StageManifest, shard: int, interval: float):
    """Touch the shard's manifest entry every `interval` s while it runs, so `status` can
    tell a live shard from one whose node died. Joined before the shard is marked done or
    failed: a late beat must never overwrite the final state."""
    from . import progress

    stop = threading.Event()
    progress.reset()

    def beat():
        while not stop.wait(interval):
            with contextlib.suppress(OSError):  # a flaky shared filesystem must not kill the shard
                man.heartbeat(shard)
                progress.write(man.dir, shard)  # chunk or step, for status (progress.py)

    thread = threading.Thread(target=beat, name=f"heartbeat-{man.stage}-{shard}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def is_collective(cfg: Config, stage: str) -> bool:
    """Every rank runs the stage's shard function (distributed training); otherwise rank 0
    alone does, and the other tasks only lend it their node (Ray) or idle."""
    from .launch.resources import TRAINING, training_backend

    return stage in TRAINING and training_backend(cfg, stage) == "deepspeed"


def spans_ray_nodes(cfg: Config, stage: str, world: int) -> bool:
    from .launch.resources import GENERATION

    return stage in GENERATION and cfg.vllm.pipeline_parallel_size > 1 and world > 1


def run_shard(cfg: Config, stage: str, shard: int, log: str = "", rank: int = 0, world: int = 1) -> None:
    """Run one shard. Rank 0 of a multi-task array element owns the manifest entry; the
    other ranks join the work (see is_collective, spans_ray_nodes) and never write it."""
    man = stage_manifest(cfg, stage)
    if man.verified_output(man.get(shard)) is not None:
        print(f"[{stage}] shard {shard}: already done, skipped", flush=True)
        return
    if rank > 0:
        return follow_shard(cfg, stage, shard, man, rank, world)
    man.mark_running(shard, log=log)
    t0 = time.time()
    try:
        with heartbeat(man, shard, cfg.slurm.heartbeat_s), ray_head_if_needed(cfg, stage, world):
            info = get_stage(stage).run_shard(cfg, shard)
    except BaseException as e:
        if was_requeued() or isinstance(e, Preempted):
            man.mark_preempted(shard, f"{type(e).__name__}: {e}")  # pending again; not a failure
        else:
            man.mark_failed(shard, e)
        raise
    man.mark_done(shard, info)
    print(f"[{stage}] shard {shard}: done, {info.records} records, {info.bytes} bytes "
          f"in {time.time() - t0:.1f}s", flush=True)
    finish_stage_if_complete(cfg, stage)


@contextlib.contextmanager
def ray_head_if_needed(cfg: Config, stage: str, world: int):
    if not spans_ray_nodes(cfg, stage, world):
        yield
        return
    from .launch.ray_slurm import head_address, ray_head

    with ray_head(head_address(), n_nodes=world):
        yield


def follow_shard(cfg: Config, stage: str, shard: int, man: StageManifest, rank: int, world: int) -> None:
    if is_collective(cfg, stage):
        get_stage(stage).run_shard(cfg, shard)  # a rank of the distributed training
        return
    if spans_ray_nodes(cfg, stage, world):
        from .launch.ray_slurm import head_address, ray_worker

        ray_worker(head_address(), shard_finished=rank0_finished(man, shard))
        return
    print(f"[{stage}] shard {shard}: task {rank} of {world} has nothing to do (only rank 0 runs this stage)",
          flush=True)


def rank0_finished(man: StageManifest, shard: int):
    """For a follower: true once rank 0 of this job ran the shard and stopped (done, failed or
    requeued), and not before rank 0 even started it (a failed earlier attempt is not the end)."""
    from .manifest import job_identity

    me = job_identity()["job_id"]
    seen = False

    def finished() -> bool:
        nonlocal seen
        st = man.get(shard)
        mine = st.state == "running" and st.job_id == me
        seen = seen or mine
        return st.state == "done" or (seen and not mine)

    return finished


def finish_stage_if_complete(cfg: Config, stage: str) -> None:
    """After a stage's last shard, however it was launched: its `finalize`, and after dpo the
    iteration's summary."""
    man = stage_manifest(cfg, stage)
    plan = man.plan()
    if plan is None or unfinished_shards(man, plan["n_shards"]):
        return
    finalize = getattr(get_stage(stage), "finalize", None)
    if finalize is not None:
        finalize(cfg)
    if stage == "dpo":
        from .summary import print_summary, write_summary

        print_summary(write_summary(cfg))
    if stage == "dpo":  # the judge's parse rate and score histograms as curves (curves.py)
        from .training.curves import write_iteration_curves

        with contextlib.suppress(OSError, ValueError):
            write_iteration_curves(cfg.work_dir, cfg.run.iter)


def run_stage_local(cfg: Config, stage: str) -> None:
    man, n_shards = plan_stage(cfg, stage)
    todo = unfinished_shards(man, n_shards)
    print(f"[{stage}] iter {cfg.run.iter}: {n_shards} shard(s), {n_shards - len(todo)} already done, "
          f"{len(todo)} to run", flush=True)
    for shard in todo:
        run_shard(cfg, stage, shard)
    if not todo:  # a rerun: redo the stage's finalize in case it was cut short last time
        finish_stage_if_complete(cfg, stage)
