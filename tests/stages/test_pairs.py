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
