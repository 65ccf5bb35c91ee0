"""Run a stage, or a whole iteration, of the self-rewarding loop.

    python -m srlm_hpc.submit stage=judge iter=2 [key=value ...]
    python -m srlm_hpc.submit stage=all iter=1 preset=demo executor=slurm slurm.partition=gpu

executor=local runs the shards here, one after another; executor=slurm queues one array
job per stage, chained with afterok. Either way, rerunning the same command after a
crash, a preemption or a time limit finishes the work: shards whose output is verified
are skipped, unfinished ones run again, and nothing is emitted twice.
"""

from __future__ import annotations

import shutil
import sys
import time

from .config import Config, config_from_cli, to_dict
from .files import atomic_write_json
from .runner import run_stage_local, setup_process
from .stages import ALIASES, EXTRA, ORDER, stage_names


def resolve_executor(cfg: Config) -> str:
    if cfg.run.executor == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return cfg.run.executor


def requested_stages(cfg: Config) -> list[str]:
    """stage=all, one stage, or a comma-separated list (stage=prompts,responses), in pipeline order."""
    if cfg.run.stage == "all":
        return stage_names(cfg.run.iter)
    names = [ALIASES.get(s.strip(), s.strip()) for s in cfg.run.stage.split(",") if s.strip()]
    known = ORDER + EXTRA
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ValueError(f"stage={cfg.run.stage!r}: expected all, or one or more of {', '.join(known)}, merge "
                         f"(comma-separated)")
    return sorted(set(names), key=known.index)


def save_config(cfg: Config):
    """The resolved config, serialised once; array tasks get only its path. A rerun whose
    config differs only in launch settings may overwrite it; sharding keys are guarded by
    each stage's plan."""
    path = cfg.iter_dir() / "config.json"
    atomic_write_json(path, to_dict(cfg))
    return path


def wait_for_jobs(job_ids: list[str], poll_s: float = 5.0) -> None:
    from .launch.slurm import queued_jobs

    arrays = {j.split("_")[0] for j in job_ids}
    while any(j.split("_")[0] in arrays for j in queued_jobs()):
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_cli(argv)
    if cfg is None:
        return 2
    try:
        stages = requested_stages(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config_path = save_config(cfg)
    executor = resolve_executor(cfg)
    if executor == "slurm":
        from .launch.slurm import submit_iteration

        subs = submit_iteration(cfg, config_path, stages)
        if cfg.run.wait:
            wait_for_jobs([j for s in subs for j in s.job_ids()])
            from .status import print_report, report

            print_report(report(cfg.manifest_root, cfg.slurm.stale_after_s))
        return 1 if any(s.exhausted for s in subs) else 0
    setup_process(cfg)
    for s in stages:
        run_stage_local(cfg, s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
