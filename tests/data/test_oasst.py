"""srlm_hpc.data.oasst on a small oasst1 fixture written here: filters, order, errors."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from srlm_hpc.data.oasst import (
    OASST_FIELDS,
    FilterCounts,
    OasstFormatError,
    first_turn_pairs,
    load_seed,
    read_messages,
    select_first_turn,
)


def msg(mid, parent, text, role, *, tree, lang="en", rank=None, deleted=False):
    """One oasst1 message row with every official field."""
    row = {
        "message_id": mid, "parent_id": parent, "user_id": f"user-{mid}",
        "created_date": "2023-02-06T13:50:44.657083+00:00", "text": text, "role": role, "lang": lang,
        "review_count": 3, "review_result": not deleted, "deleted": deleted, "rank": rank,
        "synthetic": False, "model_name": None, "detoxify": None, "message_tree_id": tree,
        "tree_state": "ready_for_export", "emojis": None, "labels": None,
    }
    assert tuple(row) == OASST_FIELDS
    return row


def fixture_rows() -> list[dict]:
    return [
        # t1: kept; replies stored rank 1 before rank 0, so the loader must pick by rank
        msg("t1", None, "How do I boil pasta?", "prompter", tree="t1"),
        msg("t1-r1", "t1", "Put it in water.", "assistant", tree="t1", rank=1),
        msg("t1-r0", "t1", "Salt boiling water, add pasta, cook 8-10 minutes.", "assistant", tree="t1", rank=0),
        # t2: Spanish tree -> non_english
        msg("t2", None, "¿Qué hora es?", "prompter", tree="t2", lang="es"),
        msg("t2-r0", "t2", "No tengo reloj.", "assistant", tree="t2", lang="es", rank=0),
        # t3: rank-0 reply deleted -> deleted (rank 1 is not promoted)
        msg("t3", None, "Tell me a joke.", "prompter", tree="t3"),
        msg("t3-r0", "t3", "spam spam", "assistant", tree="t3", rank=0, deleted=True),
        msg("t3-r1", "t3", "Why did the chicken cross the road?", "assistant", tree="t3", rank=1),
        # t4: deleted root -> deleted
        msg("t4", None, "asdf", "prompter", tree="t4", deleted=True),
        msg("t4-r0", "t4", "Hello!", "assistant", tree="t4", rank=0),
        # t5: only an unranked reply -> no_ranked_reply
        msg("t5", None, "Name a colour.", "prompter", tree="t5"),
        msg("t5-r", "t5", "Blue.", "assistant", tree="t5"),
        # t6: no reply at all -> no_ranked_reply
        msg("t6", None, "Is anyone there?", "prompter", tree="t6"),
        # t7: multi-turn; only the first turn is used. Rank stored as a float, as some exports do.
        msg("t7", None, "What is 2 + 2?", "prompter", tree="t7"),
        msg("t7-r0", "t7", "4.", "assistant", tree="t7", rank=0.0),
        msg("t7-p2", "t7-r0", "And 3 + 3?", "prompter", tree="t7"),
        msg("t7-p2-r0", "t7-p2", "6.", "assistant", tree="t7", rank=0),
        # an orphan reply whose parent is not in the file: ignored
        msg("x-r0", "missing", "Orphan.", "assistant", tree="x", rank=0),
        # t8: kept, last in file order
        msg("t8", None, "Capital of France?", "prompter", tree="t8"),
        msg("t8-r0", "t8", "Paris.", "assistant", tree="t8", rank=0),
    ]


def write(path: Path, rows: list[dict], blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


EXPECTED = [
    {"id": "t1-r0", "tree_id": "t1", "prompt": "How do I boil pasta?",
     "response": "Salt boiling water, add pasta, cook 8-10 minutes."},
    {"id": "t7-r0", "tree_id": "t7", "prompt": "What is 2 + 2?", "response": "4."},
    {"id": "t8-r0", "tree_id": "t8", "prompt": "Capital of France?", "response": "Paris."},
]


def test_read_messages_keeps_file_order_and_fields(tmp_path):
    rows = read_messages(write(tmp_path / "m.jsonl", fixture_rows(), blank_lines=True))
    assert rows == fixture_rows()


def test_first_turn_filters_and_counts(tmp_path):
    rows = read_messages(write(tmp_path / "m.jsonl", fixture_rows()))
    pairs, counts = select_first_turn(rows)
    assert pairs == EXPECTED
    assert counts == FilterCounts(trees=8, deleted=2, non_english=1, no_ranked_reply=2, kept=3)
    assert counts.trees == counts.deleted + counts.non_english + counts.no_ranked_reply + counts.kept
    assert counts.as_dict() == {"trees": 8, "deleted": 2, "non_english": 1, "no_ranked_reply": 2, "kept": 3}


def test_first_turn_pairs_logs_counts(tmp_path, caplog):
    rows = read_messages(write(tmp_path / "m.jsonl", fixture_rows()))
    with caplog.at_level(logging.INFO, logger="srlm_hpc.data.oasst"):
        assert first_turn_pairs(rows) == EXPECTED
    assert "trees=8, deleted=2, non_english=1, no_ranked_reply=2, kept=3" in caplog.text


def test_other_rank_and_language(tmp_path):
    rows = fixture_rows()
    rank1, counts = select_first_turn(rows, rank=1)
    assert [p["id"] for p in rank1] == ["t1-r1", "t3-r1"]
    assert counts.kept == 2 and counts.no_ranked_reply == 4
    spanish, counts = select_first_turn(rows, lang="es")
    assert spanish == [{"id": "t2-r0", "tree_id": "t2", "prompt": "¿Qué hora es?", "response": "No tengo reloj."}]
    assert counts.non_english == 6  # every English tree, minus the deleted root counted first


def test_gzip(tmp_path):
    path = tmp_path / "m.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in fixture_rows())
    assert first_turn_pairs(read_messages(path)) == EXPECTED


def test_bad_json_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", fixture_rows()[:2])
    with path.open("a") as f:
        f.write('{"message_id": "t9", "parent_id": null,\n')
    with pytest.raises(OasstFormatError, match=rf"{tmp_path / 'bad.jsonl'}:3: not valid JSON"):
        read_messages(path)
    assert issubclass(OasstFormatError, ValueError)


def test_missing_field_names_file_line_and_field(tmp_path):
    rows = fixture_rows()[:4]
    del rows[3]["rank"]
    path = write(tmp_path / "missing.jsonl", rows)
    with pytest.raises(ValueError) as err:
        read_messages(path)
    msg_ = str(err.value)
    assert msg_.startswith(f"{path}:4: missing field 'rank'"), msg_


@pytest.mark.parametrize("field,value,expected", [
    ("role", "user", "field 'role' must be one of"),
    ("deleted", "no", "field 'deleted' must be true or false"),
    ("rank", 0.5, "field 'rank' must be an integer or null"),
    ("text", None, "field 'text' must be a string"),
])
def test_bad_values_name_the_field(tmp_path, field, value, expected):
    rows = fixture_rows()[:3]
    rows[1][field] = value
    path = write(tmp_path / "v.jsonl", rows)
    with pytest.raises(OasstFormatError, match=rf"v\.jsonl:2: {expected}"):
        read_messages(path)


def test_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(OasstFormatError, match=r"list\.jsonl:1: expected a JSON object"):
        read_messages(path)


def test_load_seed_with_path_and_bad_kind(tmp_path):
    path = write(tmp_path / "ift.jsonl", fixture_rows())
    assert load_seed("ift", path) == EXPECTED
    assert load_seed("eft", str(path)) == EXPECTED
    with pytest.raises(ValueError, match="seed kind"):
        load_seed("dpo")
