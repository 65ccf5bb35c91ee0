"""Chat examples -> token ids with the prompt masked, as both SFT and DPO train on them.

The prompt is the chat template up to the assistant header; the target is the response
followed by the template's end token, exactly what the model emits at generation time.
Loss (SFT) and log-probs (DPO) cover target tokens only.
"""

from __future__ import annotations

import torch

IGNORE = -100


def encode_prompt(tok, messages: list[dict]) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def encode_target(tok, response: str) -> list[int]:
    return tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def join(prompt_ids: list[int], target_ids: list[int], max_len: int) -> tuple[list[int], int]:
    """prompt + target cut to max_len: the target keeps at least half the budget, the prompt
    loses its left end first (a judge prompt without its first lines still ends in the
    instruction and response, which matter more than the rubric's opening)."""
    if len(prompt_ids) + len(target_ids) > max_len:
        target_ids = target_ids[:max(max_len - len(prompt_ids), max_len // 2)]
        overflow = len(prompt_ids) + len(target_ids) - max_len
        if overflow > 0:
            prompt_ids = prompt_ids[overflow:]
    return prompt_ids + target_ids, len(prompt_ids)


def collate(seqs: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels equal input_ids on target tokens and IGNORE elsewhere."""
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(seqs):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
