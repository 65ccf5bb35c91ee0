"""Stage `pairs` (alias `merge`): per prompt, chosen = highest mean judge score, rejected = lowest.

SPEC.md step 4: ties between highest and lowest drop the prompt; so do prompts with fewer
than `pairs.min_valid` scored responses. A response cut at responses.max_tokens (finish reason
"length") takes no part unless `pairs.allow_truncated`. Among several equally top (or bottom) responses
`pairs.tie_break` picks: the first, the one whose judge samples agree most (lowest
variance), or by length (length control: the shortest chosen, the longest rejected). Output, under <work_dir>/iter<k>/pairs/:
pairs-<NNNNN>.jsonl.zst (zstd JSON Lines with TRL's column names prompt, chosen, rejected,
plus ids, scores, judge samples, token lengths and the iteration), stats.json, and
index.json, the stage's output: files, record counts, sha256 and source shards of each.
The streaming, verification and resume machinery is srlm_hpc/merge.py.

    python -m srlm_hpc.submit stage=merge iter=1 preset=demo
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..config import Config
from ..files import FileInfo, iter_jsonl, read_json, verify_file
from ..merge import merge
from ..pair_rules import (BINS, DROP_REASONS, TRUNCATED, TRUNCATION_COUNTS, add_to_stats,  # noqa: F401
                          build_pair, new_stats, stats_report)  # re-exported: the rule is this stage's
from ..schema import PairRecord
from ..shards import upstream_outputs

STAGE, UPSTREAM = "pairs", "judge"


def plan(cfg: Config) -> tuple[int, dict]:
    """One shard: the merge is a single stream (the judge stage is where the parallelism is).
    From the config alone, so the whole iteration can be queued before judge has run."""
    from .judge import plan as judge_plan

    return 1, {"judge_shards": judge_plan(cfg)[0]}


def pairs_path(cfg: Config, index: int = 0) -> Path:
    return cfg.stage_dir(STAGE) / f"pairs-{index:05d}.jsonl.zst"


def indexed_files(cfg: Config) -> list[tuple[Path, dict]]:
    """(path, index.json entry) of each pairs file of iteration cfg.run.iter, in order.
    index.json is checked against the pairs manifest; the files themselves are not read."""
    out = []
    for info in upstream_outputs(cfg, STAGE):
        index = read_json(info.path)
        out += [(Path(info.path).parent / f["path"], f) for f in index["files"]]
    return out


def pair_files(cfg: Config) -> list[Path]:
    """The pairs files of iteration cfg.run.iter, in order, each checked against index.json
    (size, sha256), itself checked against the pairs manifest. For `datasets`/TRL:
    load_dataset("json", data_files=[str(p) for p in pair_files(cfg)])."""
    files = indexed_files(cfg)
    for path, f in files:
        verify_file(path, f["bytes"], f["sha256"])
    return [path for path, _ in files]


def iter_pairs(cfg: Config, start: int = 0, stop: int | None = None) -> Iterator[PairRecord]:
    """Pairs [start, stop) of iteration cfg.run.iter, in file order, from verified files.
    DPO, ref_logps and the summary read pairs through this and nothing else. Only the files
    holding that range are verified and read (index.json has each file's record count), so
    a ref_logps shard costs its own pairs, not every pair before it."""
    offset = 0
    for path, f in indexed_files(cfg):
        lo, hi = offset, offset + f["records"]  # this file's records, counted across the files
        offset = hi
        if hi <= start or (stop is not None and lo >= stop):
            continue
        verify_file(path, f["bytes"], f["sha256"])
        for i, rec in enumerate(iter_jsonl(path)):
            if stop is not None and lo + i >= stop:
                return
            if lo + i >= start:
                yield PairRecord.from_dict(rec, where=f"{path}:{i + 1}")


def run_shard(cfg: Config, shard: int) -> FileInfo:
    """The whole merge; returns index.json's FileInfo with records = the number of pairs."""
    return merge(cfg)
