"""srlm_hpc.metrics: hand-computed cases, and the correlations against scipy.stats on the same data."""

from __future__ import annotations

import math
import random

import pytest

from srlm_hpc.metrics import (
    average_ranks,
    combine_orders,
    exact_match,
    five_best,
    head_to_head,
    kendall_tau,
    kendall_tau_b,
    length_stats,
    pair_outcomes,
    pairwise_accuracy,
    parse_rate,
    ranking_matches,
    reward_modeling,
    spearman,
    spearman_xy,
)

scipy_stats = pytest.importorskip("scipy.stats")

# Four prompts, written out by hand (ranks, scores):
PROMPTS = [
    ([0, 1, 2], [5.0, 4.0, 1.0]),   # perfect: 3/3 pairs, exact match, one 5 on rank 0
    ([0, 1], [3.0, 3.0]),           # tie: 0/1 pair, no match
    ([0, 1, 2], [2.0, 5.0, None]),  # (0,1) wrong, (0,2) and (1,2) missing: 0/3, a 5 on rank 1
    ([1, 0], [2.0, 4.0]),           # stored rank 1 first; judge agrees: 1/1, match
]


def test_pairwise_accuracy_by_hand():
    assert [pair_outcomes(r, s) for r, s in PROMPTS] == [(3, 3), (0, 1), (0, 3), (1, 1)]
    assert pairwise_accuracy(PROMPTS) == pytest.approx(4 / 8)
    assert pairwise_accuracy([]) is None
    assert pair_outcomes([0, 0, 1], [1.0, 2.0, 0.5]) == (2, 2)  # equal human ranks are not a pair


def test_exact_match_and_five_best_by_hand():
    assert [ranking_matches(r, s) for r, s in PROMPTS] == [True, False, False, True]
    assert exact_match(PROMPTS) == pytest.approx(2 / 4)
    assert exact_match([([0], [5.0])]) is None  # one reply has no ranking to match
    assert five_best(PROMPTS) == (pytest.approx(1 / 2), 2)
    assert five_best([([0, 1], [4.67, 4.0])]) == (None, 0)  # a mean below 5 is not a 5
    assert five_best([([1, 2], [5.0, 1.0])]) == (1.0, 1)  # best rank left after a removed rank 0


def test_parse_rate_and_length_check():
    assert parse_rate([1.0, None, 3.0, None]) == 0.5
    assert parse_rate([]) is None
    with pytest.raises(ValueError, match="differ in length"):
        pairwise_accuracy([([0, 1], [1.0])])


def _random_prompts(rng: random.Random, n: int) -> list:
    out = []
    for _ in range(n):
        k = rng.choice([2, 3, 3, 4])
        ranks = rng.sample(range(k), k)
        # Scores from the rubric's coarse scale (many ties) and some missing, as judges give.
        scores = [None if rng.random() < 0.1 else rng.choice([1.0, 2.0, 3.0, 3.5, 4.0, 4.0, 5.0]) for _ in ranks]
        out.append((ranks, scores))
    return out


def _scipy_inputs(prompts):
    xs = [s for _, sc in prompts for s in sc if s is not None]
    ys = [-r for rk, sc in prompts for r, s in zip(rk, sc) if s is not None]
    return xs, ys


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy(seed):
    prompts = _random_prompts(random.Random(seed), 120)
    xs, ys = _scipy_inputs(prompts)
    rho = scipy_stats.spearmanr(xs, ys).statistic
    tau = scipy_stats.kendalltau(xs, ys).statistic  # tau-b, scipy's default
    # Same formula, different summation order: agreement to ~1e-15; 1e-12 leaves room.
    assert spearman(prompts) == pytest.approx(rho, abs=1e-12)
    assert kendall_tau(prompts) == pytest.approx(tau, abs=1e-12)


def test_sign_convention_positive_means_agreement():
    good = [([0, 1, 2], [5.0, 3.0, 1.0])] * 3
    assert spearman(good) > 0.9 and kendall_tau(good) > 0.9
    bad = [([0, 1, 2], [1.0, 3.0, 5.0])] * 3
    assert spearman(bad) < -0.9 and kendall_tau(bad) < -0.9


def test_average_ranks_and_undefined_cases():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert list(scipy_stats.rankdata([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    assert spearman_xy([1.0, 1.0, 1.0], [0.0, -1.0, -2.0]) is None  # scipy: nan
    with pytest.warns(scipy_stats.ConstantInputWarning):
        assert math.isnan(scipy_stats.spearmanr([1.0, 1.0, 1.0], [0.0, -1.0, -2.0]).statistic)
    assert kendall_tau_b([2.0], [0.0]) is None
    assert spearman([]) is None


def test_reward_modeling_bundle():
    m = reward_modeling(PROMPTS, samples=[5.0, None, 4.0, 4.0])
    assert m["n_prompts"] == 4 and m["n_replies"] == 10 and m["n_pairs"] == 8 and m["n_scored"] == 9
    assert m["pairwise_accuracy"] == 0.5 and m["exact_match"] == 0.5 and m["five_best"] == 0.5
    assert m["parse_rate"] == 0.75
    xs, ys = _scipy_inputs(PROMPTS)
    assert m["spearman"] == pytest.approx(scipy_stats.spearmanr(xs, ys).statistic, abs=1e-12)
    assert m["kendall_tau"] == pytest.approx(scipy_stats.kendalltau(xs, ys).statistic, abs=1e-12)


@pytest.mark.parametrize("first,second,expected", [
    ("A", "B", "win"),     # new shown first wins, new shown second wins
    ("B", "A", "loss"),
    ("tie", "tie", "tie"),
    ("A", "A", "tie"),     # position bias: each order prefers the first answer -> disagreement
    ("A", "tie", "tie"),
    ("B", "tie", "tie"),
    (None, "B", None),
    ("A", None, None),
])
def test_combine_orders(first, second, expected):
    assert combine_orders(first, second) == expected


def test_head_to_head_counts():
    h = head_to_head(["win", "win", "tie", "loss", None])
    assert (h["win"], h["tie"], h["loss"], h["unparsed"], h["n"]) == (2, 1, 1, 1, 5)
    assert h["win_rate"] == 0.5 and h["loss_rate"] == 0.25
    assert head_to_head([None])["win_rate"] is None
    with pytest.raises(ValueError, match="verdict"):
        combine_orders("C", "A")


def test_length_stats():
    assert length_stats([4, 1, 3, 2]) == {"n": 4, "mean": 2.5, "median": 2.5, "p90": 4}
    assert length_stats([])["mean"] is None
