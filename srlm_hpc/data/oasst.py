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

The real release, three ways (see the README, "Real oasst1 on a cluster"):

    rows = load_messages("OpenAssistant/oasst1")         # through `datasets`, from its cache
    rows = load_messages("/shared/oasst1")               # a snapshot: data/*.parquet splits
    rows = load_messages("2023-04-12_oasst_ready.trees.jsonl.gz")  # the message-tree export
    turns, counts = first_turns(rows)                   # counts per filter step
    split = split_oasst(turns, seed=1234)               # IFT / EFT train / held-out eval

    python -m srlm_hpc.data.oasst source=OpenAssistant/oasst1 out=data/oasst split_seed=1234
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import sys
import uuid
from collections import Counter, defaultdict
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


class OasstSourceError(FileNotFoundError):
    """An oasst1 source that is not there; the message says what to download and where to point."""


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
    """All message rows of one oasst1 file, in file order: .jsonl / .jsonl.gz of messages
    (one message per line) or of message trees (the official `*.trees.jsonl.gz`, one tree
    per line, flattened here in pre-order), or a .parquet split (the Hugging Face release).

    Blank lines are skipped. Raises OasstFormatError (a ValueError) naming `file:line` on a
    line that is not JSON, not an object, or lacks a field in REQUIRED_FIELDS.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
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
            if isinstance(row, dict) and "prompt" in row and "message_id" not in row:
                rows += [_check_row(m, f"{where} (message {m.get('message_id')!r})") for m in flatten_tree(row, where)]
            else:
                rows.append(_check_row(row, where))
    return rows


def flatten_tree(tree: dict, where: str = "tree") -> list[dict]:
    """One line of the official message-tree export -> its message rows, parents first.

    A tree line is {"message_tree_id", "tree_state", "prompt": node, "origin"} and a node is a
    message with its "replies" nested. The exporter leaves null fields out (pydantic's
    exclude_none), so a node may lack parent_id, rank or deleted: they become null, null and
    false here; parent_id is the enclosing node's id and the tree's id and state are copied
    into every row, as the flat messages export has them."""
    if not isinstance(tree.get("prompt"), dict):
        raise OasstFormatError(f"{where}: a message-tree line needs a 'prompt' object (the root message)")
    tree_id, state = tree.get("message_tree_id"), tree.get("tree_state")
    rows, stack = [], [(tree["prompt"], None)]
    while stack:
        node, parent = stack.pop()
        row = {k: v for k, v in node.items() if k != "replies"}
        row.setdefault("parent_id", parent)
        row.setdefault("rank", None)
        row["deleted"] = bool(row.get("deleted") or False)
        row.setdefault("message_tree_id", tree_id)
        row.setdefault("tree_state", state)
        rows.append(row)
        stack += [(child, node.get("message_id")) for child in reversed(node.get("replies") or [])]
    return rows


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise OasstSourceError(f"{path}: reading parquet needs pyarrow (pip install pyarrow; "
                               f"it comes with `datasets`)") from e
    rows = pq.read_table(path).to_pylist()
    return [_check_row(row, f"{path}: row {i}") for i, row in enumerate(rows)]


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


# ---- the real release: sources ---------------------------------------------------------------
OASST_DATASET = "OpenAssistant/oasst1"
DOWNLOAD_HINT = (
    "on a machine with internet, either `huggingface-cli download OpenAssistant/oasst1 --repo-type dataset "
    "--local-dir /shared/oasst1` and pass that folder (its data/*.parquet splits are read), or run "
    "`python -c 'import datasets; datasets.load_dataset(\"OpenAssistant/oasst1\")'` with the HF_HOME the jobs use"
)


def load_messages(source: str | Path) -> list[dict]:
    """Message rows of every split of an oasst1 source, each message once (first seen wins).

    `source` is a file (see read_messages), a folder (its *.parquet files, anywhere below it;
    without any, its *ready.messages.jsonl*, else *ready.trees.jsonl*, else all *.jsonl*), or
    a dataset name such as "OpenAssistant/oasst1", loaded through `datasets` from its cache
    (HF_DATASETS_OFFLINE=1 keeps it from trying the network)."""
    path = Path(source).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        for pattern in ("*ready.messages.jsonl*", "*ready.trees.jsonl*", "*.jsonl*"):
            files = files or sorted(path.glob(pattern))
        if not files:
            raise OasstSourceError(f"{path}: no oasst1 files in this folder (expected data/*.parquet splits, or "
                                   f"*.messages.jsonl.gz / *.trees.jsonl.gz of the official export); {DOWNLOAD_HINT}")
    elif "/" in str(source) and not str(source).startswith((".", "/", "~")) and str(source).count("/") == 1:
        return _dedup(_load_dataset(str(source)))
    else:
        raise OasstSourceError(f"{source}: no such file or folder; {DOWNLOAD_HINT}")
    return _dedup(row for f in files for row in read_messages(f))


def _load_dataset(name: str) -> list[dict]:
    import datasets

    try:
        splits = datasets.load_dataset(name)
    except Exception as e:  # datasets raises ConnectionError, DatasetNotFoundError, FileNotFoundError, ...
        offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
        raise OasstSourceError(f"dataset {name!r} could not be loaded through `datasets`"
                               f"{' (offline mode: only the cache is tried)' if offline else ''}: "
                               f"{type(e).__name__}: {e}; {DOWNLOAD_HINT}") from e
    return [_check_row(row, f"{name}[{split}] row {i}")
            for split in sorted(splits) for i, row in enumerate(splits[split])]


def _dedup(rows: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        if r["message_id"] not in seen:
            seen.add(r["message_id"])
            out.append(r)
    return out


# ---- the real release: IFT, EFT candidates, held-out reward-modeling set ---------------------
def _usable(m: dict) -> bool:
    """Not deleted, not failed by its reviewers, written by a person (synthetic = model-written)."""
    return not m["deleted"] and m.get("review_result") is not False and not m.get("synthetic")


def first_turns(messages: Iterable[dict], lang: str = "en") -> tuple[list[dict], dict[str, int]]:
    """Per tree, its first turn with every usable ranked reply, best first; and the number of
    trees each filter step removed, in order (`trees` = roots seen, `kept` = what is left).

    A turn is {"tree_id", "prompt_id", "prompt", "replies": [{"id", "text", "rank"}], "has_rank0"};
    `rank` is the human rank (0 = best) and `has_rank0` says the rank-0 reply itself is usable
    (IFT takes only that one: a removed best reply is never replaced by the next)."""
    messages = list(messages)
    children: dict[str, list[dict]] = defaultdict(list)
    for m in messages:
        if m["parent_id"] is not None:
            children[m["parent_id"]].append(m)
    steps = ("trees", "not_ready", "deleted", "failed_review", "synthetic", "non_english", "no_ranked_reply", "kept")
    counts = dict.fromkeys(steps, 0)
    turns = []
    for root in messages:
        if root["parent_id"] is not None or root["role"] != "prompter":
            continue
        counts["trees"] += 1
        why = ("not_ready" if root.get("tree_state") not in (None, "ready_for_export") else
               "deleted" if root["deleted"] else
               "failed_review" if root.get("review_result") is False else
               "synthetic" if root.get("synthetic") else
               "non_english" if root["lang"] != lang else None)
        replies = sorted(((int(c["rank"]), i, c) for i, c in enumerate(children.get(root["message_id"], ()))
                          if c["role"] == "assistant" and c["rank"] is not None and _usable(c)),
                         key=lambda t: t[:2])
        if why is None and not replies:
            why = "no_ranked_reply"
        counts[why or "kept"] += 1
        if why is None:
            turns.append({"tree_id": root["message_tree_id"], "prompt_id": root["message_id"], "prompt": root["text"],
                          "replies": [{"id": c["message_id"], "text": c["text"], "rank": r} for r, _, c in replies],
                          "has_rank0": replies[0][0] == 0})
    return turns, counts


def _unit(seed: int, salt: str, key: str) -> float:
    """A number in [0, 1) fixed by (seed, salt, key): splits that do not depend on file order."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{salt}/{key}".encode()).digest()[:8], "big") / 2**64


