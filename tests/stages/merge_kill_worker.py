"""The runner's path for the pairs stage (plan, run the shard, mark it done), without torch, so
tests/stages/test_merge.py can SIGKILL and restart it dozens of times a second apart.

    python tests/stages/merge_kill_worker.py work_dir=/tmp/w iter=1 pairs.records_per_file=7
"""

import sys

from srlm_hpc.config import absolute_paths, parse_args
from srlm_hpc.manifest import StageManifest
from srlm_hpc.stages import pairs


def main(argv: list[str]) -> int:
    cfg, _ = parse_args(argv)
    cfg = absolute_paths(cfg)
    man = StageManifest(cfg.manifest_root, cfg.run.iter, "pairs")
    man.write_plan(*pairs.plan(cfg))
    if man.verified_output(man.get(0)) is None:
        man.mark_running(0)
        man.mark_done(0, pairs.run_shard(cfg, 0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
