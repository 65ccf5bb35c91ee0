"""Run stage shards and keep the manifest true; the executors (local, Slurm) call this.

`run_shard` is the one worker entry point: whatever launched it (this process, a
submitit array task, a plain sbatch script), it claims the shard (backing off when a live
task owns it), runs it, and marks it done with its output's size, hash, parts and the
upstream outputs it read, or failed with the error. A stage's finalize (eval's
metrics.json, eft's training file, dpo's summary) is recorded in the manifest too, and
redone by whichever run next finds every shard done and the finalize missing or stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import torch

from . import faults, timing
from .config import Config, env_threads
from .log import say, shard_log, shard_log_path
from .files import file_info, output_digest, recover_replaced_dir, sweep_dead_writers_temps, sweep_temps
from .manifest import (OwnershipLostError, ShardBusyError, StageManifest, new_owner_token, read_label,
                       recorded_digest, recording_reads)
from .preemption import Preempted, was_requeued
from .shards import parts_belong_to
from .stages import get_stage

# Files a stage's finalize writes, relative to <work_dir>/iter<k>/: recorded with their hashes.
FINAL_FILES = {"eval": ("eval/metrics.json",), "eft": ("eft/eft_train.jsonl", "eft/stats.json"),
               "dpo": ("summary.json",)}


def setup_process(cfg: Config) -> None:
    """Once per process, before any engine starts: the logging of log.level, and torch's
    thread count (vLLM's CPU worker binds its threads when it starts and turns later
    torch.set_num_threads calls into a warning)."""
    from .log import setup_logging

    setup_logging(cfg.log.level)
    if getattr(cfg.log, "wandb", False):
        os.environ["SRLM_WANDB"] = "1"  # read by training/curves.py, which gets no config
    torch.set_num_threads(cfg.run.threads or env_threads())


def stage_manifest(cfg: Config, stage: str) -> StageManifest:
    return StageManifest(cfg.manifest_root, cfg.run.iter, stage)


def plan_stage(cfg: Config, stage: str) -> tuple[StageManifest, int]:
    """Split the stage (its upstream must be done) and record the plan; a rerun must agree."""
    from .fingerprint import shaping_values

    man = stage_manifest(cfg, stage)
    n_shards, keys = get_stage(stage).plan(cfg)
    man.write_plan(n_shards, keys, shaping=shaping_values(cfg, stage), output_dir=str(cfg.stage_dir(stage)))
    return man, n_shards


def unfinished_shards(man: StageManifest, n_shards: int) -> list[int]:
    """Shards without a verified output: pending, failed, stale running, or done-but-corrupt."""
    return [st.shard for st in man.states(n_shards) if man.verified_output(st) is None]


@contextlib.contextmanager
def heartbeat(man: StageManifest, shard: int, interval: float, owner: str | None = None):
    """Beat for the shard every `interval` s while it runs, so `status` and a second task
    can tell a live shard from one whose node died. Beats go to a file of their own (a late
    one cannot undo the final state); they stop once another task owns the shard."""
    from . import progress

    stop = threading.Event()
    progress.reset()

    def beat():
        while not stop.wait(interval):
            with contextlib.suppress(OSError):  # a flaky shared filesystem must not kill the shard
                if not man.heartbeat(shard, owner):
                    return
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


def liveness_s(cfg: Config) -> float:
    """How long a running shard's heartbeat may stand still before its owner counts as dead:
    three missed beats, plus slack for a loaded shared filesystem."""
    return 3 * cfg.slurm.heartbeat_s + 5


def model_inputs(cfg: Config, stage: str) -> list[tuple[int, str]]:
    """(iteration, stage) of the models a stage reads that this run made: M1 is sft of iter 1,
    M_k (k > 1) dpo of iter k-1. A model named by path (model=, judge_model=, ...) is not
    this run's output and is not tracked."""
    k = cfg.run.iter

    def m(j: int) -> list[tuple[int, str]]:
        return [] if j < 1 else [(1, "sft")] if j == 1 else [(j - 1, "dpo")]

    ref = m(1) if cfg.dpo.reference == "sft" else m(k)
    uses = {"prompts": [] if cfg.prompts.generator_model else m(k), "responses": m(k),
            "judge": [] if cfg.judge.judge_model else m(k), "ref_logps": ref, "dpo": m(k) + ref,
            "eval": m(k + 1) + ([] if cfg.eval.baseline_model else m(1)) + ([] if cfg.eval.judge_model else m(k + 1)),
            "eft": [] if cfg.eft.model else m(1)}
    return list(dict.fromkeys(uses.get(stage, [])))


