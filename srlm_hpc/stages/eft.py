"""Stage `eft`: EFT data from human-ranked oasst1 replies (SPEC.md, "Seed data").

The SFT baseline trained on IFT only (eft.model) writes a justification and a score, with the
paper's judge prompt, for every ranked reply of the EFT-train prompts (data.oasst.split_oasst:
not in IFT, not held out). `finalize` then keeps a prompt's examples only when the order of
its scores agrees with the human ranking (every reply scored, no ties: metrics.ranking_matches),
drops the judgements cut at judge.max_tokens (as SFT targets they would teach stopping
mid-sentence, the EOS appended after the cut), thins out the most common score, and writes <work_dir>/iter<k>/eft/eft_train.jsonl in the
format the sft stage reads (sft.eft_path=...).

    python -m srlm_hpc.data.oasst source=/shared/oasst1 out=data/oasst       # IFT file, counts
    python -m srlm_hpc.submit stage=sft work_dir=runs/ift-only sft.ift_path=data/oasst/ift.jsonl sft.use_eft=false
    python -m srlm_hpc.submit stage=eft work_dir=runs/ift-only eval.oasst_path=/shared/oasst1
    python -m srlm_hpc.stages.eft work_dir=runs/ift-only eval.oasst_path=/shared/oasst1   # finalize
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from ..config import Config, EFTConfig
from ..data.oasst import agreement_filter, first_turns, heldout_turns, load_messages, rebalance, sft_rows, split_oasst
from ..engines import SamplingConfig
from ..files import FileInfo, atomic_write_json, iter_jsonl, write_jsonl
from ..models import model_path
from ..schema import Response, ResponseSet
from ..shards import run_chunked, shard_output, shard_seed, upstream_outputs
from ..templates import judge_prompt
from .common import engine_for
from .eval import eval_config
from .judge import judge_sets

STAGE = "eft"


def eft_config(cfg: Config) -> EFTConfig:
    return cfg.eft


def candidates(cfg: Config) -> list[dict]:
    """EFT-train turns of eval.oasst_path (split as the eval stage splits it); without a source,
    the shipped seed's ranked trees, a smoke-scale stand-in."""
    e = eval_config(cfg)
    if not e.oasst_path:
        return heldout_turns(None)[:eft_config(cfg).max_prompts]
    turns = first_turns(load_messages(e.oasst_path))[0]
    return split_oasst(turns, e.split_seed, e.ift_size, e.heldout_frac)["eft_train"][:eft_config(cfg).max_prompts]


def plan(cfg: Config) -> tuple[int, dict]:
    f, e = eft_config(cfg), eval_config(cfg)
    return max(1, -(-f.max_prompts // f.shard_size)), {
        "oasst_path": e.oasst_path, "split_seed": e.split_seed, "ift_size": e.ift_size,
        "heldout_frac": e.heldout_frac, "max_prompts": f.max_prompts, "shard_size": f.shard_size, "seed": cfg.run.seed}


def run_shard(cfg: Config, shard: int) -> FileInfo:
    f, j = eft_config(cfg), cfg.judge
    turns = candidates(cfg)[shard * f.shard_size:(shard + 1) * f.shard_size]
    out = shard_output(cfg, STAGE, shard)
    if not turns:
        return write_jsonl(out, [])

    def judge_chunk(chunk: list[dict], c: int) -> list[dict]:
        eng = engine_for(cfg, Path(f.model) if f.model else model_path(cfg, 1), batch_size=f.batch_size)
        sets = [ResponseSet(t["prompt_id"], t["prompt"], [Response(x["id"], x["text"], eng.count_tokens(x["text"]))
                                                          for x in t["replies"]]) for t in chunk]
        # One sample per reply: it becomes a training target, justification and score together.
        params = SamplingConfig(n=1, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens,
                                seed=shard_seed(cfg.run.seed, cfg.run.iter, STAGE, shard, c))
        return [{"tree_id": t["tree_id"], "prompt_id": t["prompt_id"], "prompt": t["prompt"],
                 "replies": [{"id": x["id"], "text": x["text"], "rank": x["rank"], "judgement": r.judge_texts[0],
                              "finish_reason": (r.judge_finish_reasons or ["stop"])[0], "score": r.score} for x, r in zip(t["replies"], s.responses)]}
                for t, s in zip(chunk, judge_sets(eng, sets, params))]

    return run_chunked(out, turns, max(1, f.batch_size // 3), judge_chunk, desc=f"eft shard {shard}")


def finalize(cfg: Config) -> dict:
    """Agreement filter and rebalancing over every verified shard -> eft_train.jsonl + stats.json."""
    judged = [rec for info in upstream_outputs(cfg, STAGE) for rec in iter_jsonl(info.path)]
    kept, counts = agreement_filter(judged)
    # A cut judgement still counts toward its prompt's agreement (its score was parsed), but it
    # is not a training target. Shards written before finish reasons were kept read as "stop".
    replies = [(t, x) for t in kept for x in t["replies"]]
    cut = sum(x.get("finish_reason", "stop") == "length" for _, x in replies)
    examples = [{"id": x["id"], "prompt": judge_prompt(t["prompt"], x["text"]), "response": x["judgement"],
                 "score": x["score"]} for t, x in replies if x.get("finish_reason", "stop") != "length"]
    balanced = rebalance(examples, eval_config(cfg).split_seed)
    path = cfg.stage_dir(STAGE) / "eft_train.jsonl"
    write_jsonl(path, sft_rows(balanced))
    stats = {**counts, "examples_cut": cut, "examples_agreeing": len(examples), "examples": len(balanced),
             "scores_before": dict(sorted(Counter(str(e["score"]) for e in examples).items())),
             "scores_after": dict(sorted(Counter(str(e["score"]) for e in balanced).items())),
             "sft_eft_path": str(path)}
    atomic_write_json(cfg.stage_dir(STAGE) / "stats.json", stats)
    return stats


def main(argv: list[str] | None = None) -> int:
    from ..config import config_from_cli
    from ..data.oasst import print_counts

    cfg = config_from_cli(argv)
    if cfg is None:
        return 2
    stats = finalize(cfg)
    print_counts("EFT (prompts, then examples)", {k: v for k, v in stats.items() if isinstance(v, int)})
    print(f"sft.eft_path={stats['sft_eft_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