def split_oasst(turns: list[dict], seed: int, ift_size: int = 3200, heldout_frac: float = 0.25) -> dict:
    """IFT, EFT candidates (train) and the held-out set, disjoint by message tree.

    - IFT: `ift_size` trees (paper: 3,200) drawn by a seeded hash from those whose rank-0 reply
      is usable; each gives {"id", "tree_id", "prompt", "response"} with the rank-0 reply.
    - The other trees with at least 2 usable ranked replies are EFT material, held out by
      tree with probability `heldout_frac` (our choice, 0.25: the paper's 541 eval examples
      against 1,630 train are a quarter of the whole). Held-out turns are the reward-modeling
      and head-to-head set and are never trained on.
    Returns {"ift", "eft_train", "heldout", "counts"}."""
    ift_pool = sorted((t for t in turns if t["has_rank0"]), key=lambda t: _unit(seed, "ift", t["tree_id"]))
    ift_trees = {t["tree_id"] for t in ift_pool[:max(0, ift_size)]}
    ift = [{"id": t["replies"][0]["id"], "tree_id": t["tree_id"], "prompt": t["prompt"],
            "response": t["replies"][0]["text"]} for t in turns if t["tree_id"] in ift_trees]
    rest = [t for t in turns if t["tree_id"] not in ift_trees]
    ranked = [t for t in rest if len(t["replies"]) >= 2]
    heldout = [t for t in ranked if _unit(seed, "heldout", t["tree_id"]) < heldout_frac]
    eft_train = [t for t in ranked if _unit(seed, "heldout", t["tree_id"]) >= heldout_frac]
    counts = {"turns": len(turns), "ift_pool": len(ift_pool), "ift": len(ift), "not_ift": len(rest),
              "fewer_than_2_ranked": len(rest) - len(ranked), "eft_train_prompts": len(eft_train),
              "eft_train_replies": sum(len(t["replies"]) for t in eft_train), "heldout_prompts": len(heldout),
              "heldout_replies": sum(len(t["replies"]) for t in heldout)}
    return {"ift": ift, "eft_train": eft_train, "heldout": heldout, "counts": counts}


