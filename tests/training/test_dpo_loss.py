"""DPO loss against a hand computation, and the direction of one optimizer step."""

import copy
import math

import torch

from srlm_hpc.training.dpo_loss import dpo_loss, response_logps
from srlm_hpc.training.tokenize import IGNORE, collate


def tiny_model(vocab=50):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).double().eval()


def hand_logp(model, ids: list[int], n_prompt: int) -> float:
    """sum over response tokens of log p(token | prefix), one position at a time, by explicit softmax."""
    total = 0.0
    for t in range(n_prompt, len(ids)):
        logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].tolist()
        m = max(logits)
        log_z = m + math.log(sum(math.exp(x - m) for x in logits))
        total += logits[ids[t]] - log_z
    return total


def test_response_logps_match_hand_computation_and_skip_the_prompt():
    model = tiny_model()
    chosen, rejected = ([1, 5, 9, 3, 7, 2], 3), ([1, 5, 9, 11, 2], 3)  # (ids, prompt length)
    batch = collate([chosen, rejected], pad_id=0)
    assert batch["labels"][0, :3].eq(IGNORE).all() and batch["labels"][1, 5:].eq(IGNORE).all()
    got = response_logps(model, batch).tolist()
    want = [hand_logp(model, *chosen), hand_logp(model, *rejected)]
    assert got == [pytest_approx(w) for w in want]
    mean = response_logps(model, batch, reduction="mean").tolist()
    assert mean == [pytest_approx(want[0] / 3), pytest_approx(want[1] / 2)]


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-5, abs=1e-6)


def test_dpo_loss_matches_formula():
    pc, pr, rc, rr = (torch.tensor([-10.0, -3.0]), torch.tensor([-12.0, -2.0]),
                      torch.tensor([-11.0, -3.5]), torch.tensor([-11.5, -2.5]))
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.1)
    for i in range(2):
        margin = 0.1 * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        assert losses[i].item() == pytest_approx(-math.log(1 / (1 + math.exp(-margin))))
        assert cr[i].item() == pytest_approx(0.1 * (pc[i] - rc[i]).item())
        assert rj[i].item() == pytest_approx(0.1 * (pr[i] - rr[i]).item())
    equal, _, _ = dpo_loss(pc, pr, pc, pr, beta=0.1)
    assert torch.allclose(equal, torch.full((2,), math.log(2.0)))  # policy == reference: log 2


def test_one_step_raises_the_chosen_ratio_over_the_rejected():
    policy = tiny_model().float().train()
    ref = copy.deepcopy(policy).eval()
    batch = collate([([1, 5, 9, 3, 7, 2], 3), ([1, 5, 9, 11, 4, 2], 3)], pad_id=0)
    with torch.no_grad():
        r = response_logps(ref, batch)
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    lp = response_logps(policy, batch)
    loss, _, _ = dpo_loss(lp[:1], lp[1:], r[:1], r[1:], beta=0.1)
    loss.sum().backward()
    opt.step()
    with torch.no_grad():
        after = response_logps(policy, batch)
    chosen_ratio, rejected_ratio = (after - r).tolist()
    assert chosen_ratio > 0 > rejected_ratio
    new_loss, _, _ = dpo_loss(after[:1], after[1:], r[:1], r[1:], beta=0.1)
    assert new_loss.item() < loss.item()


def test_response_positions_only_head_has_the_gradient_of_full_logits():
    """Scoring only response positions must not change the gradient: compare every parameter's
    gradient with plain log_softmax over the full [B, T, V] logits."""
    model = tiny_model()
    seqs = [([1, 5, 9, 3, 7, 2], 3), ([1, 5, 9, 11, 2], 2), ([4, 4, 6, 8, 10, 12, 14], 6)]
    batch = collate(seqs, pad_id=0)
    weights = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)

    model.zero_grad()
    (response_logps(model, batch).double() * weights).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    ((lp * mask).sum(-1) * weights).sum().backward()
    for name, p in model.named_parameters():
        # the kernel accumulates in fp32, the reference in fp64
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
