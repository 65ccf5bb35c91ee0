from srlm_hpc.files import read_json
from srlm_hpc.schema import Response, ResponseSet
from srlm_hpc.stages.pairs import build_pair


def rs(scores, lengths=None, judge=None):
    lengths = lengths or [10] * len(scores)
    judge = judge or [[s] * 3 if s is not None else [None] * 3 for s in scores]
    return ResponseSet("p1", "prompt", [Response(f"p1-r{i}", f"text{i}", lengths[i], judge_scores=judge[i], score=s)
                                        for i, s in enumerate(scores)])


def test_highest_and_lowest_become_chosen_and_rejected():
    pair, why = build_pair(rs([3.0, 4.5, 1.0, 2.0]), iteration=2)
    assert why == "kept"
    assert (pair.chosen, pair.rejected, pair.chosen_score, pair.rejected_score, pair.iter) == ("text1", "text2", 4.5, 1.0, 2)
    assert pair.chosen_judge_scores == [4.5] * 3 and pair.chosen_tokens == 10


def test_all_equal_is_dropped():
    assert build_pair(rs([3.0, 3.0, 3.0, 3.0]), 1) == (None, "all_tied")


def test_missing_scores_are_ignored_not_treated_as_zero():
    pair, _ = build_pair(rs([None, 2.0, None, 4.0]), 1)
    assert (pair.chosen, pair.rejected) == ("text3", "text1")
    assert pair.rejected_score == 2.0  # a parse failure never becomes the rejected response


def test_single_valid_response_is_dropped():
    assert build_pair(rs([None, None, 5.0, None]), 1) == (None, "too_few_scored")
    assert build_pair(rs([None] * 4), 1) == (None, "too_few_scored")


def test_length_control_takes_the_shortest_chosen_and_the_longest_rejected():
    case = rs([5.0, 5.0, 1.0, 1.0], lengths=[40, 12, 8, 30])
    pair, _ = build_pair(case, 1, "shortest")
    assert (pair.chosen, pair.rejected) == ("text1", "text3")
    assert pair.chosen_tokens < pair.rejected_tokens  # a tie never rewards length
    first, _ = build_pair(case, 1, "first")
    assert (first.chosen, first.rejected) == ("text0", "text2")


def test_tie_break_among_several_top_scores():
    case = rs([5.0, 5.0, 5.0, 1.0], lengths=[30, 20, 10, 5])
    assert build_pair(case, 1, "first")[0].chosen == "text0"
    assert build_pair(case, 1, "shortest")[0].chosen == "text2"
    # Two responses tied at 4.0: (3, 4, 5) against (4, 4, 4); the judge agreed with itself on the second.
    var_case = rs([4.0, 4.0, 1.0, 1.0], judge=[[3.0, 4.0, 5.0], [4.0, 4.0, 4.0], [1.0] * 3, [1.0] * 3])
    assert build_pair(var_case, 1, "variance")[0].chosen == "text1"
    assert build_pair(var_case, 1, "first")[0].chosen == "text0"


# ---- truncated responses (finish reason "length") ---------------------------------------------
def cut(case: ResponseSet, *indices: int) -> ResponseSet:
    for i in indices:
        case.responses[i].finish_reason = "length"
    return case


def test_a_truncated_response_is_neither_chosen_nor_rejected_by_default():
    pair, why = build_pair(cut(rs([5.0, 4.0, 2.0, 1.0]), 0, 3), 1)
    assert why == "kept" and (pair.chosen, pair.rejected) == ("text1", "text2")
    assert (pair.chosen_finish_reason, pair.rejected_finish_reason) == ("stop", "stop")


def test_allowed_truncated_responses_take_part_and_say_so():
    pair, why = build_pair(cut(rs([5.0, 4.0, 2.0, 1.0]), 0, 3), 1, allow_truncated=True)
    assert why == "kept" and (pair.chosen, pair.rejected) == ("text0", "text3")
    assert (pair.chosen_finish_reason, pair.rejected_finish_reason) == ("length", "length")


