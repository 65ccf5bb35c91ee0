"""The pairing rule and its statistics: per prompt, chosen = highest mean judge score,
rejected = lowest (SPEC.md step 4; ties, too few scored, truncated responses drop the prompt).

One level below both users: the pairs stage (stages/pairs.py, which re-exports these) and the
streaming merger (merge.py) that applies them to every judged prompt, so neither imports the other.
"""

from __future__ import annotations

from .schema import PairRecord, Response, ResponseSet, score_variance


def _pick(candidates: list[Response], tie_break: str, side: str) -> Response:
    if tie_break == "first" or len(candidates) == 1:
        return candidates[0]
    if tie_break == "variance":
        return min(candidates, key=lambda r: score_variance(r.judge_scores))  # min keeps the first on ties
    if tie_break == "shortest":  # length control: the shortest chosen and the longest rejected, so
        # ties never teach "longer is better" (the paper's length-growth concern)
        if side == "chosen":
            return min(candidates, key=lambda r: r.n_tokens)
        return max(candidates, key=lambda r: r.n_tokens)
    raise ValueError(f"pairs.tie_break={tie_break!r}: expected 'first', 'variance' or 'shortest'")


def _floats(scores: list) -> list[float | None]:
    return [None if x is None else float(x) for x in scores]


TRUNCATED = "length"  # the engine's finish reason of a response cut at responses.max_tokens


def build_pair(rs: ResponseSet, iteration: int, tie_break: str = "first", min_valid: int = 2,
               allow_truncated: bool = False) -> tuple[PairRecord | None, str]:
    """The preference pair of one prompt, or (None, why it was dropped).

    A truncated response is neither chosen nor rejected unless `allow_truncated`: DPO would learn
    "stop mid-sentence" from a chosen one and "never stop there" from a rejected one. A prompt
    that has a pair only with its truncated responses is dropped as "truncated"."""
    if allow_truncated:
        return _pair_of(rs.responses, rs, iteration, tie_break, min_valid)
    finished = [r for r in rs.responses if r.finish_reason != TRUNCATED]
    pair, why = _pair_of(finished, rs, iteration, tie_break, min_valid)
    if pair is None and len(finished) < len(rs.responses):
        if _pair_of(rs.responses, rs, iteration, tie_break, min_valid)[0] is not None:
            return None, "truncated"
    return pair, why


def _pair_of(responses: list[Response], rs: ResponseSet, iteration: int, tie_break: str,
             min_valid: int) -> tuple[PairRecord | None, str]:
    scored = [r for r in responses if r.score is not None]
    if len(scored) < min_valid:
        return None, "too_few_scored"
    hi = max(r.score for r in scored)
    lo = min(r.score for r in scored)
    if hi == lo:
        return None, "all_tied"
    chosen = _pick([r for r in scored if r.score == hi], tie_break, "chosen")
    rejected = _pick([r for r in scored if r.score == lo], tie_break, "rejected")
    # Scores as floats even when a judge record holds ints: `datasets` gives each file its own
    # Arrow schema and refuses to join an int64 column of one file with a double of another.
    return PairRecord(
        prompt=rs.prompt, chosen=chosen.text, rejected=rejected.text, prompt_id=rs.prompt_id,
        chosen_id=chosen.response_id, rejected_id=rejected.response_id,
        chosen_score=float(chosen.score), rejected_score=float(rejected.score),
        chosen_judge_scores=_floats(chosen.judge_scores), rejected_judge_scores=_floats(rejected.judge_scores),
        chosen_tokens=chosen.n_tokens, rejected_tokens=rejected.n_tokens, iter=iteration,
        chosen_finish_reason=chosen.finish_reason, rejected_finish_reason=rejected.finish_reason,
    ), "kept"


# ---- stats.json: running counts in a plain dict of ints (the merge snapshots it per file) --
BINS = [f"{i / 2:.1f}-{(i + 1) / 2:.1f}" for i in range(10)]  # the rubric's 0-5 in steps of 0.5
DROP_REASONS = ("too_few_scored", "all_tied", "truncated")  # build_pair's reasons, always listed
# Responses cut at responses.max_tokens (used or not), judge samples cut at judge.max_tokens, and
# the truncated sides of kept pairs (nonzero only with pairs.allow_truncated=true).
TRUNCATION_COUNTS = ("truncated_responses", "truncated_judge_samples", "truncated_in_pairs")


