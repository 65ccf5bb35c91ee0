"""Pure PyTorch sequence log-probabilities: the test oracle and the fallback.

    python -c "import torch; from srlm_hpc.kernels.reference import sequence_logprobs_reference as f; \
print(f(torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))))"

Materialises a [B, T, V] tensor in the accumulation dtype (fp32, or fp64 for fp64
input): simple and obviously right, but ~2x the logits' memory for bf16 input,
which is what the C++/CUDA op avoids.
"""

from __future__ import annotations

import torch


def check_labels(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> None:
    """Raise ValueError naming the argument for shape, dtype or range errors."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be [B, T] = {tuple(logits.shape[:2])} to match logits, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64, got {labels.dtype}")
    V = logits.shape[-1]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"labels[{b}, {t}] = {int(labels[b, t])} is out of range [0, V={V}) "
                         f"and is not ignore_index={ignore_index}")


def sequence_logprobs_reference(logits: torch.Tensor, labels: torch.Tensor,
                                ignore_index: int = -100) -> torch.Tensor:
    """logp[b] = sum_t [labels[b,t] != ignore_index] * log_softmax(logits[b,t])[labels[b,t]].

    Returns float32 ([B]), or float64 for float64 logits. Differentiable.
    """
    check_labels(logits, labels, ignore_index)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(acc)
    active = labels != ignore_index
    safe = torch.where(active, labels, torch.zeros_like(labels))
    target = x.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    per_token = target - torch.logsumexp(x, dim=-1)
    # where, not multiply: an ignored row's value never leaks in, even if inf/NaN.
    return torch.where(active, per_token, torch.zeros_like(per_token)).sum(-1)
