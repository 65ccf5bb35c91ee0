#!/usr/bin/env python
"""Write the shipped seed data: srlm_hpc/seed/ift.jsonl and srlm_hpc/seed/eft.jsonl.

The content, in scripts/seed_text/ (ift.yaml, ift_skipped.yaml, eft.yaml), was written by
hand for this project (it is not copied from the Open Assistant dataset); this script
renders it into the oasst1 *message* schema, one message per line, so the same loader
reads the shipped seed and a real oasst1 export. Edit an example there, then rerun this.

- IFT: first-turn instruction trees. Each has an English prompter message and 1-3
  assistant replies ranked 0..n (rank 0 is the good one). A few extra trees exist only
  to exercise the loader's filters (another language, a deleted reply, a deleted root,
  an unranked reply, a second conversational turn).
- EFT: judge trees. The prompter message is `srlm_hpc.templates.judge_prompt(instruction,
  response)`; the single assistant reply (rank 0) is a short justification that walks
  through the additive rubric and ends with a line `Score: N`.

All ids are uuid5 of a fixed namespace and a name derived from the text, and all dates
and metadata are derived from hashes of those names, so a rerun is byte-identical.

Usage:
    python scripts/write_seed.py           # (re)write the two files and print counts
    python scripts/write_seed.py --check   # exit 1 unless the shipped files match
    python scripts/write_seed.py --out DIR # write (or --check) DIR/ift.jsonl, DIR/eft.jsonl instead
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srlm_hpc.templates import judge_prompt  # noqa: E402  (the rubric lives there only)

SEED_DIR = REPO / "srlm_hpc" / "seed"
NAMESPACE = uuid.UUID("5e1f2a0c-7d3b-4c8e-9a61-0b2d4f6e8a10")  # fixed: ids must never change

# ---------------------------------------------------------------------------------------
# The text itself is data: scripts/seed_text/*.yaml, edited by hand, rendered here.
# ---------------------------------------------------------------------------------------

TEXT_DIR = Path(__file__).resolve().parent / "seed_text"


def load_text(name: str) -> list[dict]:
    import yaml

    return yaml.safe_load((TEXT_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


# IFT: {prompt, replies: [rank-0 reply, rank-1 reply, ...]}; rank 0 is the reply to imitate.
IFT_TREES: list[dict] = load_text("ift")
# Trees that only exercise the loader's filters (lang, deleted_ranks, root_deleted, unranked, followup).
IFT_SKIPPED_TREES: list[dict] = load_text("ift_skipped")
# EFT: (instruction, response, justification, score 0-5): the judge's answer walks the rubric.
EFT_EXAMPLES: list[tuple[str, str, str, int]] = [
    (e["instruction"], e["response"], e["justification"], e["score"]) for e in load_text("eft")]

# ---------------------------------------------------------------------------------------
# Rendering into oasst1 message rows.
# ---------------------------------------------------------------------------------------

# Where the skipped trees go among the IFT trees (index in the final file order), so the
# loader's "file order of roots" is exercised with skips in the middle, not only at the end.
SKIP_POSITIONS = (4, 17, 29, 41, 58)
EPOCH = dt.datetime(2023, 2, 1, tzinfo=dt.timezone.utc)
N_USERS = 41  # a small pool of pseudonymous authors
# oasst1 label names on prompter and on assistant messages (values: mean of reviewer votes).
PROMPTER_LABELS = ["spam", "lang_mismatch", "pii", "not_appropriate", "hate_speech", "sexual_content",
                   "quality", "toxicity", "humor", "creativity", "violence"]
ASSISTANT_LABELS = ["spam", "fails_task", "lang_mismatch", "pii", "not_appropriate", "hate_speech",
                    "sexual_content", "quality", "toxicity", "humor", "helpfulness", "creativity",
                    "violence"]


def _h(name: str) -> int:
    """A stable 64-bit integer from a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def _uuid(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, name))


def _date(name: str, after: dt.datetime | None = None) -> tuple[dt.datetime, str]:
    h = _h("date/" + name)
    if after is None:  # a root: somewhere in the two months after EPOCH
        when = EPOCH + dt.timedelta(seconds=h % (60 * 86400), microseconds=h % 999_983 + 1)
    else:  # a reply: 5 minutes to ~2 days later
        when = after + dt.timedelta(seconds=300 + h % (2 * 86400), microseconds=h % 999_983 + 1)
    return when, when.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _detoxify(name: str) -> dict:
    h = _h("detoxify/" + name)
    base = 2e-4 + (h % 9000) / 1e7  # tiny, like benign oasst1 messages
    keys = ["toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
            "sexual_explicit"]
    return {k: round(base / (1 + i), 8) for i, k in enumerate(keys)}


def _labels(name: str, role: str, rank: int | None) -> dict:
    """Plausible reviewer labels: quality and helpfulness follow the rank; the rest are 0."""
    h = _h("labels/" + name)
    names = ASSISTANT_LABELS if role == "assistant" else PROMPTER_LABELS
    quality = {0: 0.8, 1: 0.5, 2: 0.3}.get(rank, 0.6) if role == "assistant" else 0.65
    values = {"quality": quality, "helpfulness": quality, "creativity": 0.4 + (h % 5) / 20}
    return {"name": names, "value": [round(values.get(n, 0.0), 4) for n in names], "count": [3 + h % 3] * len(names)}


