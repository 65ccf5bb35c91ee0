"""Prefix sharing (chosen and rejected in one row, their common prefix computed once) gives the
loss and the gradients of the unshared forward: fp32, atol 1e-5, on the tiny random Llama with
SmolLM2's tokenizer, pairs of unequal prompt and response lengths, and left-truncated prompts."""

import random

import pytest
import torch

from srlm_hpc.training.dpo_loss import dpo_loss, response_logps
from srlm_hpc.training.shared_prefix import (CHOSEN, PAD, REJECTED, SHARED, collate_shared, shared_response_logps,
                                             target_counts, tree_mask)
from srlm_hpc.training.tokenize import collate, encode_pair, encode_prompt, encode_target, join


def load(tiny_llama, attn="sdpa"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation=attn)
    return model.train(), AutoTokenizer.from_pretrained(tiny_llama)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "river", "stone", "blue", "seven", "quietly",
                                "the", "of", "answer", "because", "light"]) for _ in range(n))


def make_pairs(tok, max_len: int, seed: int = 0):
    """Pairs whose prompts and answers differ in length; with a small max_len, join cuts the
    prompt's left end, by a different amount on each side when the answers differ in length."""
    rng = random.Random(seed)
    out = []
    for n_prompt, n_c, n_r in [(3, 12, 30), (25, 5, 6), (9, 40, 2), (14, 14, 14), (40, 25, 8)]:
        prompt = encode_prompt(tok, [{"role": "user", "content": words(rng, n_prompt)}])
        chosen, rejected = encode_target(tok, words(rng, n_c)), encode_target(tok, words(rng, n_r))
        out.append((join(prompt, chosen, max_len), join(prompt, rejected, max_len)))
    # the two answers begin alike: the shared prefix runs into the response
    prompt = encode_prompt(tok, [{"role": "user", "content": "say something"}])
    out.append((join(prompt, encode_target(tok, "Sure, here is alpha"), max_len),
                join(prompt, encode_target(tok, "Sure, here is a river of stones"), max_len)))
    # as the dpo stage encodes a pair (encode_pair): both answers long, so both sides lose the
    # same left end of the user's text, never the template's tokens
    pair = encode_pair(tok, words(rng, 40), words(rng, 35), words(rng, 50), max_len)
    assert pair is not None
    out.append(pair)
    return out


def unshared(model, pairs):
    seqs = [c for c, _ in pairs] + [r for _, r in pairs]
    return response_logps(model, collate(seqs, pad_id=0))


