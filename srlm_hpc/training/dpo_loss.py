"""DPO (Rafailov et al. 2023) on summed response log-probs, computed by the log-prob kernel.
(Chosen and rejected with their prompt run once: training/shared_prefix.py, the dpo stage's default.)

loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
where pi_c is the policy's log-prob of the chosen response given the prompt (sum over its
tokens, prompt excluded; `mean` divides by the token count instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tokenize import IGNORE


def response_logps(model, batch: dict[str, torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """Per-sequence log-prob of the target tokens: [B] float32.

    Only the positions that predict a response token go through the LM head: the prompt
    (often most of the sequence) and the padding never become [V]-wide logits. On SmolLM2
    this halves the head's time and its logits memory (bench/dpo_step.py). Each kept
    position is scored as a one-token "sequence" by the log-prob kernel, then summed back
    into its sequence. (Plain LM heads only: models that rescale or soft-cap logits after
    the head are not supported, as in SFT's loss.)"""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return response_head(model, hidden, batch["labels"], reduction)


def response_head(model, hidden: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """response_logps after the backbone: hidden [B, T, H] and labels [B, T] -> [B] float32."""
    from ..kernels import sequence_logprobs

    labels = labels[:, 1:]  # position t predicts token t+1
    active = labels != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][active])  # [N, V], response positions only
    # The logits are needed for nothing else (the LM head saves its input, not its output),
    # so the backward may write the gradient into their buffer: no second [N, V] tensor.
    per_token = sequence_logprobs(logits[:, None], labels[active][:, None], ignore_index=IGNORE,
                                  inplace_backward=torch.is_grad_enabled())
    row = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[active]
    logps = torch.zeros(labels.shape[0], dtype=per_token.dtype, device=per_token.device).index_add(0, row, per_token)
    if reduction == "mean":
        logps = logps / active.sum(-1).clamp(min=1)
    return logps


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards beta * (pi - ref) of chosen and rejected."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
