"""How a preference pair is scored, shared by the dpo and ref_logps stages (both import it,
neither imports the other for it): a pair's tokens as DPO scores them, the log-probs of a batch
of pairs under a model (the log-prob kernel; the shared prompt run once with share_prompt), the
reference model of an iteration, and the reduction dpo.logp_reduction asks for.
"""

from __future__ import annotations

import torch

from ..config import Config
from ..models import model_path
from ..schema import PairRecord
from ..training.dpo_loss import response_logps
from ..training.shared_prefix import collate_shared, shared_response_logps, target_counts
from ..training.tokenize import IGNORE, collate, encode_pair


def encode_pairs(tok, pairs: list[PairRecord], max_len: int) -> list[tuple[tuple, tuple] | None]:
    """Each pair's (chosen, rejected) token ids as DPO scores them; a side the engine cut at
    max_tokens (pairs.allow_truncated) ends without the end token. None for a pair that, cut to
    max_len, would give its two sides different prompt tokens (tokenize.encode_pair)."""
    return [encode_pair(tok, p.prompt, p.chosen, p.rejected, max_len, p.chosen_finish_reason != "length",
                        p.rejected_finish_reason != "length") for p in pairs]


def trainable_pairs(tok, pairs: list[PairRecord], max_len: int) -> tuple[list[PairRecord], list, int]:
    """(the pairs DPO trains on, their encodings, how many were dropped by encode_pairs' rule)."""
    kept = [(p, e) for p, e in zip(pairs, encode_pairs(tok, pairs, max_len)) if e is not None]
    return [p for p, _ in kept], [e for _, e in kept], len(pairs) - len(kept)


def pair_batch(encoded, idx: list[int], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Chosen sequences first, then rejected: one forward computes both."""
    seqs = [encoded[i][0] for i in idx] + [encoded[i][1] for i in idx]
    return {k: v.to(device) for k, v in collate(seqs, pad_id).items()}


def pair_logps(model, encoded, idx: list[int], pad_id: int, device: str, share_prompt: bool,
               reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """[2n] log-probs of the pairs `idx` (chosen of each, then rejected) and [2n] response token
    counts. share_prompt: one row per pair, the common prefix run once (training/shared_prefix.py);
    else the 2n sequences padded side by side (pair_batch). Same values (fp32, atol 1e-5)."""
    if share_prompt:
        batch = {k: v.to(device) for k, v in collate_shared([encoded[i] for i in idx], pad_id).items()}
        return shared_response_logps(model, batch, reduction), target_counts(batch)
    batch = pair_batch(encoded, idx, pad_id, device)
    return response_logps(model, batch, reduction), (batch["labels"][:, 1:] != IGNORE).sum(-1)


def reference_model_path(cfg: Config):
    return model_path(cfg, 1) if cfg.dpo.reference == "sft" else model_path(cfg, cfg.run.iter)


@torch.no_grad()
def score_pairs(model, encoded: list, pad_id: int, device: str, micro_batch_size: int,
                share_prompt: bool = True) -> list[tuple]:
    """[(chosen sum, rejected sum, chosen tokens, rejected tokens)] under `model`, in order
    (share_prompt: see pair_logps)."""
    out = []
    for start in range(0, len(encoded), micro_batch_size):
        idx = list(range(start, min(start + micro_batch_size, len(encoded))))
        lp, n_tokens = pair_logps(model, encoded, idx, pad_id, device, share_prompt)
        lp, n_tokens = lp.cpu().tolist(), n_tokens.cpu().tolist()
        n = len(idx)
        out += [(lp[i], lp[n + i], n_tokens[i], n_tokens[n + i]) for i in range(n)]
    return out


def reduced(score: tuple, reduction: str) -> tuple[float, float]:
    """(chosen, rejected) of one score_pairs tuple, as dpo.logp_reduction asks: summed log-probs,
    or their mean over target tokens."""
    c, r, n_c, n_r = score
    return (c / max(1, n_c), r / max(1, n_r)) if reduction == "mean" else (c, r)