def new_stats() -> dict:
    return {"prompts": 0, "pairs": 0, "dropped": dict.fromkeys(DROP_REASONS, 0), "responses": 0,
            "scored_responses": 0, "judge_samples": 0, "judge_parsed": 0, "chosen_hist": [0] * len(BINS),
            "rejected_hist": [0] * len(BINS), "chosen_tokens": 0, "rejected_tokens": 0, "chosen_longer": 0,
            **dict.fromkeys(TRUNCATION_COUNTS, 0)}


def add_to_stats(stats: dict, rs: ResponseSet, pair, why: str) -> None:
    samples = parsed = scored = 0
    for r in rs.responses:  # the types later stages rely on, checked where the error can name the line
        js, sc = r.judge_scores, r.score
        if (type(r.text) is not str or type(r.n_tokens) is not int or type(js) is not list
                or type(r.finish_reason) is not str or type(r.judge_finish_reasons) is not list):
            raise TypeError(f"response {r.response_id!r}: text and finish_reason must be strings, n_tokens an "
                            f"integer, judge_scores and judge_finish_reasons lists")
        stats["truncated_responses"] += r.finish_reason == TRUNCATED
        stats["truncated_judge_samples"] += r.judge_finish_reasons.count(TRUNCATED)
        if sc is not None:
            if type(sc) is not float and type(sc) is not int:
                raise TypeError(f"response {r.response_id!r}: score must be a number or null, got {sc!r}")
            scored += 1
        samples += len(js)
        parsed += len(js) - js.count(None)
    stats["prompts"] += 1
    stats["responses"] += len(rs.responses)
    stats["scored_responses"] += scored
    stats["judge_samples"] += samples
    stats["judge_parsed"] += parsed
    if pair is None:
        stats["dropped"][why] = stats["dropped"].get(why, 0) + 1
        return
    stats["pairs"] += 1
    stats["truncated_in_pairs"] += (pair.chosen_finish_reason == TRUNCATED) + (pair.rejected_finish_reason == TRUNCATED)
    stats["chosen_hist"][min(max(int(pair.chosen_score * 2), 0), len(BINS) - 1)] += 1
    stats["rejected_hist"][min(max(int(pair.rejected_score * 2), 0), len(BINS) - 1)] += 1
    stats["chosen_tokens"] += pair.chosen_tokens
    stats["rejected_tokens"] += pair.rejected_tokens
    stats["chosen_longer"] += pair.chosen_tokens > pair.rejected_tokens


def stats_report(stats: dict, iteration: int) -> dict:
    """stats.json: what was kept, why the rest was dropped, and the length signal (SPEC: report
    it every iteration; length growth is the known failure of self-rewarding)."""
    n, s = stats["pairs"], stats
    mean_c, mean_r = (s["chosen_tokens"] / n, s["rejected_tokens"] / n) if n else (0.0, 0.0)
    return {
        "iter": iteration, "prompts": s["prompts"], "pairs": n, "dropped": dict(sorted(s["dropped"].items())),
        "responses": s["responses"], "scored_responses": s["scored_responses"],
        "judge_samples": s["judge_samples"], "judge_parsed": s["judge_parsed"],
        "judge_parse_rate": s["judge_parsed"] / s["judge_samples"] if s["judge_samples"] else 0.0,
        # dropped["truncated"] is the prompts that had a pair only through truncated responses
        **{k: s[k] for k in TRUNCATION_COUNTS},
        "score_bins": BINS, "chosen_score_hist": s["chosen_hist"], "rejected_score_hist": s["rejected_hist"],
        "mean_chosen_tokens": mean_c, "mean_rejected_tokens": mean_r,
        "length_ratio": mean_c / mean_r if mean_r else None,  # chosen / rejected mean tokens
        "chosen_longer_frac": s["chosen_longer"] / n if n else None,
    }