def read_models(cfg: Config, stage: str) -> list[dict]:
    out = []
    for it, up in model_inputs(cfg, stage):
        digest = recorded_digest(cfg.manifest_root, it, up, 0)
        if digest is not None:
            out.append({"iter": it, "stage": up, "shard": 0, "digest": digest})
    return out


def sweep_shard_temps(cfg: Config, stage: str, shard: int) -> None:
    """Temp files a killed earlier attempt of this shard left (its owner is gone: we own it now)."""
    names = (f"shard-{shard:05d}",)
    if stage in ("sft", "dpo"):
        names += ("checkpoint", "model", "train_log.jsonl")
    removed = sweep_temps(cfg.stage_dir(stage), names)
    man_dir = stage_manifest(cfg, stage).dir
    # beats, marks and merge files; the iteration's record-count indexes and summary one level up
    for folder in (cfg.stage_dir(stage), man_dir, cfg.stage_dir(stage).parent, man_dir.parent):
        removed += sweep_dead_writers_temps(folder)
    if removed:
        print(f"[{stage}] shard {shard}: removed {len(removed)} temp file(s) of an earlier attempt", flush=True)
    if stage in ("sft", "dpo"):
        for name in ("checkpoint", "model"):  # a kill between replace_dir's two renames
            if done := recover_replaced_dir(cfg.stage_dir(stage) / name):
                print(f"[{stage}] shard {shard}: {done} (an earlier attempt was killed while replacing it)",
                      flush=True)


def training_identity(cfg: Config, stage: str, config: str):
    """For sft and dpo: what their checkpoints belong to (the shaping fingerprint, and the
    digests of the models and pairs they train on), so a resume with other ones is refused."""
    if stage not in ("sft", "dpo"):
        return contextlib.nullcontext()
    from .training.loop import checkpoint_identity

    data = read_models(cfg, stage)
    if stage == "dpo":
        pairs = recorded_digest(cfg.manifest_root, cfg.run.iter, "pairs", 0)
        data.append({"iter": cfg.run.iter, "stage": "pairs", "shard": 0, "digest": pairs})
    return checkpoint_identity(stage=stage, iter=cfg.run.iter, config=config,
                               data=[read_label(d) for d in data])


def check_shaping(cfg: Config, stage: str, man: StageManifest) -> str:
    """This task's config against the stage's plan: refused when a key that shapes the outputs
    differs (a task of an older submit reading a newer config, or the other way round).
    Returns the fingerprint of the shaping values, recorded with the shard."""
    from .fingerprint import fingerprint, shaping_values

    mine = shaping_values(cfg, stage)
    plan = man.plan()
    if plan is not None and "shaping" in plan:
        man.write_plan(plan["n_shards"], plan["keys"], shaping=mine, output_dir=str(cfg.stage_dir(stage)))
    return fingerprint(mine)


