"""Read the 0-5 score out of a judge's free text.

Judges write "Score: 4", "Score: 4/5", "**Score:** 4", "score of 3", "Score: 3.5", put
curly quotes around it, write several scores (the last "Score:" is the verdict, earlier
ones are usually the rubric walk-through), or nothing at all. A text with no valid score
is None, never 0 or -1: known implementations turned parse failures into the rejected
response of every pair.

Rules, in order:
1. the last `Score:` label (any case, optional "total"/"final", markdown bold and quotes
   around it) followed by a number, optionally "/5";
2. otherwise the last "score of N" (optionally "/5");
3. the number must lie in [0, 5]; a denominator other than 5 is not on this scale.
"""

from __future__ import annotations

import re

_NUM = r"(-?\d+(?:\.\d+)?)"
_DENOM = r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?"
_DECOR = r"[\s*_\"'\u201c\u201d\u2018\u2019`]*"

LABEL_RE = re.compile(
    r"(?:total\s+|final\s+|overall\s+)?score" + _DECOR + r"[:\uff1a=]" + _DECOR + _NUM + _DENOM,
    re.IGNORECASE,
)
SCORE_OF_RE = re.compile(r"score\s+of" + _DECOR + _NUM + _DENOM, re.IGNORECASE)

MIN_SCORE, MAX_SCORE = 0.0, 5.0


def _value(match: re.Match) -> float | None:
    number, denominator = match.group(1), match.group(2)
    if denominator is not None and float(denominator) != MAX_SCORE:
        return None
    value = float(number)
    return value if MIN_SCORE <= value <= MAX_SCORE else None


def parse_score(text: str | None) -> float | None:
    """The judge's score in [0, 5], or None when the text holds no valid score."""
    if not text:
        return None
    labels = list(LABEL_RE.finditer(text))
    if labels:
        return _value(labels[-1])
    score_of = list(SCORE_OF_RE.finditer(text))
    if score_of:
        return _value(score_of[-1])
    return None
