"""The paper's evaluation numbers (SPEC.md, "Evaluation") as pure functions of plain lists.

Reward modeling: each held-out prompt has replies with a human rank (0 = best) and a judge
score (mean of the parseable samples; None when none parsed). Conventions, the same in
every function here:

- A reply whose score is None is *missing*, never 0. In a pair or a ranking it counts as a
  disagreement (the judge failed to order it); in the correlations it is left out.
- A tie between judge scores counts as a disagreement (SPEC.md) wherever an order is asked
  for: pairwise accuracy, exact match, and the EFT agreement filter.
- Two replies with the same human rank are not a pair (oasst1 ranks siblings distinctly,
  so this only happens in malformed data); such a prompt can still match exactly.
- Spearman and Kendall tau correlate the judge score with the *negated* human rank, so a
  positive value means agreement (higher score, better rank). Ties get average ranks
  (Spearman) and the tau-b correction (Kendall), as scipy.stats.spearmanr / kendalltau do.
- Pooled versus per prompt. `spearman`, `kendall_tau` and `pairwise_accuracy` are *pooled*:
  one coefficient over every scored reply of every prompt (one accuracy over every pair).
  A pooled correlation mostly measures calibration across prompts (is a 4 on one prompt
  better than a 3 on another?), which no human rank compares. The `*_per_prompt` numbers
  average one value per prompt instead (a prompt whose coefficient is undefined, e.g. all
  scores equal, is left out and counted in `n_prompts_correlated`); with 2-3 replies per
  prompt a per-prompt coefficient is coarse (+-1, +-0.5, 0). Exact match is per prompt by
  nature; `five_best_per_prompt` averages, over prompts with a reply scored 5, the share of
  those that are the human best.

Head-to-head: a judge compares answers of a new and an old model in both orders; an order
whose verdict does not parse makes the comparison *unparsed* (reported, not counted in
win/tie/loss); two orders that disagree make a tie.

    from srlm_hpc.metrics import reward_modeling
    reward_modeling([([0, 1, 2], [4.0, 3.0, None]), ...])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Score = float | None
Prompt = tuple[Sequence[int], Sequence[Score]]  # (human ranks, judge scores) of one prompt's replies


def _check(ranks: Sequence[int], scores: Sequence[Score]) -> None:
    if len(ranks) != len(scores):
        raise ValueError(f"ranks and scores differ in length ({len(ranks)} vs {len(scores)}): "
                         f"one score per ranked reply is needed")


def pair_outcomes(ranks: Sequence[int], scores: Sequence[Score]) -> tuple[int, int]:
    """(pairs where the judge agrees with the humans, pairs) of one prompt; ties and missing disagree."""
    _check(ranks, scores)
    agree = total = 0
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] == ranks[j]:
                continue
            total += 1
            si, sj = scores[i], scores[j]
            if si is None or sj is None or si == sj:
                continue
            agree += (si > sj) == (ranks[i] < ranks[j])
    return agree, total


def pairwise_accuracy(prompts: Iterable[Prompt]) -> float | None:
    """Share of same-prompt reply pairs the judge orders as the humans did; None if no pair."""
    agree = total = 0
    for ranks, scores in prompts:
        a, t = pair_outcomes(ranks, scores)
        agree, total = agree + a, total + t
    return agree / total if total else None


def ranking_matches(ranks: Sequence[int], scores: Sequence[Score]) -> bool:
    """True when every reply is scored and the scores order all replies exactly as the human
    ranks do, with no tie between replies of different rank. The exact-match metric and the
    EFT agreement filter both use this."""
    _check(ranks, scores)
    agree, total = pair_outcomes(ranks, scores)
    return all(s is not None for s in scores) and agree == total


def exact_match(prompts: Iterable[Prompt]) -> float | None:
    """Share of prompts (with at least two replies) whose whole ranking the judge reproduces."""
    hits = n = 0
    for ranks, scores in prompts:
        if len(ranks) < 2:
            continue
        n += 1
        hits += ranking_matches(ranks, scores)
    return hits / n if n else None


def five_best(prompts: Iterable[Prompt], top: float = 5.0) -> tuple[float | None, int]:
    """(share of replies scored `top` that are their prompt's human best, how many were scored `top`).

    The human best is the lowest rank among the prompt's replies (rank 0 unless that reply was
    removed). A mean score counts only when it equals `top`, i.e. every parsed sample said 5."""
    best = n = 0
    for ranks, scores in prompts:
        _check(ranks, scores)
        if not ranks:
            continue
        top_rank = min(ranks)
        for r, s in zip(ranks, scores):
            if s is not None and s >= top:
                n += 1
                best += r == top_rank
    return (best / n if n else None), n


def _pooled(prompts: Iterable[Prompt]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for ranks, scores in prompts:
        _check(ranks, scores)
        for r, s in zip(ranks, scores):
            if s is not None:
                xs.append(float(s))
                ys.append(-float(r))  # higher = better on both axes
    return xs, ys


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the positions they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None  # a constant side: the coefficient is undefined (scipy returns nan)
    return sxy / math.sqrt(sxx * syy)


def spearman_xy(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson on average ranks."""
    return pearson(average_ranks(xs), average_ranks(ys))


def kendall_tau_b(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's tau-b, O(n^2): (C - D) / sqrt((n0 - n1)(n0 - n2)), n1/n2 = pairs tied in x/y.
    A few thousand replies take well under a second; the paper's eval set has 541."""
    n = len(xs)
    conc = disc = tie_x = tie_y = 0
    for i in range(n):
        xi, yi = xs[i], ys[i]
        for j in range(i + 1, n):
            dx, dy = xi - xs[j], yi - ys[j]
            if dx == 0 and dy == 0:
                tie_x += 1
                tie_y += 1
            elif dx == 0:
                tie_x += 1
            elif dy == 0:
                tie_y += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - tie_x) * (n0 - tie_y))
    return (conc - disc) / denom if denom else None


