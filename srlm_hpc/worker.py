"""One shard of one stage, whatever launched it: this process, a submitit array task, or a
plain sbatch script.

    python -m srlm_hpc.worker CONFIG_JSON STAGE [SHARD]     # SHARD defaults to $SLURM_ARRAY_TASK_ID
    python -m srlm_hpc.worker --pending CONFIG_JSON STAGE   # prints the unfinished shards, "0,3,7"
    python -m srlm_hpc.worker --array-slices CONFIG_JSON STAGE   # the same as array jobs under MaxArraySize:
                                                            # a line "OFFSET INDICES SHARDS" per job
    python -m srlm_hpc.worker --write-config key=value ...  # saves the resolved config, prints its path
    python -m srlm_hpc.worker --stages CONFIG_JSON          # the stages of that iteration, in order
    python -m srlm_hpc.worker --resources CONFIG_JSON STAGE # sbatch layout options: nodes, tasks, GPUs

CONFIG_JSON is the resolved config that submit saved (<work_dir>/iter<k>/config.json):
serialised once, and only its path travels.

Exit status: 0 the shard is done (or was already), 1 it failed (the error and the tail of
its traceback are in its manifest entry; this log has the whole traceback), 2 a usage or
configuration error.
"""

from __future__ import annotations

import contextlib
import os
import sys

from .config import load_config
from .preemption import note_requeue
from .runner import finish_stage_if_complete, plan_stage, run_shard, setup_process, unfinished_shards
from .slurm_env import task_rank


def current_log() -> str:
    """Where this task's output goes, for `status` to point at."""
    with contextlib.suppress(Exception):
        import submitit

        return str(submitit.JobEnvironment().paths.stdout)
    return os.environ.get("SRLM_LOG", "")


def run(config_path: str, stage: str, shard: int) -> None:
    cfg = load_config(config_path)
    setup_process(cfg)
    rank, world = task_rank()
    print_task_header(cfg, stage, shard, rank, world)
    run_shard(cfg, stage, shard, log=current_log(), rank=rank, world=world)


def print_task_header(cfg, stage: str, shard: int, rank: int, world: int) -> None:
    """The first line of the task's log: which stage, shard, attempt, host and config it ran."""
    from .log import task_header
    from .runner import stage_manifest

    attempt = stage_manifest(cfg, stage).get(shard).attempt + 1  # the attempt this task is to claim
    line = task_header(cfg, stage, shard, attempt)
    print(line if world == 1 else line.replace(" ===", f", task {rank} of {world} ===", 1), flush=True)


class ShardTask:
    """The callable submitit pickles: a config path and a stage name, nothing heavier.

    On preemption or time-out submitit sends USR2, calls `checkpoint`, and requeues the
    task; the shard then resumes from its last finished chunk (data stages) or training
    checkpoint (sft, dpo), so nothing is recomputed twice or emitted twice."""

    def __init__(self, config_path: str, stage: str):
        self.config_path, self.stage = config_path, stage

    def __call__(self, shard: int) -> int:
        fail_when_submitit_stops_requeueing(load_config(self.config_path).slurm.max_timeouts)
        run(self.config_path, self.stage, shard)
        return shard

    def checkpoint(self, shard: int):
        import submitit

        note_requeue()  # submitit requeues the task next and exits: a preemption, not a failure
        return submitit.helpers.DelayedSubmission(ShardTask(self.config_path, self.stage), shard)


class NotRequeued(RuntimeError):
    """submitit stopped this task on its time limit and did not requeue it."""