def test_a_prompt_that_has_a_pair_only_through_truncated_responses_is_dropped_as_truncated():
    assert build_pair(cut(rs([5.0, 3.0, 3.0, 1.0]), 0, 3), 1) == (None, "truncated")  # the rest tie
    assert build_pair(cut(rs([5.0, 3.0, None, None]), 0), 1) == (None, "truncated")  # one scored left
    assert build_pair(cut(rs([5.0, 5.0, 5.0, 1.0]), 0, 1, 2, 3), 1) == (None, "truncated")  # all cut
    # no pair with them either: the reason is the one that holds with them allowed
    assert build_pair(cut(rs([3.0, 3.0, 3.0, 3.0]), 0), 1) == (None, "all_tied")
    assert build_pair(cut(rs([3.0, None, None, None]), 0), 1) == (None, "too_few_scored")


def test_the_merge_counts_truncated_responses_and_the_prompts_they_cost(tmp_path):
    """A real merge (judge shards in a real manifest, zstd pair files): stats.json counts every
    truncated response and every prompt dropped for them; no pair holds one unless allowed."""
    from srlm_hpc.stages import pairs
    from tests.stages.test_merge import make_cfg, run_merge, write_judged

    cfg = make_cfg(tmp_path)
    shards = write_judged(cfg, n_shards=2, per_shard=30, seed=5)
    # cut every response whose score is the top of its prompt, and each prompt's r3, in the shard files
    from srlm_hpc.files import write_jsonl
    from srlm_hpc.manifest import StageManifest
    from srlm_hpc.shards import shard_output

    man = StageManifest(cfg.manifest_root, 1, "judge")
    truncated = set()
    for s, recs in enumerate(shards):
        for rec in recs:
            scores = [r["score"] for r in rec["responses"] if r["score"] is not None]
            for r in rec["responses"]:
                if r["response_id"].endswith("-r3") or (scores and r["score"] == max(scores)):
                    r["finish_reason"] = "length"
                    truncated.add(r["response_id"])
                if r["response_id"].endswith("-r1"):
                    r["judge_finish_reasons"] = ["length", "stop", "stop"]
        man.mark_done(s, write_jsonl(shard_output(cfg, "judge", s), recs))
    run_merge(cfg)
    stats = read_json(cfg.stage_dir("pairs") / "stats.json")
    got = list(pairs.iter_pairs(cfg))
    assert not {p.chosen_id for p in got} & truncated and not {p.rejected_id for p in got} & truncated
    assert stats["truncated_responses"] == len(truncated) and stats["truncated_in_pairs"] == 0
    assert stats["truncated_judge_samples"] == 60  # one sample of each r1
    allowed = [build_pair(ResponseSet.from_dict(r), 1, allow_truncated=True)[0] for recs in shards for r in recs]
    lost = sum(a is not None and build_pair(ResponseSet.from_dict(r), 1)[0] is None
               for a, r in zip(allowed, [r for recs in shards for r in recs]))
    assert stats["dropped"]["truncated"] == lost > 0
    # allowed: the same judge shards give pairs with truncated sides, counted
    cfg2 = make_cfg(tmp_path / "allowed", **{"pairs.allow_truncated": "true"})
    man2 = StageManifest(cfg2.manifest_root, 1, "judge")
    man2.write_plan(2, {"shard_size": 30})
    for s, recs in enumerate(shards):
        man2.mark_done(s, write_jsonl(shard_output(cfg2, "judge", s), recs))
    run_merge(cfg2)
    stats2 = read_json(cfg2.stage_dir("pairs") / "stats.json")
    got2 = list(pairs.iter_pairs(cfg2))
    n_cut = sum((p.chosen_finish_reason == "length") + (p.rejected_finish_reason == "length") for p in got2)
    assert stats2["dropped"]["truncated"] == 0 and stats2["truncated_in_pairs"] == n_cut > 0
    assert all((p.chosen_id in truncated) == (p.chosen_finish_reason == "length") for p in got2)
