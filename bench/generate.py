"""Generation inside the stages against bare `vllm.LLM.generate` on the same shard in one call.

    python bench/generate.py                   # 16 prompts x 4 samples x 128 tokens; judge 8 prompts x 4 x 3 x 64
    python bench/generate.py --reps 3 --hf     # more repetitions, and the transformers engine's row

`stage` rows run the stage as it runs: `responses.run_shard` (then `judge.run_shard` on its
output) in a scratch work dir, through `engine_for` (one VLLMEngine, as a worker has it),
with the shard's resumable chunks of responses.batch_size prompts (judge: judge.batch_size
responses), each chunk's part written and fsynced, then the shard's file: everything but
the model load. `bare` rows call `vllm.LLM.generate` on the same LLM once, with every chunk's
prompts (chat-templated text, vLLM tokenises), the same per-request seeds, prefix caching on
(as in the stage), so both make the same tokens (the script checks the texts) and the
time ratio is all the stage adds. `before` is the stage's path until generate_chunks: one
`generate` per chunk, each drained before the next (--before-reps runs, default 1). `hf`
(--hf) is the transformers engine on the stage's chunks (a reference, one run).

Runs alternate between the paths, which go first by turns, and the fastest of each is
reported (the prefix cache is emptied before each run, so no path gets another's rubric).
A result is written only when the machine was quiet (_common.LoadGuard; exit 3 otherwise): bench/results/generate-cpu.json,
with headline stage_vs_bare_generate and stage_vs_bare_judge (time ratios, ours / bare).
About 8 minutes on 2 idle cores (SmolLM2-135M as converted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

from _common import ROOT, LoadGuard, cpu_model, git_rev, run_stamp, write_result


def seed_prompts(k: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "srlm_hpc" / "seed" / "ift.jsonl").open()]
    prompts = [r["text"] for r in rows if r.get("role") == "prompter" and r.get("parent_id") is None]
    if len(prompts) < k:
        raise SystemExit(f"--prompts {k}: the seed set has only {len(prompts)} first-turn prompts")
    return prompts[:k]


def machine() -> dict:
    return {"platform": platform.platform(), "cpu": cpu_model(fallback=""), "cores": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def versions() -> dict:
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import vllm

        out["vllm"] = vllm.__version__
    except ImportError:
        pass
    if rev := git_rev():
        out["git"] = rev
    return out


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def row(name, times, tokens, base=None) -> dict:
    # The fastest run, not the median: on a shared machine the slow runs measure the
    # other jobs (the same run's median varied 2x here with a load average of 5-8).
    wall = min(times)
    r = {"path": name, "wall_s": round(wall, 2), "runs_s": [round(t, 2) for t in times], "tokens": tokens,
         "tokens_per_s": round(tokens / wall, 1)}
    if base is not None:
        r["vs"] = base["path"]
        r["time_ratio"] = round(wall / base["wall_s"], 3)
    return r


# ---- the scratch run: a prompts stage done, the responses and judge shards as workers run them -------

def scratch_config(work: Path, model: Path, args):
    """A one-iteration run in `work` whose M1 is `model` (linked), one shard per stage."""
    from srlm_hpc.config import build_config

    shutil.rmtree(work, ignore_errors=True)
    (work / "iter1" / "sft").mkdir(parents=True)
    (work / "iter1" / "sft" / "model").symlink_to(model.resolve(), target_is_directory=True)
    return build_config({
        "work_dir": str(work), "run.engine": "vllm", "run.device": "cpu", "seed": "1234",
        "prompts.n_prompts": str(args.prompts), "responses.n": str(args.n), "responses.max_tokens": str(args.max_tokens),
        "responses.shard_size": str(args.prompts), "judge.k": str(args.judge_k),
        "judge.max_tokens": str(args.judge_max_tokens), "judge.shard_size": str(args.judge_prompts),
        "judge.judge_model": str(work / "iter1" / "sft" / "model")})  # M_k, by the path: the same engine


def mark_done(cfg, stage: str, info) -> None:
    from srlm_hpc.manifest import StageManifest

    man = StageManifest(cfg.manifest_root, cfg.run.iter, stage)
    man.write_plan(1, {"shard_size": info.records})
    man.mark_done(0, info)


def write_prompts(cfg, prompts: list[str]) -> None:
    from srlm_hpc.files import write_jsonl
    from srlm_hpc.shards import shard_output

    recs = [{"prompt_id": f"i1-s00000-{i:05d}", "prompt": p, "source": "seed"} for i, p in enumerate(prompts)]
    mark_done(cfg, "prompts", write_jsonl(shard_output(cfg, "prompts", 0), recs))


def stage_run(cfg, stage: str, engine, one_call_per_chunk: bool = False):
    """The stage's shard 0 as a worker runs it (its output rewritten); `one_call_per_chunk`: as
    before generate_chunks, each chunk one generate call."""
    from srlm_hpc.engines.base import generate_one_by_one
    from srlm_hpc.files import read_jsonl
    from srlm_hpc.stages import get_stage

    from srlm_hpc import timing

    engine.llm.reset_prefix_cache()
    if one_call_per_chunk:
        engine.generate_chunks = lambda jobs: generate_one_by_one(engine, jobs)
    try:
        with timing.recording() as spent:  # engine_for's wrapper counts the generated tokens
            info = get_stage(stage).run_shard(cfg, 0)
    finally:
        engine.__dict__.pop("generate_chunks", None)
    return info, read_jsonl(info.path), spent["generated_tokens"]


def stage_requests(cfg, stage: str, records: list[dict]):
    """Every chunk's (conversations, params) as the stage asks for them, in chunk order."""
    from srlm_hpc.engines import SamplingConfig
    from srlm_hpc.schema import ResponseSet
    from srlm_hpc.shards import shard_seed
    from srlm_hpc.stages.judge import judge_conversations

    if stage == "responses":
        r, size = cfg.responses, cfg.responses.batch_size
        convs = [[{"role": "user", "content": p["prompt"]}] for p in records]
        sampling = dict(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens)
    else:
        j, size = cfg.judge, max(1, cfg.judge.batch_size // max(1, cfg.responses.n))
        sets = [ResponseSet.from_dict(rec) for rec in records]
        convs = [judge_conversations(sets[i:i + size]) for i in range(0, len(sets), size)]
        sampling = dict(n=j.k, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens)
        return [(cs, SamplingConfig(**sampling, seed=shard_seed(cfg.run.seed, cfg.run.iter, stage, 0, c)))
                for c, cs in enumerate(convs)]
    return [(convs[i:i + size], SamplingConfig(**sampling, seed=shard_seed(cfg.run.seed, cfg.run.iter, stage, 0,
                                                                              i // size)))
            for i in range(0, len(convs), size)]


def bare_run(engine, jobs):
    """The same requests in one vllm.LLM.generate call (text prompts, vLLM tokenises)."""
    from vllm import SamplingParams

    from srlm_hpc.engines.vllm import _seed_for

    tok, llm = engine.tokenizer, engine.llm
    texts, sps = [], []
    for convs, p in jobs:
        texts += [tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) for conv in convs]
        sps += [SamplingParams(n=p.n, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens,
                               seed=_seed_for(p.seed, i, p.n)) for i in range(len(convs))]
    llm.reset_prefix_cache()
    return llm.generate(texts, sps, use_tqdm=False)


def stage_texts(stage: str, records: list[dict]) -> list[list[str]]:
    if stage == "responses":
        return [[r["text"] for r in rec["responses"]] for rec in records]
    return [r["judge_texts"] for rec in records for r in rec["responses"]]


def bare_tokens(outs, eos: int) -> int:
    """Generated tokens without the end token, as the engine counts them (Completion.n_tokens)."""
    return sum(len(c.token_ids) - (c.finish_reason == "stop" and bool(c.token_ids) and c.token_ids[-1] == eos)
               for o in outs for c in o.outputs)


def compare(cfg, stage: str, engine, reps: int, before: int, label: str):
    """Rows bare / stage (/ before) for `stage` of the scratch run; the stage's records."""
    from srlm_hpc.files import read_jsonl
    from srlm_hpc.shards import shard_output

    upstream = {"responses": "prompts", "judge": "responses"}[stage]
    shard_size = {"responses": cfg.responses.shard_size, "judge": cfg.judge.shard_size}[stage]
    jobs = stage_requests(cfg, stage, read_jsonl(shard_output(cfg, upstream, 0))[:shard_size])
    times, digests = {"bare": [], "stage": [], "before": []}, set()
    for rep in range(max(reps, before)):
        order = ("bare", "stage", "before") if rep % 2 == 0 else ("stage", "bare", "before")  # no path always first
        for path in order:
            if rep >= (before if path == "before" else reps):
                continue
            if path == "bare":
                t, bare = timed(lambda: bare_run(engine, jobs))
            else:
                t, (info, records, tokens) = timed(lambda p=path: stage_run(cfg, stage, engine, p == "before"))
            times[path].append(t)
            if path != "bare":
                digests.add(info.sha256)  # the two stage paths write the same bytes
            print(f"  {label} {path}: {t:.1f}s", flush=True)
    same = [[c.text.strip() for c in o.outputs] for o in bare] == stage_texts(stage, records)
    b = row(f"vllm bare LLM.generate, {label}, one call", times["bare"], bare_tokens(bare, engine.eos_token_id))
    chunk = (f"chunks of {cfg.responses.batch_size} prompts" if stage == "responses" else
             f"chunks of {max(1, cfg.judge.batch_size // cfg.responses.n)} prompts x {cfg.responses.n} responses")
    rows = [b, {**row(f"stage {stage}.run_shard ({chunk}, fed continuously, parts written)", times["stage"],
                      tokens, base=b), "same_texts_as_bare": same, "same_bytes_every_stage_run": len(digests) == 1}]
    if before:
        rows.append(row(f"stage before: one generate per chunk ({chunk}, drained)", times["before"], tokens, base=b))
    return rows, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16, help="the responses shard's prompts")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--judge-prompts", type=int, default=8, help="the judge shard's prompts (n responses each)")
    ap.add_argument("--judge-k", type=int, default=3)
    ap.add_argument("--judge-max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2, help="runs of the bare and the stage path (the fastest counts)")
    ap.add_argument("--before-reps", type=int, default=1, help="runs of the one-call-per-chunk path (0: none)")
    ap.add_argument("--hf", action="store_true", help="add the transformers engine's row (one run, ~70 s)")
    ap.add_argument("--skip-judge", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench"), help="where M0 is converted (once)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "generate-cpu.json"))
    args = ap.parse_args()
    if args.judge_prompts > args.prompts:
        raise SystemExit(f"--judge-prompts {args.judge_prompts}: at most --prompts ({args.prompts})")
    guard = LoadGuard.start()

    from srlm_hpc.models import convert_default_model
    from srlm_hpc.stages.common import current_model, engine_for

    model = convert_default_model(Path(args.work) / "models" / "M0")
    cfg = scratch_config(Path(args.work) / "generate-stage", model, args)
    write_prompts(cfg, seed_prompts(args.prompts))
    start_s, counted = timed(lambda: engine_for(cfg, current_model(cfg), cfg.responses.batch_size))
    engine = counted.engine  # the VLLMEngine; engine_for's wrapper only counts tokens
    engine.generate([[{"role": "user", "content": "Hi"}]], _warmup_params())  # first-call allocations

    rows, notes = [], []
    gen_rows, info = compare(cfg, "responses", engine, args.reps, args.before_reps,
                             f"{args.prompts} prompts x {args.n} x {args.max_tokens} tokens")
    rows += gen_rows
    mark_done(cfg, "responses", info)
    judge_rows = []
    if not args.skip_judge:
        judge_rows, _ = compare(cfg, "judge", engine, args.reps, args.before_reps,
                                f"judge {args.judge_prompts} prompts x {args.n} responses x {args.judge_k} x "
                                f"{args.judge_max_tokens} tokens")
        rows += judge_rows
    for r in rows:
        if r.get("same_texts_as_bare") is False:
            notes.append(f"{r['path']}: texts differ from bare vLLM's")
        if r.get("same_bytes_every_stage_run") is False:
            notes.append(f"{r['path']}: the shard's bytes differ between runs or between the two stage paths")
    from srlm_hpc.stages import common

    common._ENGINES.pop(next(iter(common._ENGINES))).close()

    if args.hf:
        from srlm_hpc.engines.hf import HFEngine
        from srlm_hpc.files import read_jsonl
        from srlm_hpc.shards import shard_output

        hf = HFEngine(str(model), device="cpu", batch_size=cfg.responses.batch_size)
        jobs = stage_requests(cfg, "responses", read_jsonl(shard_output(cfg, "prompts", 0)))
        t, outs = timed(lambda: [o for _, outs in hf.generate_chunks(jobs) for o in outs])
        rows.append(row(f"hf engine (transformers generate), chunks of {cfg.responses.batch_size}", [t],
                        sum(c.n_tokens for s in outs for c in s), base=gen_rows[0]))
        hf.close()

    print(f"\nvllm start {start_s:.1f}s; fastest of {args.reps} runs")
    print(f"{'path':<92} {'wall s':>7} {'tokens':>7} {'tok/s':>7} {'ratio':>7}")
    for r in rows:
        ratio = f"{r['time_ratio']:.3f}" if "time_ratio" in r else ""
        print(f"{r['path']:<92} {r['wall_s']:>7.1f} {r['tokens']:>7} {r['tokens_per_s']:>7.1f} {ratio:>7}")
    for n in notes:
        print("NOTE:", n)

    headline = {"stage_vs_bare_generate": gen_rows[1]["time_ratio"]}
    if judge_rows:
        headline["stage_vs_bare_judge"] = judge_rows[1]["time_ratio"]
    print("headline:", json.dumps(headline), flush=True)
    result = {**run_stamp(), "machine": machine(), "versions": versions(),
              "workload": {"prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens,
                           "temperature": cfg.responses.temperature, "top_p": cfg.responses.top_p,
                           "responses_batch_size": cfg.responses.batch_size, "judge_prompts": args.judge_prompts,
                           "judge_k": args.judge_k, "judge_max_tokens": args.judge_max_tokens,
                           "judge_batch_size": cfg.judge.batch_size, "reps": args.reps,
                           "model": "SmolLM2-135M-Instruct (embedded GGUF, converted)"},
              "vllm_start_s": round(start_s, 1), "rows": rows, "notes": notes}
    if not write_result(Path(args.out), result, guard, headline):
        raise SystemExit(3)


def _warmup_params():
    from srlm_hpc.engines import SamplingConfig

    return SamplingConfig(n=1, max_tokens=8)


if __name__ == "__main__":
    main()
