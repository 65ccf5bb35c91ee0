"""The oasst1 loader on a fixture in the official schema, written here (the real release
cannot be downloaded on this machine): the flat messages export, the nested message-tree
export, parquet splits as in the Hugging Face snapshot, `datasets`, and the IFT / EFT /
held-out split, the EFT agreement filter and rebalancing."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys

import pytest

from srlm_hpc.data import oasst
from srlm_hpc.data.oasst import (
    OASST_FIELDS,
    OasstSourceError,
    agreement_filter,
    first_turns,
    flatten_tree,
    heldout_turns,
    load_messages,
    load_seed,
    read_messages,
    rebalance,
    sft_rows,
    split_oasst,
)
from srlm_hpc.files import read_jsonl, write_jsonl


def msg(mid, parent, role, *, tree, text=None, lang="en", rank=None, deleted=False, review=True,
        synthetic=False, state="ready_for_export"):
    row = {"message_id": mid, "parent_id": parent, "user_id": f"u-{mid}",
           "created_date": "2023-02-06T13:50:44.657083+00:00", "text": text or f"text of {mid}", "role": role,
           "lang": lang, "review_count": 3, "review_result": review, "deleted": deleted, "rank": rank,
           "synthetic": synthetic, "model_name": "oasst-sft" if synthetic else None,
           "detoxify": {"toxicity": 0.001, "severe_toxicity": 0.0001}, "message_tree_id": tree, "tree_state": state,
           "emojis": {"name": ["+1"], "count": [2]}, "labels": {"name": ["spam"], "value": [0.0], "count": [3]}}
    assert tuple(row) == OASST_FIELDS
    return row


def ranked_tree(t, n, lang="en"):
    return [msg(t, None, "prompter", tree=t, lang=lang)] + [
        msg(f"{t}-r{r}", t, "assistant", tree=t, rank=r, lang=lang) for r in reversed(range(n))]  # rank order != file order


def official_rows() -> list[dict]:
    return [
        # T1: kept; its rank-2 reply is model-written (synthetic) and unusable; a second turn is ignored
        msg("T1", None, "prompter", tree="T1", text="How do tides work?"),
        msg("T1-r1", "T1", "assistant", tree="T1", rank=1),
        msg("T1-r0", "T1", "assistant", tree="T1", rank=0, text="The Moon's gravity pulls the oceans."),
        msg("T1-r2", "T1", "assistant", tree="T1", rank=2, synthetic=True),
        msg("T1-p2", "T1-r0", "prompter", tree="T1"),
        msg("T1-p2-r0", "T1-p2", "assistant", tree="T1", rank=0),
        # T2: rank-0 reply deleted -> kept without rank 0 (EFT material, never IFT)
        msg("T2", None, "prompter", tree="T2"),
        msg("T2-r0", "T2", "assistant", tree="T2", rank=0, deleted=True, review=False),
        msg("T2-r1", "T2", "assistant", tree="T2", rank=1),
        msg("T2-r2", "T2", "assistant", tree="T2", rank=2),
        # T3 German, T4 deleted root, T5 root failed review, T6 synthetic root, T7 not ready
        *ranked_tree("T3", 2, lang="de"),
        msg("T4", None, "prompter", tree="T4", deleted=True), msg("T4-r0", "T4", "assistant", tree="T4", rank=0),
        msg("T5", None, "prompter", tree="T5", review=False), msg("T5-r0", "T5", "assistant", tree="T5", rank=0),
        msg("T6", None, "prompter", tree="T6", synthetic=True), msg("T6-r0", "T6", "assistant", tree="T6", rank=0),
        msg("T7", None, "prompter", tree="T7", state="aborted_low_grade"),
        msg("T7-r0", "T7", "assistant", tree="T7", rank=0, state="aborted_low_grade"),
        # T8: only an unranked reply; T9: rank 0 failed review, rank 1 left
        msg("T8", None, "prompter", tree="T8"), msg("T8-r", "T8", "assistant", tree="T8"),
        msg("T9", None, "prompter", tree="T9"),
        msg("T9-r0", "T9", "assistant", tree="T9", rank=0, review=False),
        msg("T9-r1", "T9", "assistant", tree="T9", rank=1),
        # T10-T29: clean trees with 2 or 3 ranked replies
        *[row for i in range(10, 30) for row in ranked_tree(f"T{i}", 2 + i % 2)],
    ]


EXPECTED_COUNTS = {"trees": 29, "not_ready": 1, "deleted": 1, "failed_review": 1, "synthetic": 1,
                   "non_english": 1, "no_ranked_reply": 1, "kept": 23}


def as_trees(rows: list[dict]) -> list[dict]:
    """The official message-tree export of `rows`: nested replies, null fields left out."""
    nodes = {r["message_id"]: {k: v for k, v in r.items() if v is not None and k not in ("message_tree_id", "tree_state")}
             for r in rows}
    trees = []
    for r in rows:
        node = nodes[r["message_id"]]
        if r["parent_id"] is None:
            trees.append({"message_tree_id": r["message_tree_id"], "tree_state": r["tree_state"], "prompt": node,
                          "origin": "fixture"})
        else:
            node.pop("parent_id")  # the nesting says it
            nodes[r["parent_id"]].setdefault("replies", []).append(node)
    return trees


def write_lines(path, objs, gz=False):
    text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def snapshot(tmp_path, rows):
    """A Hugging Face snapshot folder: data/{train,validation}-*.parquet, split by tree, rank as float."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "data").mkdir(parents=True)
    val_trees = {"T2", "T11", "T12"}
    for split, keep in (("train", lambda r: r["message_tree_id"] not in val_trees),
                        ("validation", lambda r: r["message_tree_id"] in val_trees)):
        part = [dict(r, rank=None if r["rank"] is None else float(r["rank"])) for r in rows if keep(r)]
        pq.write_table(pa.Table.from_pylist(part), tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    return tmp_path


def _by_tree(turns):
    return sorted(turns, key=lambda t: t["tree_id"])


def test_first_turns_counts_every_step():
    turns, counts = first_turns(official_rows())
    assert counts == EXPECTED_COUNTS
    assert counts["trees"] == sum(v for k, v in counts.items() if k != "trees")
    t1, t2 = turns[0], turns[1]
    assert [r["id"] for r in t1["replies"]] == ["T1-r0", "T1-r1"] and t1["has_rank0"]
    assert t1["prompt"] == "How do tides work?"
    assert [r["rank"] for r in t2["replies"]] == [1, 2] and not t2["has_rank0"]
    t9 = next(t for t in turns if t["tree_id"] == "T9")
    assert [r["id"] for r in t9["replies"]] == ["T9-r1"]


def test_tree_export_and_parquet_give_the_same_turns(tmp_path):
    rows = official_rows()
    want = first_turns(rows)
    flat = read_messages(write_lines(tmp_path / "m.messages.jsonl", rows))
    trees = read_messages(write_lines(tmp_path / "t.trees.jsonl.gz", as_trees(rows), gz=True))
    assert len(trees) == len(rows) and all(set(oasst.REQUIRED_FIELDS) <= set(r) for r in trees)
    assert first_turns(flat) == want
    assert first_turns(trees) == want  # pre-order flattening keeps roots and siblings in file order
    snap = snapshot(tmp_path / "snap", rows)
    parquet_rows = load_messages(snap)
    assert len(parquet_rows) == len(rows)
    turns, counts = first_turns(parquet_rows)
    assert counts == EXPECTED_COUNTS and _by_tree(turns) == _by_tree(want[0])


def test_flatten_tree_defaults_and_errors():
    rows = flatten_tree({"message_tree_id": "X", "tree_state": "ready_for_export", "prompt": {
        "message_id": "X", "text": "q", "role": "prompter", "lang": "en",
        "replies": [{"message_id": "X-a", "text": "a", "role": "assistant", "lang": "en", "rank": 0}]}})
    assert [(r["message_id"], r["parent_id"], r["rank"], r["deleted"], r["message_tree_id"]) for r in rows] == \
        [("X", None, None, False, "X"), ("X-a", "X", 0, False, "X")]
    with pytest.raises(oasst.OasstFormatError, match="f.jsonl:3: a message-tree line needs a 'prompt' object"):
        flatten_tree({"message_tree_id": "X", "prompt": None}, "f.jsonl:3")


def test_folder_prefers_parquet_and_dedups(tmp_path):
    rows = official_rows()
    snap = snapshot(tmp_path, rows)
    write_lines(snap / "2023-04-12_oasst_ready.messages.jsonl.gz", rows, gz=True)  # ignored: parquet wins
    assert len(load_messages(snap)) == len(rows)
    only_jsonl = tmp_path / "export"
    only_jsonl.mkdir()
    write_lines(only_jsonl / "2023-04-12_oasst_ready.trees.jsonl.gz", as_trees(rows), gz=True)
    assert len(load_messages(only_jsonl)) == len(rows)
    with pytest.raises(OasstSourceError, match="no oasst1 files in this folder.*huggingface-cli download"):
        load_messages(_empty(tmp_path))
    with pytest.raises(OasstSourceError, match="no such file or folder"):
        load_messages(tmp_path / "nope.jsonl")


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_split_is_disjoint_deterministic_and_order_free():
    turns, _ = first_turns(official_rows())
    split = split_oasst(turns, seed=7, ift_size=8, heldout_frac=0.3)
    ift = {p["tree_id"] for p in split["ift"]}
    train = {t["tree_id"] for t in split["eft_train"]}
    held = {t["tree_id"] for t in split["heldout"]}
    assert len(ift) == 8 and not (ift & train) and not (ift & held) and not (train & held)
    assert all(p["id"].endswith("-r0") for p in split["ift"])  # the rank-0 reply, always
    assert "T2" not in ift and "T9" not in ift  # their rank-0 reply is gone
    assert all(len(t["replies"]) >= 2 for t in split["eft_train"] + split["heldout"])
    c = split["counts"]
    assert c["ift"] == 8 and c["not_ift"] == 23 - 8
    assert c["eft_train_prompts"] + c["heldout_prompts"] + c["fewer_than_2_ranked"] == c["not_ift"]
    shuffled = turns[:]
    random.Random(0).shuffle(shuffled)
    again = split_oasst(shuffled, seed=7, ift_size=8, heldout_frac=0.3)
    assert {p["tree_id"] for p in again["ift"]} == ift and {t["tree_id"] for t in again["heldout"]} == held
    other = split_oasst(turns, seed=8, ift_size=8, heldout_frac=0.3)
    assert {p["tree_id"] for p in other["ift"]} != ift
    assert split_oasst(turns, seed=7, ift_size=1000)["counts"]["ift"] == 21  # every tree with a rank-0 reply


def test_heldout_turns_from_a_source_and_the_seed_stand_in(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", official_rows())
    held = heldout_turns(str(path), seed=7, ift_size=8, heldout_frac=0.3)
    assert held == split_oasst(first_turns(official_rows())[0], 7, 8, 0.3)["heldout"]
    seed = heldout_turns(None)
    assert len(seed) == 57 and all(len(t["replies"]) >= 2 for t in seed)


def test_agreement_filter_and_rebalance():
    def turn(tid, scores):
        return {"tree_id": tid, "replies": [{"id": f"{tid}-{i}", "rank": i, "score": s} for i, s in enumerate(scores)]}

    judged = [turn("a", [4, 2]), turn("b", [3, 3]), turn("c", [2, 4]), turn("d", [5, 4, None]), turn("e", [5, 4, 1])]
    kept, counts = agreement_filter(judged)
    assert [t["tree_id"] for t in kept] == ["a", "e"]
    assert counts == {"prompts": 5, "agree": 2, "disagree": 3}
    examples = [{"id": f"x{i}", "score": s} for i, s in enumerate([4] * 6 + [3] * 3 + [5] * 2)]
    balanced = rebalance(examples, seed=1)
    assert [e["score"] for e in balanced].count(4) == 3 and len(balanced) == 8
    assert balanced == rebalance(examples, seed=1) and [e["id"] for e in balanced] == sorted(
        [e["id"] for e in balanced], key=lambda i: int(i[1:]))  # order kept
    assert rebalance([{"id": "a", "score": 4}], seed=1) == [{"id": "a", "score": 4}]


def test_sft_rows_round_trip_through_load_seed(tmp_path):
    examples = [{"prompt": "Q one?", "response": "A one."}, {"prompt": "Q {two}?", "response": "Score: 4"}]
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, sft_rows(examples))
    assert [(p["prompt"], p["response"]) for p in load_seed("eft", path)] == [(e["prompt"], e["response"]) for e in examples]
    assert sft_rows(examples) == sft_rows(examples)


def test_sft_rows_keep_two_trees_with_the_same_prompt(tmp_path):
    """Issue 12: ids derived from the prompt text made two such trees one; one reply came back twice."""
    from tests.conftest import oasst_rows

    rows = oasst_rows([("What is 2+2?", "Four."), ("What is 2+2?", "It is 4."), ("Name a colour.", "Red.")], "dup")
    split = split_oasst(first_turns(rows)[0], seed=1, ift_size=10)
    assert len(split["ift"]) == 3
    write_jsonl(tmp_path / "ift.jsonl", sft_rows(split["ift"]))
    back = load_seed("ift", tmp_path / "ift.jsonl")
    assert sorted((p["prompt"], p["response"]) for p in back) == sorted(
        [("What is 2+2?", "Four."), ("What is 2+2?", "It is 4."), ("Name a colour.", "Red.")])
    assert len({p["tree_id"] for p in back}) == 3
    # EFT examples carry only their reply's id: the same judge prompt twice is two examples too
    eft = [{"id": "r1", "prompt": "judge X", "response": "Score: 3"}, {"id": "r2", "prompt": "judge X", "response": "Score: 4"}]
    write_jsonl(tmp_path / "eft.jsonl", sft_rows(eft))
    assert sorted(p["response"] for p in load_seed("eft", tmp_path / "eft.jsonl")) == ["Score: 3", "Score: 4"]
    with pytest.raises(ValueError, match="share the key 'tree/t1'"):
        sft_rows([{"tree_id": "t1", "prompt": "a", "response": "b"}, {"tree_id": "t1", "prompt": "c", "response": "d"}])


def test_cli_writes_the_split_and_prints_counts(tmp_path, capsys):
    src = write_lines(tmp_path / "m.jsonl", official_rows())
    assert oasst.main([f"source={src}", f"out={tmp_path / 'out'}", "ift_size=8", "split_seed=7"]) == 0
    out = capsys.readouterr().out
    assert "non_english" in out and "failed_review" in out and "heldout_prompts" in out
    assert len(load_seed("ift", tmp_path / "out" / "ift.jsonl")) == 8
    assert read_jsonl(tmp_path / "out" / "heldout.jsonl") == split_oasst(first_turns(official_rows())[0], 7, 8)["heldout"]
    assert oasst.main([f"source={src}", "out=x", "seed=7"]) == 2
    assert "unknown argument(s) seed=7; valid keys: source, out, split_seed" in capsys.readouterr().err


def test_datasets_by_name_offline_without_cache_says_what_to_download(tmp_path):
    code = ("from srlm_hpc.data.oasst import load_messages, OasstSourceError\n"
            "try:\n    load_messages('OpenAssistant/oasst1')\n"
            "except OasstSourceError as e:\n    print('ERROR', e)\n")
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert "ERROR dataset 'OpenAssistant/oasst1' could not be loaded" in res.stdout, res.stdout + res.stderr
    assert "offline mode" in res.stdout and "huggingface-cli download OpenAssistant/oasst1" in res.stdout


def test_datasets_loads_a_snapshot_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    snap = snapshot(tmp_path / "snap", official_rows())
    rows = oasst._load_dataset(str(snap))  # the same call as for "OpenAssistant/oasst1", on a local copy
    turns, counts = first_turns(rows)
    assert counts == EXPECTED_COUNTS
    assert _by_tree(turns) == _by_tree(first_turns(official_rows())[0])