def spearman(prompts: Iterable[Prompt]) -> float | None:
    """Pooled Spearman rho between judge score and negated human rank (positive = agreement)."""
    return spearman_xy(*_pooled(prompts))


def kendall_tau(prompts: Iterable[Prompt]) -> float | None:
    """Pooled Kendall tau-b between judge score and negated human rank (positive = agreement)."""
    return kendall_tau_b(*_pooled(prompts))


def per_prompt(prompts: Iterable[Prompt], coefficient) -> tuple[float | None, int]:
    """(mean over prompts of coefficient(scores, -ranks) on that prompt's scored replies, prompts
    where it is defined)."""
    values = []
    for ranks, scores in prompts:
        xs, ys = _pooled([(ranks, scores)])
        v = coefficient(xs, ys)
        if v is not None:
            values.append(v)
    return (sum(values) / len(values) if values else None), len(values)


def pairwise_accuracy_per_prompt(prompts: Iterable[Prompt]) -> float | None:
    """Mean over prompts (with a pair) of that prompt's pairwise accuracy."""
    accs = [a / t for a, t in (pair_outcomes(r, s) for r, s in prompts) if t]
    return sum(accs) / len(accs) if accs else None


def five_best_per_prompt(prompts: Iterable[Prompt], top: float = 5.0) -> float | None:
    """Mean over prompts with a reply scored `top` of the share of those that are the human best."""
    shares = []
    for ranks, scores in prompts:
        share, n = five_best([(ranks, scores)], top)
        if n:
            shares.append(share)
    return sum(shares) / len(shares) if shares else None


def parse_rate(samples: Iterable[Score]) -> float | None:
    """Share of judge samples that gave a valid score."""
    samples = list(samples)
    return sum(s is not None for s in samples) / len(samples) if samples else None


def reward_modeling(prompts: Iterable[Prompt], samples: Iterable[Score] = ()) -> dict:
    """Every reward-modeling number at once; fractions in [0, 1] (the report prints %). Plain
    names are pooled over replies (pairs); `*_per_prompt` are averages of per-prompt values."""
    prompts = [(list(r), list(s)) for r, s in prompts]
    fb, n_five = five_best(prompts)
    n_pairs = sum(pair_outcomes(r, s)[1] for r, s in prompts)
    rho, n_rho = per_prompt(prompts, spearman_xy)
    tau, _ = per_prompt(prompts, kendall_tau_b)
    return {
        "n_prompts": len(prompts), "n_replies": sum(len(r) for r, _ in prompts), "n_pairs": n_pairs,
        "n_scored": sum(s is not None for _, sc in prompts for s in sc),
        "pairwise_accuracy": pairwise_accuracy(prompts), "five_best": fb, "n_five": n_five,
        "exact_match": exact_match(prompts), "spearman": spearman(prompts), "kendall_tau": kendall_tau(prompts),
        "parse_rate": parse_rate(samples),
        "pairwise_accuracy_per_prompt": pairwise_accuracy_per_prompt(prompts),
        "five_best_per_prompt": five_best_per_prompt(prompts), "exact_match_per_prompt": exact_match(prompts),
        "spearman_per_prompt": rho, "kendall_tau_per_prompt": tau, "n_prompts_correlated": n_rho,
    }


# ---- head-to-head ------------------------------------------------------------------------------
VERDICTS = ("A", "B", "tie")
OUTCOMES = ("win", "tie", "loss")


def outcome_of(verdict: str | None, new_is: str) -> str | None:
    """A verdict ("A", "B", "tie", None) seen from the new model, which was shown as `new_is`."""
    if verdict is None:
        return None
    if verdict not in VERDICTS or new_is not in ("A", "B"):
        raise ValueError(f"verdict {verdict!r} / new_is {new_is!r}: expected one of {VERDICTS} / 'A' or 'B'")
    if verdict == "tie":
        return "tie"
    return "win" if verdict == new_is else "loss"


def combine_orders(new_first: str | None, new_second: str | None) -> str | None:
    """Outcome of one comparison from its two verdicts: the first with the new model's answer
    shown as A, the second with it shown as B. Unparsed in either order -> None; orders that
    disagree -> "tie" (SPEC.md)."""
    a, b = outcome_of(new_first, "A"), outcome_of(new_second, "B")
    if a is None or b is None:
        return None
    return a if a == b else "tie"


def head_to_head(outcomes: Iterable[str | None]) -> dict:
    """Counts and shares of win / tie / loss for the new model; unparsed comparisons apart."""
    outcomes = list(outcomes)
    counts = {o: outcomes.count(o) for o in OUTCOMES}
    decided = sum(counts.values())
    return {**counts, "unparsed": outcomes.count(None), "n": len(outcomes),
            **{f"{o}_rate": counts[o] / decided if decided else None for o in OUTCOMES}}


# ---- lengths -------------------------------------------------------------------------------------
def length_stats(lengths: Sequence[int]) -> dict:
    """Mean, median, 90th percentile (nearest rank) and count of response lengths (tokens or
    characters, whichever is given)."""
    xs = sorted(lengths)
    if not xs:
        return {"n": 0, "mean": None, "median": None, "p90": None}
    mid = len(xs) // 2
    median = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    return {"n": len(xs), "mean": sum(xs) / len(xs), "median": median,
            "p90": xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)]}
