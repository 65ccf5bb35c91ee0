"""DPO (Rafailov et al. 2023) on summed response log-probs, computed by the log-prob kernel.

loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
where pi_c is the policy's log-prob of the chosen response given the prompt (sum over its
tokens, prompt excluded; `mean` divides by the token count instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tokenize import IGNORE


def response_logps(model, batch: dict[str, torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """Per-sequence log-prob of the target tokens: [B] float32."""
    from ..kernels import sequence_logprobs

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Position t predicts token t+1: drop the last logit row and the first label.
    labels = batch["labels"][:, 1:]
    # The logits are needed for nothing else (the LM head saves its input, not its output),
    # so the backward may write the gradient into their buffer: no second [B, T, V] tensor.
    logps = sequence_logprobs(logits[:, :-1], labels, ignore_index=IGNORE, inplace_backward=torch.is_grad_enabled())
    if reduction == "mean":
        logps = logps / (labels != IGNORE).sum(-1).clamp(min=1)
    return logps


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards beta * (pi - ref) of chosen and rejected."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
