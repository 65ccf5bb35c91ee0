"""Stage `dpo`: M_{k+1} = DPO(M_k, pairs of iteration k), reference frozen (SPEC.md step 5).

The reference log-probs come from the ref_logps stage when it ran (DPO then never loads the
reference), else they are computed here once, up front, under no_grad, and the reference is
freed before the policy trains: only one model is in memory while training. Both passes get
per-sequence summed log-probs from the log-prob kernel, each pair's chosen and rejected in one
row with their shared prompt run once (dpo.share_prompt, training/shared_prefix.py).
M_{k+1} is the final weights (dpo.select=last) or, as in the paper, the candidate checkpoint
that did best head-to-head against M_k on validation prompts (dpo.select=judge, dpo_select.py).

    python -m srlm_hpc.submit stage=dpo iter=1 preset=demo
"""

from __future__ import annotations

import torch

from ..config import Config
from ..files import FileInfo, atomic_write_json, file_info
from ..models import load_model, load_tokenizer, model_path, resolve_device, save_model, weights_file
from ..schema import PairRecord
from .pairs import iter_pairs
from ..training.dpo_loss import dpo_loss
from ..shards import shard_seed
from ..training.loop import batch_plan, train
from .common import start_training, train_backend_options
from .pair_scoring import (encode_pairs, pair_batch, pair_logps, reduced,  # noqa: F401 (re-exported)
                           reference_model_path, score_pairs, trainable_pairs)

STAGE, UPSTREAM = "dpo", "pairs"


def plan(cfg: Config) -> tuple[int, dict]:
    from .dpo_select import check_plan

    check_plan(cfg)  # dpo.select=judge: its prompts and backend, refused before anything trains
    return 1, {"reference": cfg.dpo.reference}


def reference_logps(cfg: Config, encoded, pad_id: int, device: str) -> torch.Tensor:
    """[n_pairs, 2] (chosen, rejected) log-probs under the frozen reference, computed here as the
    ref_logps stage computes them (score_pairs), with the reference loaded for this pass alone."""
    ref = load_model(reference_model_path(cfg), device=device).eval()
    scores = score_pairs(ref, encoded, pad_id, device, cfg.dpo.micro_batch_size, cfg.dpo.share_prompt)
    del ref
    return torch.tensor([reduced(s, cfg.dpo.logp_reduction) for s in scores], dtype=torch.float32).reshape(-1, 2)


def reference_logps_for(cfg: Config, pairs: list[PairRecord], encoded, pad_id: int, device: str) -> torch.Tensor:
    """The ref_logps stage's stored values when there are any (see dpo.reference_logps), else
    computed here with the reference loaded for that pass alone."""
    from . import ref_logps

    source = cfg.dpo.reference_logps
    if source == "stored" or (source == "auto" and ref_logps.stage_planned(cfg)):
        ref = ref_logps.load_reference_logps(cfg, pairs, encoded, reference_model_path(cfg))
        print(f"[dpo] reference log-probs of {len(pairs)} pairs read from {cfg.stage_dir(ref_logps.STAGE)}",
              flush=True)
        return ref
    return reference_logps(cfg, encoded, pad_id, device)


