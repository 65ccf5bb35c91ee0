"""Stage `pairs`: per prompt, chosen = highest mean judge score, rejected = lowest.

SPEC.md step 4: ties between highest and lowest drop the prompt; so do prompts with fewer
than `pairs.min_valid` scored responses. Among several equally top (or bottom) responses
`pairs.tie_break` picks: the first, the one whose judge samples agree most (lowest
variance), or the shortest (length control). Output: zstd-compressed JSON Lines with
TRL's column names (prompt, chosen, rejected) plus ids, scores and token lengths.

    python -m srlm_hpc.submit stage=pairs iter=1 preset=demo
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from ..config import Config
from ..files import FileInfo, atomic_write_json, iter_jsonl
from ..schema import PairRecord, Response, ResponseSet, score_variance
from ..shards import upstream_outputs

STAGE, UPSTREAM = "pairs", "judge"


def plan(cfg: Config) -> tuple[int, dict]:
    return 1, {"upstream_shards": len(upstream_outputs(cfg, UPSTREAM))}


def _pick(candidates: list[Response], tie_break: str) -> Response:
    if tie_break == "first" or len(candidates) == 1:
        return candidates[0]
    if tie_break == "variance":
        return min(candidates, key=lambda r: score_variance(r.judge_scores))  # min keeps the first on ties
    if tie_break == "shortest":
        return min(candidates, key=lambda r: r.n_tokens)
    raise ValueError(f"pairs.tie_break={tie_break!r}: expected 'first', 'variance' or 'shortest'")


def build_pair(rs: ResponseSet, iteration: int, tie_break: str = "first",
               min_valid: int = 2) -> tuple[PairRecord | None, str]:
    """The preference pair of one prompt, or (None, why it was dropped)."""
    scored = [r for r in rs.responses if r.score is not None]
    if len(scored) < min_valid:
        return None, "too_few_scored"
    hi = max(r.score for r in scored)
    lo = min(r.score for r in scored)
    if hi == lo:
        return None, "all_tied"
    chosen = _pick([r for r in scored if r.score == hi], tie_break)
    rejected = _pick([r for r in scored if r.score == lo], tie_break)
    return PairRecord(
        prompt=rs.prompt, chosen=chosen.text, rejected=rejected.text, prompt_id=rs.prompt_id,
        chosen_id=chosen.response_id, rejected_id=rejected.response_id,
        chosen_score=chosen.score, rejected_score=rejected.score,
        chosen_judge_scores=chosen.judge_scores, rejected_judge_scores=rejected.judge_scores,
        chosen_tokens=chosen.n_tokens, rejected_tokens=rejected.n_tokens, iter=iteration,
    ), "kept"


def pairs_path(cfg: Config, index: int = 0):
    return cfg.stage_dir(STAGE) / f"pairs-{index:05d}.jsonl.zst"


def iter_pairs(cfg: Config):
    """Every pair of iteration cfg.run.iter, in file order, from verified files. DPO,
    ref_logps and the summary read pairs through this and nothing else."""
    for info in upstream_outputs(cfg, STAGE):
        for i, rec in enumerate(iter_jsonl(info.path), 1):
            yield PairRecord.from_dict(rec, where=f"{info.path}:{i}")


def run_shard(cfg: Config, shard: int) -> FileInfo:
    from ..files import write_jsonl

    reasons: Counter[str] = Counter()
    judged = parsed = 0
    pairs = []
    for info in upstream_outputs(cfg, UPSTREAM):
        for i, rec in enumerate(iter_jsonl(info.path), 1):
            rs = ResponseSet.from_dict(rec, where=f"{info.path}:{i}")
            for r in rs.responses:
                judged += len(r.judge_scores)
                parsed += sum(s is not None for s in r.judge_scores)
            pair, why = build_pair(rs, cfg.run.iter, cfg.pairs.tie_break, cfg.pairs.min_valid)
            reasons[why] += 1
            if pair is not None:
                pairs.append(asdict(pair))
    info = write_jsonl(pairs_path(cfg), pairs)
    atomic_write_json(cfg.stage_dir(STAGE) / "stats.json", {
        "pairs": len(pairs), "prompts": sum(reasons.values()), "dropped": {k: v for k, v in reasons.items() if k != "kept"},
        "judge_samples": judged, "judge_parse_rate": parsed / judged if judged else 0.0,
    })
    return info
