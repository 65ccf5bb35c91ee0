"""Run a stage, or a whole iteration, of the self-rewarding loop.

    python -m srlm_hpc.submit stage=judge iter=2 [key=value ...]
    python -m srlm_hpc.submit stage=all iter=1 preset=demo

Rerunning the same command after a crash or preemption resumes: finished shards are
skipped (their outputs are checked against the manifest), unfinished ones rerun.
"""

from __future__ import annotations

import shutil
import sys

from .config import Config, ConfigError, absolute_paths, parse_args, to_dict
from .files import atomic_write_json
from .runner import run_stage_local, setup_process
from .stages import ALIASES, stage_names
from .summary import print_summary, write_summary


def resolve_executor(cfg: Config) -> str:
    if cfg.run.executor == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return cfg.run.executor


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, _ = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = absolute_paths(cfg)
    stages = stage_names(cfg.run.iter) if cfg.run.stage == "all" else [ALIASES.get(cfg.run.stage, cfg.run.stage)]
    unknown = [s for s in stages if s not in stage_names(cfg.run.iter) + ["sft"]]
    if unknown:
        print(f"error: stage={cfg.run.stage!r}: expected one of {', '.join(stage_names(1))}, or all", file=sys.stderr)
        return 2
    executor = resolve_executor(cfg)
    if executor != "local":
        print(f"error: executor={executor!r} is not available yet; use executor=local", file=sys.stderr)
        return 2
    atomic_write_json(cfg.iter_dir() / "config.json", to_dict(cfg))
    setup_process(cfg)
    for stage in stages:
        run_stage_local(cfg, stage)
    if "dpo" in stages:
        print_summary(write_summary(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