def run_shard(cfg: Config, shard: int) -> FileInfo | None:
    d = cfg.dpo
    rank = start_training(cfg, d)
    device = resolve_device(cfg.run.device)
    policy_path = model_path(cfg, cfg.run.iter)
    tok = load_tokenizer(policy_path)
    pairs = list(iter_pairs(cfg))
    if not pairs:
        raise ValueError(f"iter {cfg.run.iter}: the pairs stage kept no pairs; nothing to train on "
                         f"(see {cfg.stage_dir('pairs') / 'stats.json'} for why prompts were dropped)")
    n_pairs = len(pairs)
    pairs, encoded, n_cut = trainable_pairs(tok, pairs, d.max_len)
    if rank == 0:  # counted and reported, never trained (summary and report read it)
        atomic_write_json(cfg.stage_dir(STAGE) / "pairs_used.json", {
            "pairs": n_pairs, "trained": len(pairs), "dropped_prompt_cut_differently": n_cut, "max_len": d.max_len})
    if n_cut:
        print(f"[dpo] {n_cut} of {n_pairs} pairs dropped: cut to dpo.max_len={d.max_len}, their chosen and "
              f"rejected would see different prompt tokens (raise dpo.max_len to keep them)", flush=True)
    if not pairs:
        raise ValueError(f"iter {cfg.run.iter}: none of the {n_pairs} pairs fits dpo.max_len={d.max_len} with the "
                         f"same prompt tokens on both sides; raise dpo.max_len")
    plan_ = batch_plan(len(encoded), d.batch_size, d.epochs, cfg.run.seed)
    if d.select == "judge":
        from . import dpo_select

        if dpo_select.candidate_dir(cfg, len(plan_)).exists() or (cfg.stage_dir(STAGE) / "select.json").exists():
            # trained before a kill (the last candidate is saved before the last checkpoint): select only
            return file_info(weights_file(dpo_select.selected_model(cfg, len(plan_))), records=len(pairs))
    ref = reference_logps_for(cfg, pairs, encoded, tok.pad_token_id, device)
    policy = load_model(policy_path, device=device, dropout=d.dropout)

    def micro_step(idx: list[int], batch: list[int]):
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=d.autocast == "bf16"):
            lp, _ = pair_logps(policy, encoded, idx, tok.pad_token_id, device, d.share_prompt, d.logp_reduction)
        n = len(idx)
        r = ref[idx].to(lp.device)
        losses, chosen_r, rejected_r = dpo_loss(lp[:n], lp[n:], r[:, 0], r[:, 1], d.beta)
        share = n / len(batch)
        return losses.sum() / len(batch), {
            "loss": losses.mean().item() * share,
            "reward_chosen": chosen_r.mean().item() * share,
            "reward_rejected": rejected_r.mean().item() * share,
            "reward_margin": (chosen_r - rejected_r).mean().item() * share,
            "reward_accuracy": (chosen_r > rejected_r).float().mean().item() * share,
            # sequence tokens of both sides (summed over micro-batches: the step's tokens/s curve)
            "tokens": float(sum(len(encoded[i][0][0]) + len(encoded[i][1][0]) for i in idx)),
        }

    train(policy, plan_, d.micro_batch_size, micro_step, lr=d.lr, min_lr=d.min_lr, warmup=d.warmup_steps,
          weight_decay=0.0, grad_clip=d.grad_clip, stage_dir=cfg.stage_dir(STAGE),
          seed=shard_seed(cfg.run.seed, cfg.run.iter, STAGE, shard),
          checkpoint_every=d.checkpoint_every or max(1, len(plan_) // 4),
          checkpoint_minutes=d.checkpoint_minutes, desc="dpo",
          **train_backend_options(cfg, d), **candidate_saving(cfg, policy, tok, len(plan_)))
    if rank != 0:
        return None  # rank 0 holds the full weights, saves them and owns the manifest entry
    if d.select == "judge":
        from .dpo_select import selected_model

        del policy  # the engines load each candidate from disk: free its memory first
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return file_info(weights_file(selected_model(cfg, len(plan_))), records=len(pairs))
    out = save_model(policy, tok, cfg.stage_dir(STAGE) / "model")
    return file_info(weights_file(out), records=len(pairs))


def candidate_saving(cfg: Config, policy, tok, total: int) -> dict:
    """train()'s keyword that saves a candidate checkpoint (weights and tokenizer) every
    dpo.eval_every steps and at the last one, for dpo.select=judge; none for select=last."""
    if cfg.dpo.select != "judge":
        return {}
    from .dpo_select import candidate_dir, candidate_steps

    steps = set(candidate_steps(total, cfg.dpo.eval_every))

    def after_step(done: int) -> None:
        if done in steps:
            save_model(policy, tok, candidate_dir(cfg, done))
    return {"after_step": after_step}