def fail_when_submitit_stops_requeueing(max_timeouts: int) -> None:
    """Wrap submitit's handler of its signal (USR2). Up to slurm.max_timeouts time-outs it
    calls `checkpoint` (which notes a requeue), requeues the task and exits; at the next one
    it calls `checkpoint` all the same, then declines the requeue with an
    UncompletedJobError and the job ends FAILED. Without this the runner took that for a
    preemption: the shard pending again with no error shown, and no failure counted, however
    often it ran out of time. Now the shard fails with the reason and the fix; its chunks or
    checkpoint are kept, so a rerun of submit resumes it (tests/chaos/test_slurm_faults.py)."""
    import signal

    import submitit
    from submitit.core.utils import UncompletedJobError

    from .preemption import note_not_requeued

    sig = submitit.JobEnvironment._usr_sig()
    submitits = signal.getsignal(sig)
    if not callable(submitits):
        return  # not under submitit's handler (a local debug executor): nothing to wrap

    def handler(signum, frame):
        try:
            submitits(signum, frame)
        except UncompletedJobError as e:
            note_not_requeued()
            raise NotRequeued(f"timed out more than slurm.max_timeouts={max_timeouts} times, so submitit did "
                              f"not requeue it again ({e}); its finished chunks or checkpoint are kept: rerun "
                              f"submit, with a larger slurm.time_min or slurm.max_timeouts") from e

    signal.signal(sig, handler)


def pending(config_path: str, stage: str) -> list[int]:
    cfg = load_config(config_path)
    man, n_shards = plan_stage(cfg, stage)
    todo = unfinished_shards(man, n_shards)
    if not todo:  # every shard done: its finalize too (redone here if a task's was cut short)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the shard list alone
            finish_stage_if_complete(cfg, stage)
    return todo


def array_slices(shards: list[int], max_array: int) -> list[tuple[int, list[int]]]:
    """(offset, array indices) per array job for these shards: Slurm refuses an index at or
    above MaxArraySize (1001 by default), so shard s runs as index s - offset of its slice
    (slurm/common.sh adds SRLM_SHARD_OFFSET back)."""
    out: list[tuple[int, list[int]]] = []
    for s in sorted(shards):
        if not out or s - out[-1][0] >= max_array:
            out.append((s, []))
        out[-1][1].append(s - out[-1][0])
    return out


def main(argv: list[str] | None = None) -> int:
    from .cli import main_with_help

    return main_with_help(argv, __doc__, _worker)


def _worker(argv: list[str]) -> int:
    if argv[:1] == ["--pending"] and len(argv) == 3:
        print(",".join(map(str, pending(argv[1], argv[2]))))
        return 0
    if argv[:1] == ["--array-slices"] and len(argv) == 3:
        from .launch.slurm import max_array_size

        todo = pending(argv[1], argv[2])
        for offset, indices in array_slices(todo, max_array_size()) if todo else []:
            print(offset, ",".join(map(str, indices)), ",".join(str(offset + i) for i in indices))
        return 0
    if argv[:1] == ["--write-config"]:
        from .config import absolute_paths, parse_args
        from .config import save_config

        print(save_config(absolute_paths(parse_args(argv[1:])[0])))
        return 0
    if argv[:1] == ["--resources"] and len(argv) == 3:
        from .launch.resources import stage_resources

        print(" ".join(stage_resources(load_config(argv[1]), argv[2]).sbatch_options()))
        return 0
    if argv[:1] == ["--stages"] and len(argv) == 2:
        from .stages import requested_stages

        print(" ".join(requested_stages(load_config(argv[1]))))
        return 0
    if len(argv) not in (2, 3) or argv[0].startswith("-"):
        from .cli import UsageError

        raise UsageError(f"expected CONFIG_JSON STAGE [SHARD] or one of --pending, --array-slices, --write-config, --stages, "
                         f"--resources; got {' '.join(argv) or 'nothing'} (python -m srlm_hpc.worker --help)")
    shard = argv[2] if len(argv) == 3 else os.environ.get("SLURM_ARRAY_TASK_ID")
    if shard is None:
        print("error: no SHARD argument and no $SLURM_ARRAY_TASK_ID", file=sys.stderr)
        return 2
    from .preemption import Preempted, term_is_preemption

    term_is_preemption()  # plain sbatch: the script's USR2 trap stops us with TERM, then requeues
    try:
        run(argv[0], argv[1], int(shard))
    except Preempted as e:
        print(f"[{argv[1]}] shard {shard}: {e}; the job is requeued and the shard resumes", flush=True)
        return 0
    except Exception:
        import traceback

        traceback.print_exc()  # the shard's log keeps the whole traceback; the last line says what failed
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
