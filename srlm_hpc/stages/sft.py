"""Stage `sft`: M0 -> M1, fine-tuned on the IFT and EFT seed data (SPEC.md, seed data).

IFT teaches answering; EFT teaches judging: its prompts are the judge rubric around an
(instruction, response) and its targets a justification ending in "Score: N". Without
EFT the embedded model never writes a parseable score. Loss on target tokens only.

    python -m srlm_hpc.submit stage=sft iter=1 preset=demo
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import Config
from ..data.oasst import load_seed
from ..files import FileInfo, file_info
from ..models import freeze_bottom, load_model, load_tokenizer, model_path, resolve_device, save_model, weights_file
from ..shards import shard_seed
from ..training.loop import batch_plan, train
from ..training.tokenize import IGNORE, collate, encode_example
from .common import start_training, train_backend_options

STAGE = "sft"


def plan(cfg: Config) -> tuple[int, dict]:
    return 1, {"model": cfg.run.model}


def seed_examples(cfg: Config) -> list[dict]:
    examples = [dict(ex, source="ift") for ex in load_seed("ift", cfg.sft.ift_path or None)]
    if cfg.sft.use_eft:
        examples += [dict(ex, source="eft") for ex in load_seed("eft", cfg.sft.eft_path or None)]
    return examples


def encode(tok, examples: list[dict], max_len: int) -> list[tuple[list[int], int]]:
    return [encode_example(tok, ex["prompt"], ex["response"], max_len) for ex in examples]


def target_token_loss(model, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over target tokens, projecting only those positions to the vocab.

    An EFT example is ~90% judge prompt: computing [T, 49152] logits for every position
    and then masking most of them away costs most of a step on CPU. Only the positions
    that predict a target token go through the LM head. (Plain LM heads only: models
    that rescale or soft-cap logits after the head are not supported here.)"""
    hidden = model.get_decoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    labels = b["labels"][:, 1:]  # position t predicts token t+1
    keep = labels != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum"), int(keep.sum())


def run_shard(cfg: Config, shard: int) -> FileInfo | None:
    s = cfg.sft
    rank = start_training(cfg, s)
    device = resolve_device(cfg.run.device)
    base = model_path(cfg, 0)
    tok = load_tokenizer(base, cfg.run.chat_template)  # saved with M1: every later stage uses this template
    model = load_model(base, device=device, dropout=s.dropout)
    freeze_bottom(model, s.freeze_layers)
    examples = seed_examples(cfg)
    encoded = encode(tok, examples, s.max_len)
    stage_dir = cfg.stage_dir(STAGE)
    plan_ = batch_plan(len(encoded), s.batch_size, s.epochs, cfg.run.seed)

    def micro_step(idx: list[int], batch: list[int]):
        b = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], tok.pad_token_id).items()}
        n_batch_targets = sum(len(encoded[i][0]) - encoded[i][1] for i in batch)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=s.autocast == "bf16"):
            token_loss, n_tokens = target_token_loss(model, b)
        loss = token_loss / n_batch_targets  # token mean over the whole optimizer batch
        return loss, {"loss": loss.item(), "tokens": float(n_tokens)}

    train(model, plan_, s.micro_batch_size, micro_step, lr=s.lr, min_lr=s.min_lr, warmup=s.warmup_steps,
          weight_decay=s.weight_decay, grad_clip=s.grad_clip, stage_dir=stage_dir,
          seed=shard_seed(cfg.run.seed, cfg.run.iter, STAGE, shard),
          checkpoint_every=s.checkpoint_every or max(1, len(plan_) // 4),
          checkpoint_minutes=s.checkpoint_minutes, desc="sft",
          **train_backend_options(cfg, s))
    if rank != 0:
        return None  # rank 0 holds the full weights, saves them and owns the manifest entry
    out = save_model(model, tok, stage_dir / "model")
    return file_info(weights_file(out), records=len(examples))
