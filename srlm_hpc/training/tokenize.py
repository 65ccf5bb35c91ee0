"""Chat examples -> token ids with the prompt masked, as both SFT and DPO train on them.

The prompt is the chat template up to the assistant header; the target is the response
followed by the template's end token, exactly what the model emits at generation time. A
response the engine cut at max_tokens (finish reason "length") never emitted that token, so
its target ends without it (`encode_target(..., eos=False)`). Loss (SFT) and log-probs (DPO)
cover target tokens only.

Too long for max_len: the target keeps at least half the budget and the prompt loses the left
end of the user's text, never the template's own tokens around it (system header, role
markers, the assistant header): a model never sees a prompt without its chat header. Chosen
and rejected of a DPO pair must condition on the same prompt tokens: a pair that would be cut
differently on the two sides is dropped (`encode_pair` returns None; DPO counts them).
"""

from __future__ import annotations

import torch

IGNORE = -100
_PLACEHOLDER = "\x00srlm-user-text\x00"  # rendered in place of the user's text to find the template's own tokens


def _ids(enc) -> list[int]:
    return list(enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc)


def encode_prompt(tok, messages: list[dict]) -> list[int]:
    return _ids(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def prompt_parts(tok, messages: list[dict]) -> tuple[list[int], int, int]:
    """(ids, head, tail): `ids` as encode_prompt gives them; the first `head` and the last `tail`
    of them are the template's own tokens before and after the last message's text (a token that
    straddles the boundary counts as text). apply_chat_template(tokenize=True) renders the text
    and tokenizes it without special tokens, so the offsets of that same call place the boundary."""
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    marked = tok.apply_chat_template(messages[:-1] + [{**messages[-1], "content": _PLACEHOLDER}],
                                     add_generation_prompt=True, tokenize=False)
    start = common_prefix_len(text, marked)
    end = len(text) - common_prefix_len(text[start:][::-1], marked[start:][::-1])
    if getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        head = sum(1 for _ in _while(offsets, lambda o: o[1] <= start))
        tail = sum(1 for _ in _while(reversed(offsets), lambda o: o[0] >= end))
        return ids, head, min(tail, len(ids) - head)
    ids = _ids(tok(text, add_special_tokens=False))  # slow tokenizer: no offsets, tokenize the pieces
    head_ids = _ids(tok(text[:start], add_special_tokens=False))
    tail_ids = _ids(tok(text[end:], add_special_tokens=False))
    head = len(head_ids) if ids[:len(head_ids)] == head_ids else 0
    tail = len(tail_ids) if tail_ids and ids[-len(tail_ids):] == tail_ids else 0
    return ids, head, min(tail, len(ids) - head)


def common_prefix_len(a, b) -> int:
    """How many leading items two sequences (strings, token lists) share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _while(items, keep):
    for item in items:
        if not keep(item):
            return
        yield item


def encode_target(tok, response: str, eos: bool = True) -> list[int]:
    """The response's tokens, then the end token unless the response was cut (eos=False)."""
    ids = tok(response, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if eos else ids


def join(prompt_ids: list[int], target_ids: list[int], max_len: int, head: int = 0,
         tail: int = 0) -> tuple[list[int], int]:
    """prompt + target cut to max_len: the target keeps at least half the budget, the prompt
    loses its left end first (a judge prompt without its first lines still ends in the
    instruction and response, which matter more than the rubric's opening), but never its
    first `head` or last `tail` tokens (the chat template's own: see prompt_parts)."""
    if len(prompt_ids) + len(target_ids) > max_len:
        if head + tail >= max_len:
            raise ValueError(f"max_len={max_len}: the chat template's own {head + tail} tokens leave no room for "
                             f"text; raise sft.max_len / dpo.max_len")
        target_ids = target_ids[:min(max(max_len - len(prompt_ids), max_len // 2), max_len - head - tail)]
        overflow = len(prompt_ids) + len(target_ids) - max_len
        if overflow > 0:
            prompt_ids = prompt_ids[:head] + prompt_ids[head + overflow:]
    return prompt_ids + target_ids, len(prompt_ids)


def encode_example(tok, prompt: str, response: str, max_len: int, eos: bool = True) -> tuple[list[int], int]:
    """One (user prompt, response) as SFT trains on it: (ids, prompt length)."""
    ids, head, tail = prompt_parts(tok, [{"role": "user", "content": prompt}])
    return join(ids, encode_target(tok, response, eos), max_len, head, tail)


def encode_pair(tok, prompt: str, chosen: str, rejected: str, max_len: int, chosen_eos: bool = True,
                rejected_eos: bool = True) -> tuple[tuple[list[int], int], tuple[list[int], int]] | None:
    """(chosen, rejected) as DPO scores them, or None when fitting them into max_len would give
    the two sides different prompt tokens: their log-prob ratio would then compare answers to
    two different questions."""
    ids, head, tail = prompt_parts(tok, [{"role": "user", "content": prompt}])
    c = join(ids, encode_target(tok, chosen, chosen_eos), max_len, head, tail)
    r = join(ids, encode_target(tok, rejected, rejected_eos), max_len, head, tail)
    if c[0][:c[1]] != r[0][:r[1]]:
        return None
    return c, r


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