def loss_and_grads(model, logps_fn, pairs):
    """A DPO loss against fixed reference values, and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    lp = logps_fn(model, pairs)
    n = len(pairs)
    ref = torch.linspace(-40.0, -10.0, 2 * n)
    losses, _, _ = dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], beta=0.1)
    loss = losses.mean() + 1e-3 * lp.sum()  # a direct term too, so each log-prob's gradient is checked
    loss.backward()
    return lp.detach(), loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def shared(model, pairs):
    return shared_response_logps(model, collate_shared(pairs, pad_id=0))


@pytest.mark.parametrize("max_len,attn", [(1024, "sdpa"), (64, "sdpa"), (64, "eager")])
def test_shared_prefix_loss_and_gradients_equal_the_unshared_forward(tiny_llama, max_len, attn):
    model, tok = load(tiny_llama, attn)
    pairs = make_pairs(tok, max_len)
    if max_len == 64:  # the truncations this case is for did happen: on one side more than the
        assert any(c[1] != r[1] for c, r in pairs)  # other (join), and on both alike (encode_pair)
        (c_ids, c_n), (r_ids, r_n) = pairs[-1]
        assert len(c_ids) == len(r_ids) == max_len and c_n == r_n and c_ids[:c_n] == r_ids[:r_n]
    lp_a, loss_a, grads_a = loss_and_grads(model, unshared, pairs)
    lp_b, loss_b, grads_b = loss_and_grads(model, shared, pairs)
    torch.testing.assert_close(lp_b, lp_a, rtol=0, atol=1e-5 * max(1.0, lp_a.abs().max().item() / 100))
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5, msg=name)


def test_mean_reduction_divides_by_each_sides_own_token_count(tiny_llama):
    model, tok = load(tiny_llama)
    pairs = make_pairs(tok, 1024)
    with torch.no_grad():
        want = response_logps(model, collate([c for c, _ in pairs] + [r for _, r in pairs], 0), "mean")
        got = shared_response_logps(model, collate_shared(pairs, 0), "mean")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_row_layout_positions_and_mask_by_hand():
    """prompt [5 6 7], chosen [8 9], rejected [8 4 3]: the prefix is 5 6 7 8 (the answers share 8)."""
    chosen, rejected = ([5, 6, 7, 8, 9], 3), ([5, 6, 7, 8, 4, 3], 3)
    other = ([1, 2], 1), ([3], 1)  # nothing in common, so nothing shared; shorter: padded
    b = collate_shared([(chosen, rejected), other], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4, 3], [1, 2, 3, 0, 0, 0, 0]]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 4, 5]
    assert b["position_ids"][1, :3].tolist() == [0, 1, 0]
    assert b["segments"].tolist() == [[SHARED] * 4 + [CHOSEN, REJECTED, REJECTED], [CHOSEN, CHOSEN, REJECTED] + [PAD] * 4]
    # chosen 8, 9 are predicted at row positions 2, 3; rejected 8, 4, 3 at 2, 3, 5 (3 follows 4 at row 5)
    got = sorted(zip(b["target_seq"].tolist(), b["target_pos"].tolist(), b["target_label"].tolist()))
    assert got == [(0, 2, 8), (0, 3, 9), (1, 7, 2), (2, 2, 8), (2, 3, 4), (2, 5, 3)]
    assert target_counts(b).tolist() == [2, 1, 3, 0]
    m = tree_mask(b["segments"])[0, 0].int().tolist()
    assert m[4] == [1, 1, 1, 1, 1, 0, 0]  # chosen's 9 sees the prefix and itself
    assert m[5] == [1, 1, 1, 1, 0, 1, 0]  # rejected's 4 sees the prefix, not chosen's 9
    assert m[6] == [1, 1, 1, 1, 0, 1, 1]
    pad_row = tree_mask(b["segments"])[1, 0].int().tolist()
    assert pad_row[2] == [0, 0, 1, 0, 0, 0, 0]  # rejected [3] starts fresh: it sees only itself
    assert pad_row[5] == [0, 0, 0, 0, 0, 1, 0]  # padding sees itself only (no NaN row)


def test_identical_or_nested_sequences_stay_exact(tiny_llama):
    """A side that is all prefix (rejected = chosen cut short) has no row positions of its own."""
    model, tok = load(tiny_llama)
    prompt = encode_prompt(tok, [{"role": "user", "content": "count"}])
    long = encode_target(tok, "one two three four")
    pairs = [(join(prompt, long, 1024), (prompt + long[:3], len(prompt))),
             (join(prompt, long, 1024), join(prompt, long, 1024))]
    b = collate_shared(pairs, 0)
    assert b["input_ids"].shape[1] == len(prompt) + len(long)  # nothing repeated
    with torch.no_grad():
        want = unshared(model, pairs)
        got = shared_response_logps(model, b)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert got[0].item() == pytest.approx(got[3].item(), abs=1e-5)


def test_other_attention_implementations_are_refused_with_the_fix(tiny_llama):
    from srlm_hpc.training.shared_prefix import attention_mask_for

    model, _ = load(tiny_llama)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="dpo.share_prompt=false"):
        attention_mask_for(model, torch.ones(1, 1, 2, 2, dtype=torch.bool))


def test_the_stages_score_the_same_with_and_without_sharing(tiny_llama):
    """dpo.pair_logps and ref_logps.score_pairs (what the dpo and ref_logps stages call), with
    dpo.share_prompt true and false, micro-batches of 2 over 6 pairs (the last one odd-sized)."""
    from srlm_hpc.stages.dpo import pair_logps
    from srlm_hpc.stages.ref_logps import score_pairs

    model, tok = load(tiny_llama)
    pairs = make_pairs(tok, 64)[:5]
    with torch.no_grad():
        a = score_pairs(model, pairs, tok.pad_token_id, "cpu", 2, share_prompt=True)
        b = score_pairs(model, pairs, tok.pad_token_id, "cpu", 2, share_prompt=False)
        lp_a, n_a = pair_logps(model, pairs, [4, 0], tok.pad_token_id, "cpu", True, "mean")
        lp_b, n_b = pair_logps(model, pairs, [4, 0], tok.pad_token_id, "cpu", False, "mean")
    assert [s[2:] for s in a] == [s[2:] for s in b] == [(len(c[0]) - c[1], len(r[0]) - r[1]) for c, r in pairs]
    torch.testing.assert_close(torch.tensor([s[:2] for s in a]), torch.tensor([s[:2] for s in b]), rtol=0, atol=1e-4)
    assert n_a.tolist() == n_b.tolist()
    torch.testing.assert_close(lp_a, lp_b, rtol=0, atol=1e-5)
