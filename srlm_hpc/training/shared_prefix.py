"""Chosen and rejected of a DPO pair in one row: their common prefix (the prompt) computed once.

A pair's two sequences start with the same tokens (the chat-templated prompt, and often the
first words of both answers), so the transformer's hidden states there are the same in both:
position t depends on tokens 0..t only. One row per pair holds

    [ shared prefix (s tokens) | chosen's rest | rejected's rest | padding ]
    positions 0..s-1             s..len_c-1      s..len_r-1

with an attention mask that is causal, except that rejected's tokens do not see chosen's
(a tree mask; "Accelerating Direct Preference Optimization with Prefix Sharing", Wang et al.
2024, do the same with FlexAttention). Every hidden state is then exactly the one the
unshared forward computes, and the gradient reaching the prefix is the sum over both
continuations, as in the unshared forward (tests/training/test_shared_prefix.py checks loss
and every parameter's gradient, fp32, atol 1e-5). The LM head and the log-prob kernel run on
the response positions only, as in dpo_loss.response_logps.

The prefix is the longest common prefix of the two token lists, so a pair whose prompt was
left-truncated differently on each side (tokenize.join cuts the prompt to fit max_len)
shares less, or nothing, and stays exact. What it saves on the bench data (prompt 60-150
tokens with the template, answers 50-250): bench/dpo_step.py --profile-sharing.
"""

from __future__ import annotations

import torch

from .tokenize import IGNORE, common_prefix_len

# Segment ids of a row's positions.
SHARED, CHOSEN, REJECTED, PAD = 0, 1, 2, 3

Seq = tuple[list[int], int]  # (token ids, prompt length), as tokenize.join returns


def collate_shared(pairs: list[tuple[Seq, Seq]], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per (chosen, rejected) pair, right-padded to the longest row.

    Returns input_ids, position_ids, segments ([B, L], SHARED/CHOSEN/REJECTED/PAD) and the
    targets: for each response token of each sequence, `target_pos` (its predictor's flat
    index in the [B*L] row positions), `target_label` (the token) and `target_seq` (which
    sequence: chosen of pair i is i, rejected is B+i, the order of dpo.pair_batch)."""
    b = len(pairs)
    target_pos, target_label, target_seq = [], [], []
    width = max(len(c[0]) + len(r[0]) - common_prefix_len(c[0], r[0]) for c, r in pairs)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    segments = torch.full((b, width), PAD, dtype=torch.long)
    for i, ((c_ids, c_n), (r_ids, r_n)) in enumerate(pairs):
        s = common_prefix_len(c_ids, r_ids)
        row = c_ids + r_ids[s:]
        input_ids[i, :len(row)] = torch.tensor(row)
        position_ids[i, :len(c_ids)] = torch.arange(len(c_ids))
        position_ids[i, len(c_ids):len(row)] = torch.arange(s, len(r_ids))
        segments[i, :s] = SHARED
        segments[i, s:len(c_ids)] = CHOSEN
        segments[i, len(c_ids):len(row)] = REJECTED
        for seq, (ids, n_prompt), offset in ((i, (c_ids, c_n), s), (b + i, (r_ids, r_n), len(c_ids))):
            # Row index of each token of this side: the prefix, then its own continuation.
            where = list(range(s)) + list(range(offset, offset + len(ids) - s))
            for t in range(max(n_prompt, 1), len(ids)):  # token t is predicted at token t-1
                target_pos.append(i * width + where[t - 1])
                target_label.append(ids[t])
                target_seq.append(seq)
    return {"input_ids": input_ids, "position_ids": position_ids, "segments": segments,
            "target_pos": torch.tensor(target_pos, dtype=torch.long),
            "target_label": torch.tensor(target_label, dtype=torch.long),
            "target_seq": torch.tensor(target_seq, dtype=torch.long)}


def tree_mask(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool, True where query q may attend key k: causal over the row, rejected
    never sees chosen, nobody sees padding; a padding query sees itself only (an all-False row
    would make softmax NaN; its output is never read)."""
    q, k = segments[:, :, None], segments[:, None, :]
    idx = torch.arange(segments.shape[1], device=segments.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    allowed = causal & ~((q == REJECTED) & (k == CHOSEN)) & (k != PAD)
    allowed = torch.where(q == PAD, idx[:, None] == idx[None, :], allowed)
    return allowed[:, None]


def attention_mask_for(model, allowed: torch.Tensor) -> torch.Tensor:
    """The 4D mask as the model's attention takes it (transformers passes a 4D mask through
    untouched): bool for SDPA, additive float (0 or the dtype's min) for eager."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return allowed
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min)
    raise ValueError(f"dpo.share_prompt=true needs attention that takes a 4D mask (sdpa or eager); this "
                     f"model uses attn_implementation={impl!r}: set dpo.share_prompt=false")


def shared_response_logps(model, batch: dict[str, torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """[2B] float32 log-probs of the response tokens, chosen of every pair first, then rejected:
    what dpo_loss.response_logps returns for dpo.pair_batch of the same pairs."""
    return shared_head(model, shared_hidden(model, batch), batch, reduction)


def shared_hidden(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The backbone's last hidden states [B, L, H] of collate_shared's rows."""
    mask = attention_mask_for(model, tree_mask(batch["segments"]))
    return model.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                               attention_mask=mask, use_cache=False).last_hidden_state


def shared_head(model, hidden: torch.Tensor, batch: dict[str, torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """LM head and log-prob kernel on the response positions of the rows only -> [2B] float32."""
    from ..kernels import sequence_logprobs

    rows = hidden.reshape(-1, hidden.shape[-1])[batch["target_pos"]]
    logits = model.get_output_embeddings()(rows)  # [N, V], response positions only
    labels = batch["target_label"]
    per_token = sequence_logprobs(logits[:, None], labels[:, None], ignore_index=IGNORE,
                                  inplace_backward=torch.is_grad_enabled())
    n_seqs = 2 * batch["input_ids"].shape[0]
    logps = torch.zeros(n_seqs, dtype=per_token.dtype, device=per_token.device).index_add(
        0, batch["target_seq"], per_token)
    if reduction == "mean":
        logps = logps / target_counts(batch).to(logps.device).clamp(min=1)
    return logps


def target_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[2B] response tokens scored per sequence (chosen first, then rejected)."""
    return torch.bincount(batch["target_seq"], minlength=2 * batch["input_ids"].shape[0])
