"""Tokenization for SFT and DPO on SmolLM2's real tokenizer and chat template: the end token of
finished and truncated targets, left truncation that keeps the chat header, and DPO pairs whose
two sides would see different prompt tokens."""

from __future__ import annotations

import pytest

from srlm_hpc.training.tokenize import encode_example, encode_pair, encode_prompt, encode_target, join, prompt_parts


@pytest.fixture(scope="module")
def tok(smollm_tokenizer_dir):
    from srlm_hpc.models import load_tokenizer

    return load_tokenizer(smollm_tokenizer_dir)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_a_finished_target_ends_with_the_end_token_and_a_truncated_one_does_not(tok):
    done, cut = encode_target(tok, "The answer is four."), encode_target(tok, "The answer is", eos=False)
    assert done[-1] == tok.eos_token_id and done[:-1] == tok("The answer is four.", add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id not in cut and cut == tok("The answer is", add_special_tokens=False)["input_ids"]
    ids, n_prompt = encode_example(tok, "Say it.", "The answer is", 1024, eos=False)
    assert ids[n_prompt:] == cut


def test_prompt_parts_split_the_template_from_the_users_text(tok):
    text = "Explain photosynthesis to a ten year old."
    ids, head, tail = prompt_parts(tok, user(text))
    assert ids == encode_prompt(tok, user(text))
    assert tok.decode(ids[head:len(ids) - tail]) == text
    assert tok.decode(ids[:head]).endswith("<|im_start|>user\n") and tok.decode(ids[:head]).startswith("<|im_start|>system")
    assert tok.decode(ids[len(ids) - tail:]) == "<|im_end|>\n<|im_start|>assistant\n"


def test_left_truncation_cuts_the_users_text_never_the_chat_header(tok):
    text = " ".join(f"word{i}" for i in range(400))
    ids, head, tail = prompt_parts(tok, user(text))
    target = encode_target(tok, "A short answer.")
    max_len = 120
    assert len(ids) + len(target) > max_len  # the case under test: the prompt must lose tokens
    out, n_prompt = join(ids, target, max_len, head, tail)
    assert len(out) == max_len and out[n_prompt:] == target
    assert out[:head] == ids[:head]  # system header and "user" marker intact
    assert out[n_prompt - tail:n_prompt] == ids[len(ids) - tail:]  # the assistant header intact
    assert out[head:n_prompt - tail] == ids[len(ids) - tail - (n_prompt - tail - head):len(ids) - tail]  # text's right end
    assert encode_example(tok, text, "A short answer.", max_len) == (out, n_prompt)
    # the old cut (no head given) loses the header: what this guards against
    assert join(ids, target, max_len)[0][:head] != ids[:head]


def test_a_long_target_keeps_half_the_budget_and_the_template_still_fits(tok):
    ids, head, tail = prompt_parts(tok, user(" ".join(["long"] * 300)))
    target = encode_target(tok, " ".join(["answer"] * 300))
    out, n_prompt = join(ids, target, 100, head, tail)
    assert len(out) == 100 and len(out) - n_prompt == 50 and out[:head] == ids[:head]
    with pytest.raises(ValueError, match=r"max_len=\d+: the chat template's own \d+ tokens leave no room"):
        join(ids, target, head + tail, head, tail)


def test_a_pair_cut_differently_on_its_two_sides_is_refused(tok):
    prompt = " ".join(f"fact{i}" for i in range(60))
    short, long = "Yes.", " ".join(["detail"] * 80)
    n_prompt = len(encode_prompt(tok, user(prompt)))
    assert encode_pair(tok, prompt, short, long, 4096) is not None  # everything fits: kept
    c, r = encode_pair(tok, prompt, short, long, 4096)
    assert c[0][:c[1]] == r[0][:r[1]] == encode_prompt(tok, user(prompt))
    # max_len between: the long side must cut the prompt, the short side need not
    assert encode_pair(tok, prompt, short, long, n_prompt + 40) is None
    # both targets longer than their half of the budget: cut to it, the prompt loses the same, kept
    longer = " ".join(["detail"] * 200)
    pair = encode_pair(tok, prompt, longer, longer + " more", n_prompt + 40)
    assert pair is not None and pair[0][0][:pair[0][1]] == pair[1][0][:pair[1][1]]


def test_truncated_sides_of_a_pair_end_without_the_end_token(tok):
    (c_ids, _), (r_ids, _) = encode_pair(tok, "Q?", "Full answer.", "Cut ans", 1024, chosen_eos=True, rejected_eos=False)
    assert c_ids[-1] == tok.eos_token_id and r_ids[-1] != tok.eos_token_id