def claim_or_wait(cfg: Config, man: StageManifest, stage: str, shard: int, owner: str, log: str,
                  config: str) -> bool:
    """Claim the shard (True), or, while another live task owns it, wait: False once that task
    has finished it; the shard is claimed after all if its owner dies or gives it back. A
    duplicate task (a killed submit's, a node-failure requeue's) thus ends only when the shard
    is done, so `afterok` dependents never start early; after slurm.stale_after_s of waiting
    it gives up with an error (its dependents are cancelled; a rerun of submit requeues them)
    and leaves the manifest alone."""
    deadline = time.monotonic() + cfg.slurm.stale_after_s
    said = False
    while True:
        try:
            man.claim(shard, owner, log=log, liveness_s=liveness_s(cfg), config=config)
            return True
        except ShardBusyError as e:
            if not said:
                print(f"[{stage}] {e}; waiting for it", flush=True)
                said = True
            if time.monotonic() > deadline:
                raise ShardBusyError(f"{e}; gave up after waiting {cfg.slurm.stale_after_s:.0f}s "
                                     f"(slurm.stale_after_s)") from None
        time.sleep(min(cfg.slurm.heartbeat_s, 5))
        if man.verified_output(man.get(shard)) is not None:
            print(f"[{stage}] shard {shard}: done by the task that owned it", flush=True)
            return False


def run_shard(cfg: Config, stage: str, shard: int, log: str = "", rank: int = 0, world: int = 1) -> None:
    """Run one shard. Rank 0 of a multi-task array element owns the manifest entry; the
    other ranks join the work (see is_collective, spans_ray_nodes) and never write it."""
    with faults.in_stage(stage):
        _run_shard(cfg, stage, shard, log, rank, world)


def _run_shard(cfg: Config, stage: str, shard: int, log: str, rank: int, world: int) -> None:
    man = stage_manifest(cfg, stage)
    if man.verified_output(man.get(shard)) is not None:
        print(f"[{stage}] shard {shard}: already done, skipped", flush=True)
        if rank == 0:
            finish_stage_if_complete(cfg, stage)  # in case the task that finished the stage could not
        return
    if rank > 0:
        return follow_shard(cfg, stage, shard, man, rank, world)
    config = check_shaping(cfg, stage, man)
    owner = new_owner_token()
    if not claim_or_wait(cfg, man, stage, shard, owner, log or str(shard_log_path(cfg, stage, shard)), config):
        finish_stage_if_complete(cfg, stage)
        return  # another task finished it while this one waited
    sweep_shard_temps(cfg, stage, shard)
    t0 = time.time()
    try:
        with shard_log(cfg, stage, shard, man.get(shard).attempt) as log_path, recording_reads() as reads, \
                timing.recording() as spent, heartbeat(man, shard, cfg.slurm.heartbeat_s, owner), \
                ray_head_if_needed(cfg, stage, world), training_identity(cfg, stage, config), \
                parts_belong_to(json.dumps([config, read_models(cfg, stage)], sort_keys=True)):
            info = get_stage(stage).run_shard(cfg, shard)
    except BaseException as e:
        say(f"[{stage}] shard {shard}: stopped after {time.time() - t0:.1f}s by {type(e).__name__}; "
            f"its log: {shard_log_path(cfg, stage, shard)}")
        try:
            if was_requeued() or isinstance(e, Preempted):
                man.mark_preempted(shard, f"{type(e).__name__}: {e}", owner=owner)  # pending again; not a failure
            else:
                man.mark_failed(shard, e, owner=owner)
        except OwnershipLostError as lost:
            print(f"[{stage}] {lost}", flush=True)
        raise
    faults.at("before-mark-done")  # the output is renamed into place; the manifest does not know yet
    try:
        man.mark_done(shard, info, owner=owner, inputs=reads + read_models(cfg, stage), timing=spent)
    except OwnershipLostError as e:
        print(f"[{stage}] {e}", flush=True)
        return
    loads = f", {spent['model_loads']} model load(s) {spent['model_load_s']:.1f}s" if spent["model_loads"] else ""
    say(f"[{stage}] shard {shard}: done, {info.records} records, {info.bytes} bytes in {time.time() - t0:.1f}s"
        f"{loads} (log: {log_path})")
    finish_stage_if_complete(cfg, stage)