def heldout_turns(source: str | Path | None, seed: int = 1234, ift_size: int = 3200,
                  heldout_frac: float = 0.25, lang: str = "en") -> list[dict]:
    """The held-out turns (2+ ranked replies) of an oasst1 source, split as split_oasst does
    with the same arguments; with no source, the shipped IFT seed's trees with 2+ ranked
    replies: a smoke-scale stand-in for the paper's 541 held-out examples (57 trees, and
    SFT trained on their rank-0 replies, so the numbers only show that the machinery works)."""
    if source:
        return split_oasst(first_turns(load_messages(source), lang)[0], seed, ift_size, heldout_frac)["heldout"]
    with resources.as_file(seed_path("ift")) as p:
        rows = read_messages(p)
    return [t for t in first_turns(rows, lang)[0] if len(t["replies"]) >= 2]


# ---- EFT: agreement with the human ranking, rebalancing (pure) -------------------------------
def agreement_filter(judged: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Keep a prompt's replies only when the judge's scores order them exactly as the human ranks
    do (metrics.ranking_matches: every reply scored, no ties). `judged` items are turns whose
    replies carry "score" (and "judgement", the text the score came from)."""
    from ..metrics import ranking_matches

    kept = [t for t in judged
            if ranking_matches([r["rank"] for r in t["replies"]], [r.get("score") for r in t["replies"]])]
    return kept, {"prompts": len(judged), "agree": len(kept), "disagree": len(judged) - len(kept)}


def rebalance(examples: list[dict], seed: int, key: str = "score") -> list[dict]:
    """Thin out the most common score (the paper's 4) to the count of the second most common,
    dropping a seeded-hash choice of its examples (each needs an "id"); order is kept.
    Our choice of target: the paper says only that it balances the most common score."""
    counts = Counter(ex[key] for ex in examples)
    if len(counts) < 2:
        return list(examples)
    (top, n_top), (_, n_second) = counts.most_common(2)
    drop = sorted((ex["id"] for ex in examples if ex[key] == top), key=lambda i: _unit(seed, "rebalance", i))
    drop = set(drop[:n_top - n_second])
    return [ex for ex in examples if ex["id"] not in drop]


def sft_rows(examples: list[dict], lang: str = "en") -> list[dict]:
    """{"prompt", "response"} examples as oasst1 message rows (a root and its rank-0 reply),
    the format `load_seed` and the sft stage read. Each example is a tree of its own, keyed by
    its source tree ("tree_id": IFT), else its own id ("id": an EFT reply), else its position
    and prompt: two trees with the same prompt text stay two examples. Ids are uuid5 of that
    key: a rerun is identical."""
    rows = []
    common = {"user_id": None, "created_date": None, "lang": lang, "review_count": 0, "review_result": True,
              "deleted": False, "synthetic": True, "model_name": None, "detoxify": None,
              "tree_state": "ready_for_export", "emojis": None, "labels": None}
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        key = _example_key(ex, i)
        if key in seen:
            raise ValueError(f"sft_rows: examples {seen[key]} and {i} share the key {key!r} (tree_id, else id): "
                             f"one tree would be lost; each example needs its own")
        seen[key] = i
        root = str(uuid.uuid5(uuid.NAMESPACE_URL, "srlm-sft-p/" + key))
        reply = str(uuid.uuid5(uuid.NAMESPACE_URL, f"srlm-sft-r/{root}/{ex['response']}"))
        for mid, parent, text, role, rank in ((root, None, ex["prompt"], "prompter", None),
                                              (reply, root, ex["response"], "assistant", 0)):
            row = {"message_id": mid, "parent_id": parent, **common, "text": text, "role": role, "rank": rank,
                   "message_tree_id": root}
            rows.append({f: row[f] for f in OASST_FIELDS})
    return rows


def _example_key(ex: dict, index: int) -> str:
    if ex.get("tree_id"):
        return f"tree/{ex['tree_id']}"
    if ex.get("id"):
        return f"id/{ex['id']}"
    return f"index/{index}/{ex['prompt']}"


def print_counts(title: str, counts: dict[str, int], file=None) -> None:
    print(f"{title}:", file=file or sys.stdout)
    for step, n in counts.items():
        print(f"  {step:<24} {n:>8,}", file=file or sys.stdout)


def main(argv: list[str] | None = None) -> int:
    """python -m srlm_hpc.data.oasst source=... out=DIR [split_seed=1234 ift_size=3200 heldout_frac=0.25 lang=en]

    Writes DIR/ift.jsonl (for sft.ift_path), DIR/eft_candidates.jsonl and DIR/heldout.jsonl (to
    look at: the eft and eval stages split the source themselves, with eval.split_seed,
    eval.ift_size and eval.heldout_frac, which must equal the values given here) and
    DIR/counts.json, and prints the counts of every filter step."""
    from ..files import atomic_write_json, write_jsonl

    argv = sys.argv[1:] if argv is None else argv
    from ..cli import help_request, print_help

    if help_request(argv)[0]:  # --help: this docstring and the exit codes
        return print_help(main.__doc__)
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    valid = ("source", "out", "split_seed", "ift_size", "heldout_frac", "lang")
    bad = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in valid]
    if bad or "source" not in args or "out" not in args:
        if bad:
            print(f"error: unknown argument(s) {', '.join(bad)}; valid keys: {', '.join(valid)}", file=sys.stderr)
        print("usage: python -m srlm_hpc.data.oasst source=OpenAssistant/oasst1|FILE|DIR out=DIR "
              "[split_seed=1234 ift_size=3200 heldout_frac=0.25 lang=en]", file=sys.stderr)
        return 2
    out = Path(args["out"])
    turns, counts = first_turns(load_messages(args["source"]), args.get("lang", "en"))
    print_counts("first turns (trees removed per step)", counts)
    split = split_oasst(turns, int(args.get("split_seed", 1234)), int(args.get("ift_size", 3200)),
                        float(args.get("heldout_frac", 0.25)))
    print_counts("split", split["counts"])
    write_jsonl(out / "ift.jsonl", sft_rows(split["ift"]))
    write_jsonl(out / "eft_candidates.jsonl", split["eft_train"])
    write_jsonl(out / "heldout.jsonl", split["heldout"])
    atomic_write_json(out / "counts.json", {"first_turns": counts, "split": split["counts"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
