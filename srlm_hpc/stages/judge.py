"""Stage `judge`: M_k scores every response with the paper's additive 0-5 rubric.

Each response is judged k times (default 3) with the response sampling settings; the
score is the mean of the samples that parse (`judge_parse.parse_score`), None when none
does. The judge's raw texts and finish reasons are kept beside the scores (a sample cut
at judge.max_tokens usually lacks its score line: stats.json counts them).

    python -m srlm_hpc.submit stage=judge iter=1 preset=demo
"""

from __future__ import annotations

from ..config import Config
from ..engines import SamplingConfig
from ..files import FileInfo
from ..judge_parse import parse_score
from ..schema import ResponseSet, mean_score
from ..shards import run_chunked_generation, shard_output, shard_seed, upstream_range
from ..templates import judge_messages
from .common import current_model, engine_for

STAGE, UPSTREAM = "judge", "responses"


def plan(cfg: Config) -> tuple[int, dict]:
    """Split by the most records responses can hold (prompts.n_prompts), known before responses runs,
    so a whole iteration can be queued at once; trailing shards may get fewer records."""
    size = cfg.judge.shard_size
    return max(1, -(-cfg.prompts.n_prompts // size)), {"n_prompts": cfg.prompts.n_prompts, "shard_size": size,
                                                       "seed": cfg.run.seed}


def judge_sets(engine, sets: list[ResponseSet], params: SamplingConfig) -> list[ResponseSet]:
    """Fill judge_texts, judge_scores and score of every response in `sets`."""
    return fill_judgements(sets, engine.generate(judge_conversations(sets), params))


def judge_conversations(sets: list[ResponseSet]) -> list[list[dict]]:
    """The judge prompt of every response of `sets`, in order."""
    return [judge_messages(s.prompt, r.text) for s in sets for r in s.responses]


def fill_judgements(sets: list[ResponseSet], outs) -> list[ResponseSet]:
    """Put the judge's samples (`outs`, one list per response of `sets` in order) into the responses."""
    for resp, samples in zip([r for s in sets for r in s.responses], outs):
        resp.judge_texts = [o.text for o in samples]
        resp.judge_scores = [parse_score(o.text) for o in samples]
        resp.judge_finish_reasons = [o.finish_reason for o in samples]
        resp.score = mean_score(resp.judge_scores)
    return sets


def run_shard(cfg: Config, shard: int) -> FileInfo:
    j = cfg.judge
    size = j.shard_size
    sets = [ResponseSet.from_dict(rec, where=f"{UPSTREAM} record {shard * size + i}")
            for i, rec in enumerate(upstream_range(cfg, UPSTREAM, shard * size, (shard + 1) * size))]
    engine = engine_for(cfg, current_model(cfg, j.judge_model), batch_size=j.batch_size)
    # A chunk is a few prompts; each contributes n responses x k judge samples.
    per_chunk = max(1, j.batch_size // max(1, cfg.responses.n))

    def request(chunk: list[ResponseSet], c: int):
        params = SamplingConfig(n=j.k, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens,
                                seed=shard_seed(cfg.run.seed, cfg.run.iter, STAGE, shard, c))
        return judge_conversations(chunk), params

    def to_records(chunk: list[ResponseSet], c: int, outs) -> list[dict]:
        return [s.to_dict() for s in fill_judgements(chunk, outs)]

    # The chunks are fed to the engine together (shards.run_chunked_generation): the rubric's
    # ~540 tokens are one cached prefix for all of them, and each chunk is saved once done.
    return run_chunked_generation(shard_output(cfg, STAGE, shard), sets, per_chunk, engine, request, to_records,
                                  desc=f"judge shard {shard}")
