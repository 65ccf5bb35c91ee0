"""Stage `responses`: N samples per prompt from M_k (SPEC.md step 2: N=4, T=0.7, top-p 0.9).

Shard i answers prompts [i*S, (i+1)*S) of the prompts stage's output. A prompt whose text
exactly repeats an earlier prompt of this iteration (another prompts shard wrote it too)
is skipped here, so no prompt is answered twice.

    python -m srlm_hpc.submit stage=responses iter=1 preset=demo
"""

from __future__ import annotations


from ..config import Config
from ..engines import SamplingConfig
from ..files import FileInfo
from ..schema import PromptRecord, Response, ResponseSet
from ..shards import run_chunked_generation, shard_output, shard_seed, upstream_range
from .common import current_model, engine_for

STAGE, UPSTREAM = "responses", "prompts"


def plan(cfg: Config) -> tuple[int, dict]:
    """Split by the most records prompts can hold (prompts.n_prompts), known before prompts runs,
    so a whole iteration can be queued at once; trailing shards may get fewer records."""
    size = cfg.responses.shard_size
    return max(1, -(-cfg.prompts.n_prompts // size)), {"n_prompts": cfg.prompts.n_prompts, "shard_size": size,
                                                       "seed": cfg.run.seed}


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def shard_prompts(cfg: Config, shard: int) -> list[PromptRecord]:
    size = cfg.responses.shard_size
    start, stop = shard * size, (shard + 1) * size
    upto = upstream_range(cfg, UPSTREAM, 0, stop)
    seen = {_normal(r["prompt"]) for r in upto[:start]}
    out = []
    for i, rec in enumerate(upto[start:]):
        p = PromptRecord.from_dict(rec, where=f"{UPSTREAM} record {start + i}")
        if _normal(p.prompt) not in seen:
            seen.add(_normal(p.prompt))
            out.append(p)
    return out


def run_shard(cfg: Config, shard: int) -> FileInfo:
    """The shard's chunks of responses.batch_size prompts, each seeded by its index, fed to the
    engine together (shards.run_chunked_generation); each chunk is saved once it is done."""
    r = cfg.responses
    prompts = shard_prompts(cfg, shard)
    engine = engine_for(cfg, current_model(cfg), batch_size=r.batch_size)

    def request(chunk: list[PromptRecord], c: int):
        params = SamplingConfig(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                seed=shard_seed(cfg.run.seed, cfg.run.iter, STAGE, shard, c))
        return [[{"role": "user", "content": p.prompt}] for p in chunk], params

    def to_records(chunk: list[PromptRecord], c: int, outs) -> list[dict]:
        return [ResponseSet(p.prompt_id, p.prompt, [
            Response(f"{p.prompt_id}-r{j}", o.text, o.n_tokens, o.finish_reason) for j, o in enumerate(samples)
        ]).to_dict() for p, samples in zip(chunk, outs)]

    return run_chunked_generation(shard_output(cfg, STAGE, shard), prompts, r.batch_size, engine, request,
                                  to_records, desc=f"responses shard {shard}")
