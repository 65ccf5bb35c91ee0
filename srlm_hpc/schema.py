"""The records that pass between stages; every field is named here and only here.

prompts   -> PromptRecord     one generated instruction
responses -> ResponseSet      a prompt with its N sampled responses
judge     -> ResponseSet      the same, each response carrying its judge samples and score
                              (every response and judge sample keeps the engine's finish reason)
pairs     -> PairRecord       (prompt, chosen, rejected): TRL's DPO column names
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields


class SchemaError(ValueError):
    """A record that lacks a field or has the wrong type; the message names both."""


def _from_dict(cls, d: dict, where: str):
    names = {f.name for f in fields(cls)}
    missing = [n for n in names if n not in d and _required(cls, n)]
    if missing:
        raise SchemaError(f"{where}: {cls.__name__} record lacks field(s) {', '.join(sorted(missing))}")
    return cls(**{k: v for k, v in d.items() if k in names})


def _required(cls, name: str) -> bool:
    f = cls.__dataclass_fields__[name]
    return f.default is MISSING and f.default_factory is MISSING


@dataclass
class PromptRecord:
    prompt_id: str  # "i1-s00003-00012": iteration, shard, index: stable across reruns
    prompt: str
    source: str = "self-instruct"

    @classmethod
    def from_dict(cls, d: dict, where: str = "record") -> "PromptRecord":
        return _from_dict(cls, d, where)


@dataclass
class Response:
    response_id: str  # prompt_id + "-r<j>"
    text: str
    n_tokens: int
    finish_reason: str = "stop"  # the engine's: "stop" (ended itself) or "length" (cut at max_tokens)
    judge_texts: list[str] = field(default_factory=list)
    judge_scores: list[float | None] = field(default_factory=list)
    judge_finish_reasons: list[str] = field(default_factory=list)  # per judge sample, as finish_reason
    score: float | None = None  # mean of the parseable judge samples; None when none parsed


@dataclass
class ResponseSet:
    prompt_id: str
    prompt: str
    responses: list[Response]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "record") -> "ResponseSet":
        rs = _from_dict(cls, d, where)
        if not isinstance(rs.responses, list):
            raise SchemaError(f"{where}: field responses must be a list")
        rs.responses = [_from_dict(Response, r, f"{where} responses[{i}]") for i, r in enumerate(rs.responses)]
        return rs


def mean_score(scores: list[float | None]) -> float | None:
    """Mean of the parseable samples (None = unparseable); None when none parsed."""
    valid = [s for s in scores if s is not None]
    return sum(valid) / len(valid) if valid else None


def score_variance(scores: list[float | None]) -> float:
    valid = [s for s in scores if s is not None]
    if len(valid) < 2:
        return math.inf if not valid else 0.0
    m = sum(valid) / len(valid)
    return sum((s - m) ** 2 for s in valid) / len(valid)


@dataclass
class PairRecord:
    prompt: str
    chosen: str
    rejected: str
    prompt_id: str
    chosen_id: str
    rejected_id: str
    chosen_score: float
    rejected_score: float
    chosen_judge_scores: list[float | None]
    rejected_judge_scores: list[float | None]
    chosen_tokens: int
    rejected_tokens: int
    iter: int
    # "length": the response was cut at responses.max_tokens (only with pairs.allow_truncated=true);
    # its training target then ends without the end token. Files written before these fields: "stop".
    chosen_finish_reason: str = "stop"
    rejected_finish_reason: str = "stop"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "record") -> "PairRecord":
        return _from_dict(cls, d, where)