def _message(
    name: str,
    *,
    text: str,
    role: str,
    parent: dict | None,
    tree_id: str | None,
    lang: str = "en",
    rank: int | None = None,
    deleted: bool = False,
) -> dict:
    message_id = _uuid(name)
    when, created = _date(name, None if parent is None else parent["_when"])
    h = _h("meta/" + name)
    row = {
        "message_id": message_id,
        "parent_id": None if parent is None else parent["message_id"],
        "user_id": _uuid(f"user/{h % N_USERS}"),
        "created_date": created,
        "text": text,
        "role": role,
        "lang": lang,
        "review_count": 3 + h % 3,
        "review_result": not deleted,
        "deleted": deleted,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "detoxify": _detoxify(name),
        "message_tree_id": tree_id or message_id,
        "tree_state": "ready_for_export",
        "emojis": {"name": ["+1", "_skip_reply"], "count": [1 + h % 7, h % 2]}
        if not deleted
        else {"name": ["-1"], "count": [2]},
        "labels": _labels(name, role, rank),
    }
    row["_when"] = when  # internal, stripped before writing
    return row


def _tree(kind: str, tree: dict) -> list[dict]:
    """One tree as rows: root, replies (in a deterministic, not always rank, order), follow-up."""
    key = f"{kind}/{tree['prompt']}"
    root = _message(
        key,
        text=tree["prompt"],
        role="prompter",
        parent=None,
        tree_id=None,
        lang=tree.get("lang", "en"),
        deleted=tree.get("root_deleted", False),
    )
    tree_id = root["message_id"]
    replies = []
    deleted_ranks = set(tree.get("deleted_ranks", ()))
    for rank, text in enumerate(tree["replies"]):
        replies.append(
            _message(
                f"{key}/reply/{rank}",
                text=text,
                role="assistant",
                parent=root,
                tree_id=tree_id,
                lang=tree.get("lang", "en"),
                rank=None if tree.get("unranked") else rank,
                deleted=rank in deleted_ranks,
            )
        )
    # oasst1 exports are not sorted by rank: put replies in creation-date order.
    replies.sort(key=lambda r: r["created_date"])
    rows = [root, *replies]
    if "followup" in tree:
        best = next(r for r in replies if r["rank"] == 0)
        question, answer = tree["followup"]
        follow = _message(f"{key}/followup", text=question, role="prompter", parent=best,
                          tree_id=tree_id)
        rows += [follow, _message(f"{key}/followup/reply/0", text=answer, role="assistant",
                                  parent=follow, tree_id=tree_id, rank=0)]
    return rows


def judge_target(justification: str, score: int) -> str:
    """The judge's answer the model learns to write: justification, blank line, score line."""
    if not (isinstance(score, int) and 0 <= score <= 5):
        raise ValueError(f"score must be an integer in 0..5, got {score!r}")
    return f"{justification.strip()}\n\nScore: {score}"


def ift_rows() -> list[dict]:
    trees = list(IFT_TREES)
    for pos, skipped in zip(SKIP_POSITIONS, IFT_SKIPPED_TREES):
        trees.insert(pos, skipped)
    return [row for tree in trees for row in _tree("ift", tree)]


def eft_rows() -> list[dict]:
    rows = []
    for instruction, response, justification, score in EFT_EXAMPLES:
        tree = {
            "prompt": judge_prompt(instruction, response),
            "replies": [judge_target(justification, score)],
        }
        rows += _tree("eft", tree)
    return rows


def render(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        row = {k: v for k, v in row.items() if not k.startswith("_")}
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _validate() -> None:
    prompts = [t["prompt"] for t in IFT_TREES + IFT_SKIPPED_TREES]
    instructions = [e[0] for e in EFT_EXAMPLES]
    for name, items in (("IFT prompt", prompts), ("EFT instruction", instructions)):
        dupes = [k for k, n in collections.Counter(items).items() if n > 1]
        if dupes:
            raise SystemExit(f"duplicate {name}s: {dupes}")
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    overlap = {norm(p) for p in prompts} & {norm(i) for i in instructions}
    if overlap:
        raise SystemExit(f"IFT prompts and EFT instructions overlap: {sorted(overlap)}")
    for instruction, response, justification, score in EFT_EXAMPLES:
        judge_target(justification, score)
        if "Score:" in justification:
            raise SystemExit(f"justification must not contain its own score line: {instruction!r}")


def outputs(out_dir: Path = SEED_DIR) -> dict[Path, str]:
    _validate()
    return {out_dir / "ift.jsonl": render(ift_rows()), out_dir / "eft.jsonl": render(eft_rows())}


def summary() -> str:
    hist = collections.Counter(score for *_, score in EFT_EXAMPLES)
    n = len(EFT_EXAMPLES)
    lines = [
        f"IFT: {len(IFT_TREES)} kept trees + {len(IFT_SKIPPED_TREES)} filter-test trees, "
        f"{len(ift_rows())} messages",
        f"EFT: {n} trees, {len(eft_rows())} messages",
        "EFT score histogram: "
        + ", ".join(f"{s}: {hist[s]} ({100 * hist[s] / n:.0f}%)" for s in range(6)),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare with the shipped files instead of writing; exit 1 on any difference")
    parser.add_argument("--out", type=Path, default=SEED_DIR,
                        help="directory of the two files (default: the package's srlm_hpc/seed)")
    args = parser.parse_args(argv)
    files = outputs(args.out.resolve())
    if args.check:
        stale = []
        for path, text in files.items():
            if not path.exists() or path.read_bytes() != text.encode("utf-8"):
                stale.append(str(path))
        if stale:
            print("out of date (run python scripts/write_seed.py): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("seed files are up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_bytes(text.encode("utf-8"))
        print(f"wrote {path}")
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
