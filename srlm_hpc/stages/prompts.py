"""Stage `prompts`: few-shot self-instruct writes new instructions (SPEC.md, step 1).

Each candidate is written from 8 demonstrations: 6 IFT seed prompts and 2 prompts this
shard generated earlier (IFT prompts stand in until there are 2), at T=0.6, top-p 0.9.
A candidate is kept when it passes self-instruct's filters: it starts with an ASCII character
that is not punctuation, its word count is within bounds, it has no blacklisted keyword, and
its ROUGE-L is at most the threshold against the seed prompts, every prompt of the earlier
iterations and every prompt kept so far in this shard. Across the shards of one iteration
only exact duplicates are removed (downstream): a shard never waits for another.

    python -m srlm_hpc.submit stage=prompts iter=1 preset=demo
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import asdict, replace

from ..config import Config
from ..data.oasst import load_seed
from ..engines import SamplingConfig
from ..files import FileInfo
from ..schema import PromptRecord
from ..files import iter_jsonl
from ..shards import run_chunked, shard_output, shard_seed, upstream_outputs
from ..templates import self_instruct_messages
from .common import current_model, engine_for

STAGE = "prompts"


def plan(cfg: Config) -> tuple[int, dict]:
    p = cfg.prompts
    return -(-p.n_prompts // p.shard_size), {"n_prompts": p.n_prompts, "shard_size": p.shard_size,
                                             "seed": cfg.run.seed}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F-measure of two word lists (longest common subsequence), as self-instruct uses."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


_PREFIX_RE = re.compile(r"^(\d+[.)]|\*\*|[-*]|task:|new task:)\s*", re.IGNORECASE)


def clean_candidate(text: str) -> str:
    """The first task in what the model wrote, without tags, numbering, bold or quotes
    (prefixes stacked as in "1. **Task:** X" all go)."""
    text = re.sub(r"</?task>", "\n", text)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    first, previous = lines[0], None
    while first != previous:
        previous, first = first, _PREFIX_RE.sub("", first)
    return first.strip().strip('"\u201c\u201d').strip()


def may_be_near(a: list[str], b: list[str], threshold: float) -> bool:
    """Whether rouge_l(a, b) can exceed `threshold`: LCS <= min(len), so F1 <= 2 min / (len a + len b).
    Skipping the O(len a * len b) table when it cannot matters once thousands of earlier
    iterations' prompts are in the pool (a 150-word candidate against a 20-word prompt: 0.24)."""
    return bool(a) and bool(b) and 2 * min(len(a), len(b)) / (len(a) + len(b)) > threshold


def rejection_reason(candidate: str, kept_words: list[list[str]], cfg: Config) -> str | None:
    """Self-instruct's filters, in its order: why `candidate` is rejected, or None to keep it."""
    p = cfg.prompts
    # Self-instruct checks this after the others; first here, so text with no ASCII at all is
    # named for what it is rather than counted as too short (it has no [a-z0-9] words).
    if candidate and not candidate[0].isascii():  # self-instruct: "starting with non-english character"
        return "non_ascii"
    w = words(candidate)
    if not (p.min_words <= len(w) <= p.max_words):
        return "length"
    lowered = f" {' '.join(w)} "
    if any(f" {kw.lower()} " in lowered for kw in p.blacklist):
        return "blacklist"
    if candidate and candidate[0] in string.punctuation:  # self-instruct: "(" / "#" / ":" openings are fragments
        return "punctuation"
    if any(may_be_near(w, k, p.rouge_threshold) and rouge_l(w, k) > p.rouge_threshold for k in kept_words):
        return "near_duplicate"
    return None


def earlier_prompts(cfg: Config) -> list[str]:
    """Every prompt the prompts stage kept in iterations 1..k-1, from their verified outputs:
    a new iteration must not ask again what an earlier one asked (ROUGE-L, as within a shard)."""
    out = []
    for k in range(1, cfg.run.iter):
        earlier = replace(cfg, run=replace(cfg.run, iter=k))
        out += [rec["prompt"] for info in upstream_outputs(earlier, STAGE) for rec in iter_jsonl(info.path)]
    return out


def run_shard(cfg: Config, shard: int) -> FileInfo:
    p = cfg.prompts
    target = min(p.shard_size, p.n_prompts - shard * p.shard_size)
    seeds = [ex["prompt"] for ex in load_seed("ift", cfg.sft.ift_path or None)]
    seed_words = [words(s) for s in seeds] + [words(e) for e in earlier_prompts(cfg)]
    kept: list[str] = []
    batch = max(1, min(16, target))
    engine = engine_for(cfg, current_model(cfg, p.generator_model), batch_size=batch)
    n_rounds = max(1, round(p.oversample * target / batch))
    params = dict(n=1, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens)

    def one_round(_: list, r: int) -> list[dict]:
        if len(kept) >= target:
            return []
        rng = random.Random(shard_seed(cfg.run.seed, cfg.run.iter, STAGE, shard, r))
        convs = []
        for _i in range(batch):
            demos = rng.sample(seeds, p.n_shot_ift + p.n_shot_generated)
            generated = rng.sample(kept, min(p.n_shot_generated, len(kept)))
            demos = demos[:p.n_shot_ift + p.n_shot_generated - len(generated)] + generated
            rng.shuffle(demos)
            convs.append(self_instruct_messages(demos))
        outs = engine.generate(convs, SamplingConfig(seed=shard_seed(cfg.run.seed, cfg.run.iter, STAGE, shard, r),
                                                     **params))
        records = []
        for out in outs:
            cand = clean_candidate(out[0].text)
            if len(kept) >= target or rejection_reason(cand, seed_words + [words(k) for k in kept], cfg):
                continue
            kept.append(cand)
            pid = f"i{cfg.run.iter}-s{shard:05d}-{len(kept) - 1:05d}"
            records.append(asdict(PromptRecord(prompt_id=pid, prompt=cand)))
        return records

    # Rounds are chunks: a resumed shard replays the kept prompts of finished rounds first,
    # so later rounds see the same `kept` list as an uninterrupted run.
    return run_chunked(shard_output(cfg, STAGE, shard), list(range(n_rounds)), 1, one_round,
                       desc=f"prompts shard {shard}", on_resume=lambda recs: kept.extend(r["prompt"] for r in recs))
