"""Read the 0-5 score out of a judge's free text.

Judges write "Score: 4", "Score: 4/5", "**Score:** 4", "score of 3", "Score: 3.5", put
curly quotes around it, write several scores (the last "Score:" is the verdict, earlier
ones are usually the rubric walk-through), or nothing at all. A text with no valid score
is None, never 0 or -1: known implementations turned parse failures into the rejected
response of every pair.

Rules, in order:
1. the last `Score:` label (any case, optional "total"/"final"/"overall", markdown bold and
   quotes around it) is the verdict. "score" must be a word of its own: `underscore: 2` is
   no label. When no number follows that last label (`Score: N/A`, `Score: <total points>`),
   the score is missing, whatever earlier labels said;
2. otherwise the last "score of N";
3. after the label, arithmetic is read to its result: `1 + 1 + 1 = 3` is 3 (the number after
   the last "="); a chain of additions with no "=" is their sum (the rubric adds points);
   any other operator without "=" (`4 - 1`, `3-4`, `2 * 2`) is missing. Never the first term;
4. the number must lie in [0, 5]; a denominator other than 5 is not on this scale.
"""

from __future__ import annotations

import re

_NUM = r"-?\d+(?:\.\d+)?"
_DENOM = r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?"
_DECOR = r"[\s*_\"'\u201c\u201d\u2018\u2019`]*"
_NOT_AFTER_LETTER = r"(?<![^\W\d_])"  # "score" starts a word: not "underscore", yet "final_score" is one

LABEL_RE = re.compile(
    _NOT_AFTER_LETTER + r"(?:(?:total|final|overall)\s+)?score" + _DECOR + r"[:\uff1a=]" + _DECOR,
    re.IGNORECASE,
)
SCORE_OF_RE = re.compile(_NOT_AFTER_LETTER + r"score\s+of" + _DECOR, re.IGNORECASE)

# What may follow the label: a number with an optional denominator, then any number of
# (operator, number) terms, then an optional "= result". An operator counts only when a
# number follows it: "Score: 4 - good" is a dash, "Score: 3**" is markdown.
_OP = r"[+\-*\u00d7\u2013\u2212]"
_FIRST_RE = re.compile(r"(" + _NUM + r")" + _DENOM)
_TERM_RE = re.compile(r"[ \t]*(" + _OP + r")[ \t]*(" + _NUM + r")")
_RESULT_RE = re.compile(r"[ \t]*=[ \t]*\**[ \t]*(" + _NUM + r")" + _DENOM)

MIN_SCORE, MAX_SCORE = 0.0, 5.0


def _on_scale(number: str, denominator: str | None) -> float | None:
    if denominator is not None and float(denominator) != MAX_SCORE:
        return None
    value = float(number)
    return value if MIN_SCORE <= value <= MAX_SCORE else None


def _read_value(text: str, pos: int) -> float | None:
    """The score written at text[pos:], right after a label; None when there is none."""
    first = _FIRST_RE.match(text, pos)
    if first is None:
        return None
    ops, end = [], first.end()
    while (term := _TERM_RE.match(text, end)) is not None:
        ops.append((term.group(1), float(term.group(2))))
        end = term.end()
    results = []
    while (result := _RESULT_RE.match(text, end)) is not None:
        results.append(result)
        end = result.end()
    if results:  # "1 + 1 + 1 = 3": the stated result (the last one of "= 2 + 1 = 3" chains)
        return _on_scale(results[-1].group(1), results[-1].group(2))
    if not ops:
        return _on_scale(first.group(1), first.group(2))
    if first.group(2) is None and all(op == "+" for op, _ in ops):  # "1 + 1 + 1": the points added up
        return _on_scale(str(float(first.group(1)) + sum(v for _, v in ops)), None)
    return None  # "4 - 1", "3-4" (a range?), "2 * 2" without a stated result: unreadable


def parse_score(text: str | None) -> float | None:
    """The judge's score in [0, 5], or None when the text holds no valid score."""
    if not text:
        return None
    labels = list(LABEL_RE.finditer(text))
    if labels:
        return _read_value(text, labels[-1].end())
    score_of = list(SCORE_OF_RE.finditer(text))
    if score_of:
        return _read_value(text, score_of[-1].end())
    return None