def ray_job(cfg: Config) -> tuple[str, Path]:
    """The job id this task's Ray belongs to, and where its auth token lives (shared by the
    job's tasks, on the shared filesystem; written 0600)."""
    job = os.environ.get("SLURM_JOB_ID", f"local-{os.getpid()}")
    return job, cfg.log_dir / "ray" / job / "auth_token"


@contextlib.contextmanager
def ray_head_if_needed(cfg: Config, stage: str, world: int):
    if not spans_ray_nodes(cfg, stage, world):
        yield
        return
    from .launch.ray_slurm import head_address, ray_head

    job, token = ray_job(cfg)
    with ray_head(head_address(), n_nodes=world, token_path=token, job_id=job):
        yield


def follow_shard(cfg: Config, stage: str, shard: int, man: StageManifest, rank: int, world: int) -> None:
    if is_collective(cfg, stage):
        get_stage(stage).run_shard(cfg, shard)  # a rank of the distributed training
        return
    if spans_ray_nodes(cfg, stage, world):
        from .launch.ray_slurm import head_address, ray_worker

        job, token = ray_job(cfg)
        ray_worker(head_address(), shard_finished=rank0_finished(man, shard, liveness_s(cfg)), token_path=token,
                   job_id=job)
        return
    print(f"[{stage}] shard {shard}: task {rank} of {world} has nothing to do (only rank 0 runs this stage)",
          flush=True)


def rank0_finished(man: StageManifest, shard: int, liveness: float = float("inf"), wait_start_s: float = 600):
    """For a follower: true once rank 0 of this job ran the shard and stopped (done, failed or
    requeued), or died (its heartbeat stood still for `liveness` s), or never started it
    within `wait_start_s`; not before rank 0 even started it (a failed earlier attempt is
    not the end)."""
    from .manifest import job_identity

    me = job_identity()["job_id"]
    seen = False
    t0 = time.time()

    def finished() -> bool:
        nonlocal seen
        st = man.get(shard)
        mine = st.state == "running" and st.job_id == me
        seen = seen or mine
        if mine and time.time() - (st.heartbeat or st.started or 0) > liveness:
            print(f"[{man.stage}] shard {shard}: rank 0 stopped beating; this task leaves", flush=True)
            return True
        if not seen and time.time() - t0 > wait_start_s:
            return True
        return st.state == "done" or (seen and not mine)

    return finished


def finish_stage_if_complete(cfg: Config, stage: str) -> bool:
    """Once every shard of the stage is done: its `finalize` (and after dpo the iteration's
    summary), unless the manifest records one over exactly these shard outputs whose files
    are intact. True when it ran. Idempotent: two tasks finishing together both write the
    same bytes."""
    if stage not in FINAL_FILES:
        return False
    man = stage_manifest(cfg, stage)
    plan = man.plan()
    if plan is None:
        return False
    states = man.states(plan["n_shards"])
    if any(man.verified_output(st) is None for st in states):
        return False
    inputs = [output_digest(st.output) for st in states]
    if man.finalized(inputs):
        return False
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
    faults.at("before-mark-finalized")
    files = [cfg.iter_dir() / rel for rel in FINAL_FILES[stage]]
    man.mark_finalized(inputs, [file_info(p, records=0) for p in files if p.exists()])
    return True


def run_stage_local(cfg: Config, stage: str) -> None:
    man, n_shards = plan_stage(cfg, stage)
    todo = unfinished_shards(man, n_shards)
    say(f"[{stage}] iter {cfg.run.iter}: {n_shards} shard(s), {n_shards - len(todo)} already done, "
        f"{len(todo)} to run")
    t0 = time.time()
    for shard in todo:
        run_shard(cfg, stage, shard)
    if not todo:  # a rerun: redo the stage's finalize if it was cut short or its inputs changed
        finish_stage_if_complete(cfg, stage)
    records = sum((st.output or {}).get("records", 0) for st in man.states(n_shards) if st.state == "done")
    say(f"[{stage}] iter {cfg.run.iter}: done in {time.time() - t0:.1f}s, {n_shards} shard(s), {records} records")
