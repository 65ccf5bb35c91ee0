"""Run a stage, or a whole iteration, of the self-rewarding loop.

    python -m srlm_hpc.submit stage=judge iter=2 [key=value ...]
    python -m srlm_hpc.submit stage=all iter=1 preset=demo executor=slurm slurm.partition=gpu
    python -m srlm_hpc.submit stage=all iter=1-2 preset=demo     # M1 -> M2 -> M3, iterations in order

executor=local runs the shards here, one after another; executor=slurm queues one array
job per stage, chained with afterok. Either way, rerunning the same command after a
crash, a preemption or a time limit finishes the work: shards whose output is verified
are skipped, unfinished ones run again, and nothing is emitted twice.

With wait=true, submit blocks until the queued jobs have left the queue, then exits 0 only
if every requested stage of every requested iteration is done and verified; otherwise 1,
with the shards that did not finish and their logs printed last.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace

from .cli import main_with_help
from .config import Config, config_from_cli, save_config  # noqa: F401 (save_config: callers import it here too)
from .files import atomic_write_json
from .iterations import IterationRangeError, not_ready_message, outside_upstreams, split_iter_arg, stage_progress
from .runner import run_stage_local, setup_process
from .stages import requested_stages  # noqa: F401 (used below, and by callers of submit)

STAGES_HELP = """
stages (stage=all, one, or a comma-separated list, run in this order; iteration 1 starts with sft):
  sft        M0 -> M1: IFT (+ EFT) fine-tuning, iteration 1 only
  prompts    few-shot self-instruct by M_k, filtered (length, blacklist, ROUGE-L)      sharded
  responses  responses.n samples per prompt                                          sharded
  judge      the 0-5 rubric, judge.k samples per response                              sharded
  pairs      (alias merge) highest vs lowest score per prompt, ties dropped
  ref_logps  the reference model's log-probs of every pair                           sharded
  dpo        M_{k+1} = DPO(M_k, pairs)
  eval       reward-modeling metrics, head-to-head, lengths                          sharded
  eft        on request only: EFT training data judged by an IFT-only baseline        sharded

where things live: <work_dir>/iter<k>/<stage>/ (outputs, models in sft/model and dpo/model),
<work_dir>/logs/ (Slurm logs), manifests under manifest_dir= (see manifests/README.md),
<work_dir>/report/index.html (python -m srlm_hpc.report), training curves under
<work_dir>/tensorboard/ (tensorboard --logdir <work_dir>).
"""


def resolve_executor(cfg: Config) -> str:
    """auto: Slurm when sbatch is on PATH and the controller answers squeue, else this machine."""
    if cfg.run.executor != "auto":
        return cfg.run.executor
    if not shutil.which("sbatch"):
        return "local"
    from .launch.slurm import SlurmUnavailable, queued_jobs

    try:
        queued_jobs()
    except SlurmUnavailable as e:
        print(f"note: executor=auto runs here: sbatch is on PATH but {e.squeue_error}", file=sys.stderr)
        return "local"
    return "slurm"


def wait_for_jobs(job_ids: list[str], poll_s: float = 5.0) -> None:
    from .launch.slurm import queued_jobs_patiently  # a controller restart mid-wait is not a failure

    arrays = {j.split("_")[0] for j in job_ids}
    while any(j.split("_")[0] in arrays for j in queued_jobs_patiently()):
        time.sleep(poll_s)


def iteration_configs(argv: list[str]) -> list[Config] | None:
    """One config per iteration of the command's iter= range (iter=1-2: iterations 1 and 2),
    each with RunConfig.iter set; None after printing what is wrong (exit status 2)."""
    try:
        argv, iters = split_iter_arg(argv)
    except IterationRangeError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    cfg = config_from_cli(argv)
    if cfg is None:
        return None
    return [replace(cfg, run=replace(cfg.run, iter=k)) for k in (iters or [cfg.run.iter])]


def local_upstream_problems(work: list[tuple[Config, list[str]]]) -> list[str]:
    """Inputs this command needs but does not make, and that are not done (local runs)."""
    problems = []
    for k, stage in outside_upstreams(work):
        done, progress = stage_progress(work[0][0], k, stage)
        if not done:
            problems.append(not_ready_message(work[-1][0], k, stage, progress))
    return problems


def main(argv: list[str] | None = None) -> int:
    """The exit-code contract (srlm_hpc/cli.py): 0 done or queued, 1 failed work, 2 usage."""
    return main_with_help(argv, __doc__ + STAGES_HELP, _submit, keys=True)


def claim_manifest_root(cfg: Config) -> None:
    """A manifest_dir= shared by runs keeps one work dir's shards per run= name: two work dirs
    under the same run= would take each other's shards for done. The first submit records its
    work dir there; another one is refused before anything else is written."""
    if not cfg.run.manifest_dir:
        return  # <work_dir>/manifests: one work dir by construction
    from .cli import UsageError
    from .files import read_json

    path = cfg.manifest_root / "work_dir.json"
    if path.exists():
        owner = read_json(path).get("work_dir")
        if owner != str(cfg.work_dir):
            raise UsageError(f"{cfg.manifest_root} holds the manifests of run={cfg.run.run!r} in work_dir={owner}, "
                             f"not {cfg.work_dir}: give this run another run= or manifest_dir=")
        return
    atomic_write_json(path, {"work_dir": str(cfg.work_dir)})


def _submit(argv: list[str]) -> int:
    cfgs = iteration_configs(argv)
    if cfgs is None:
        return 2
    try:
        work = [(c, requested_stages(c)) for c in cfgs]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = cfgs[0]
    claim_manifest_root(cfg)
    executor = resolve_executor(cfg)
    if executor == "slurm":
        from .launch.slurm import UpstreamNotQueuedError, submit_range

        from .locks import LockBusyError, file_lock

        try:  # one submit of a run at a time, on any node: two would queue every shard twice
            with file_lock(cfg.manifest_root / "submit.lock", f"submit of run {cfg.run.run!r}", wait_s=600):
                subs = submit_range([(c, save_config(c), stages) for c, stages in work])
        except (UpstreamNotQueuedError, LockBusyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if cfg.run.wait:
            wait_for_jobs([j for s in subs for j in s.job_ids()])
            from .status import outcome_after_wait

            return outcome_after_wait([(c, stages) for c, stages in work])
        return 1 if any(s.exhausted for s in subs) else 0
    problems = local_upstream_problems(work)
    if problems:
        print("error: " + "\n  ".join(problems), file=sys.stderr)
        return 1
    setup_process(cfg)
    for c, stages in work:  # iterations in order: iteration k+1 starts from iteration k's M_{k+1}
        save_config(c)
        for s in stages:
            run_stage_local(c, s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
