"""Open Assistant (oasst1) message rows -> (prompt, response) pairs.

oasst1 is a forest of conversation trees, one message per row: a prompter message with no
parent is a tree's root, assistant replies point at it through `parent_id`, and sibling
replies carry a human `rank` (0 = best; null when unranked). SPEC.md's IFT set is the
first conversational turn of each English tree with its rank-0 reply; the shipped seed
files (srlm_hpc/seed/ift.jsonl and eft.jsonl, written by scripts/write_seed.py) use the
same schema, so one reader serves both.

    pairs = load_seed("ift")        # [{"id", "tree_id", "prompt", "response"}, ...]
    rows = read_messages("oasst1_train.jsonl.gz")
    pairs, counts = select_first_turn(rows, lang="en", rank=0)
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

# Every field of an oasst1 message row, in the official order.
OASST_FIELDS = (
    "message_id", "parent_id", "user_id", "created_date", "text", "role", "lang", "review_count",
    "review_result", "deleted", "rank", "synthetic", "model_name", "detoxify", "message_tree_id",
    "tree_state", "emojis", "labels",
)
# The fields this reader relies on; a row missing one of them is an error. The others are
# carried through untouched (and may be absent, as in trimmed exports).
REQUIRED_FIELDS = ("message_id", "parent_id", "text", "role", "lang", "deleted", "rank", "message_tree_id")
ROLES = ("prompter", "assistant")
SEED_KINDS = ("ift", "eft")


class OasstFormatError(ValueError):
    """A malformed oasst1 row; the message starts with `file:line:`."""


@dataclass
class FilterCounts:
    """How many trees each filter step removed, in the order the steps run."""

    trees: int = 0  # root prompter messages seen
    deleted: int = 0  # root deleted, or its reply of the wanted rank deleted
    non_english: int = 0  # root language is not the wanted one ("en" unless told otherwise)
    no_ranked_reply: int = 0  # no assistant reply with the wanted rank
    kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _check_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise OasstFormatError(f"{where}: expected a JSON object (one oasst1 message), got {type(row).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in row]
    if missing:
        raise OasstFormatError(f"{where}: missing field {missing[0]!r} (an oasst1 message needs "
                               f"{', '.join(REQUIRED_FIELDS)}; missing: {', '.join(missing)})")
    if not isinstance(row["message_id"], str) or not row["message_id"]:
        raise OasstFormatError(f"{where}: field 'message_id' must be a non-empty string, got {row['message_id']!r}")
    if row["parent_id"] is not None and not isinstance(row["parent_id"], str):
        raise OasstFormatError(f"{where}: field 'parent_id' must be a string or null, got {row['parent_id']!r}")
    if not isinstance(row["text"], str):
        raise OasstFormatError(f"{where}: field 'text' must be a string, got {type(row['text']).__name__}")
    if row["role"] not in ROLES:
        raise OasstFormatError(f"{where}: field 'role' must be one of {ROLES}, got {row['role']!r}")
    if not isinstance(row["deleted"], bool):
        raise OasstFormatError(f"{where}: field 'deleted' must be true or false, got {row['deleted']!r}")
    rank = row["rank"]
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank != int(rank)):
        raise OasstFormatError(f"{where}: field 'rank' must be an integer or null, got {rank!r}")
    return row


def read_messages(path: str | Path) -> list[dict]:
    """All message rows of an oasst1 .jsonl or .jsonl.gz file, in file order.

    Blank lines are skipped. Raises OasstFormatError (a ValueError) naming `file:line` on a
    line that is not JSON, not an object, or lacks a field in REQUIRED_FIELDS.
    """
    path = Path(path)
    rows = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise OasstFormatError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            rows.append(_check_row(row, where))
    return rows


def select_first_turn(messages: Iterable[dict], lang: str = "en", rank: int = 0) -> tuple[list[dict], FilterCounts]:
    """First-turn pairs and the per-step filter counts.

    Per tree (root = prompter message with parent_id null, in file order): drop it if the
    root is deleted, if its language is not `lang`, if no assistant child has rank `rank`,
    or if that child is deleted (a deleted best reply is not replaced by the next rank).
    Later turns (prompter messages under an assistant reply) are never used.
    """
    messages = list(messages)
    children: dict[str, list[dict]] = defaultdict(list)
    for m in messages:
        if m["parent_id"] is not None:
            children[m["parent_id"]].append(m)
    counts = FilterCounts()
    pairs = []
    for root in messages:
        if root["parent_id"] is not None or root["role"] != "prompter":
            continue
        counts.trees += 1
        if root["deleted"]:
            counts.deleted += 1
            continue
        if root["lang"] != lang:
            counts.non_english += 1
            continue
        ranked = [c for c in children.get(root["message_id"], ())
                  if c["role"] == "assistant" and c["rank"] is not None and c["rank"] == rank]
        if not ranked:
            counts.no_ranked_reply += 1
            continue
        live = [c for c in ranked if not c["deleted"]]
        if not live:
            counts.deleted += 1
            continue
        reply = live[0]  # oasst1 has one reply per rank; file order breaks a (malformed) tie
        pairs.append({"id": reply["message_id"], "tree_id": root["message_tree_id"],
                      "prompt": root["text"], "response": reply["text"]})
        counts.kept += 1
    return pairs, counts


def first_turn_pairs(messages: Iterable[dict], lang: str = "en", rank: int = 0) -> list[dict]:
    """`{"id", "tree_id", "prompt", "response"}` per kept tree, in file order of roots.

    The filter counts are logged at INFO; use `select_first_turn` to get them back.
    """
    pairs, counts = select_first_turn(messages, lang=lang, rank=rank)
    log.info("oasst first-turn pairs (lang=%s, rank=%s): %s", lang, rank, counts)
    return pairs


def seed_path(kind: str):
    """The shipped seed file of `kind` ("ift" or "eft"), as an importlib.resources Traversable."""
    if kind not in SEED_KINDS:
        raise ValueError(f"seed kind must be one of {SEED_KINDS}, got {kind!r}")
    return resources.files("srlm_hpc.seed").joinpath(f"{kind}.jsonl")


def load_seed(kind: str, path: str | Path | None = None) -> list[dict]:
    """First-turn English rank-0 pairs of the shipped seed set `kind`, or of the file `path`.

    For "eft" the prompt is the judge prompt around an (instruction, response) and the
    response is the judgement ending in "Score: N".
    """
    if kind not in SEED_KINDS:
        raise ValueError(f"seed kind must be one of {SEED_KINDS}, got {kind!r}")
    if path:
        return first_turn_pairs(read_messages(path))
    with resources.as_file(seed_path(kind)) as p:
        return first_turn_pairs(read_messages(p))
