"""Stage `eval`: how good are the models of the loop, as judges and as answerers.

Per shard, over held-out data (SPEC.md, "Evaluation"; without eval.oasst_path the shipped
srlm_hpc/seed/heldout.jsonl, prompts with 3+ human-ranked replies never used in training):
(a) reward modeling: each model judges every held-out ranked reply with the paper's rubric,
    through the judge stage's prompt and parser and its settings (judge.k, temperature, ...).
    Iteration k measures the IFT-only baseline (eval.baseline_model, when set), M_k and
    M_{k+1}; results are cached by model fingerprint (<work_dir>/eval_cache/), so each model
    is judged once whichever iteration asks, and a rerun recomputes nothing;
(b) head-to-head: M_{k+1} against M_k and against the SFT baseline (and in iteration 1, M1
    against the IFT-only baseline), on the held-out prompts with the responses stage's
    temperature and top-p, up to eval.max_tokens; a fixed judge decides each pair (eval.judge_model, default M1 frozen: the same
    model in every iteration, never the model under test) by eval.h2h_method: "pairwise" (the
    paper's GPT-4 style A/B comparison, both orders) or "rubric" (each answer scored alone with
    the 0-5 rubric, judge.k samples averaged; the higher mean wins);
(c) lengths of those answers, in tokens and in characters (AlpacaEval's avg_length unit).
A shard works in phases, each saved before the next, so a killed shard resumes where it
stopped; the phases are ordered so each model loads once. Inside a phase the chunks' generate
calls are fed to the engine together and each chunk is saved once done
(shards.run_chunked_generation): the bytes of one call per chunk, and a kill loses only the
chunks not yet written.
`summarise` then writes <work_dir>/iter<k>/eval/metrics.json from the verified shards, and
the run's table across models, <work_dir>/summary.json.

    python -m srlm_hpc.submit stage=eval iter=1 preset=demo
    python -m srlm_hpc.stages.eval iter=1 preset=demo     # (re)write metrics.json only
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
from functools import partial
from pathlib import Path

from ..config import Config, EvalConfig
from ..data.oasst import heldout_turns
from ..engines import SamplingConfig
from ..files import FileInfo, atomic_write_json, iter_jsonl, read_json, read_jsonl, write_jsonl
from ..metrics import combine_orders, head_to_head, length_stats, reward_modeling
from ..models import model_path
from ..schema import Response, ResponseSet
from ..shards import (UpstreamNotReadyError, parts_belong_to, run_chunked_generation, shard_output, shard_seed,
                      upstream_outputs)
from .common import engine_for
from .judge import fill_judgements, judge_conversations

STAGE = "eval"


def eval_config(cfg: Config) -> EvalConfig:
    return cfg.eval


# The head-to-head prompt (ours: the paper's GPT-4 comparison template is not given). It asks
# for the same decision, A, B or a tie, ending in a line `parse_verdict` reads ("Winner: A").
COMPARE_TEMPLATE = (
    "Compare two responses to the user\u2019s question below. Decide which one is the more helpful, "
    "correct and clearly written answer from an AI Assistant to this user. Do not let the order "
    "of the responses or their length decide.\n"
    "User: {instruction}\n"
    "<response_a>{a}</response_a>\n"
    "<response_b>{b}</response_b>\n"
    "Briefly justify your choice, up to 50 words, then conclude with one line: "
    "\u201cWinner: A\u201d, \u201cWinner: B\u201d or \u201cWinner: tie\u201d."
)
_DECOR = r"[\s*_\"'`\u201c\u201d\u2018\u2019\[]*"
WINNER_RE = re.compile(r"winner" + _DECOR + r"[:=\uff1a]" + _DECOR + r"(A|B|tie)\b", re.IGNORECASE)


def compare_messages(instruction: str, a: str, b: str) -> list[dict]:
    text = COMPARE_TEMPLATE.replace("{instruction}", instruction).replace("{a}", a).replace("{b}", b)
    return [{"role": "user", "content": text}]


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "tie" from the last `Winner:` line; None when there is none."""
    found = list(WINNER_RE.finditer(text or ""))
    if not found:
        return None
    v = found[-1].group(1)
    return "tie" if v.lower() == "tie" else v.upper()


def rubric_outcome(new: float | None, old: float | None) -> str:
    """The new model's outcome from the two answers' mean rubric scores: the higher mean
    wins; equal, or either unparsed, is a tie (its rate is the record's parse rate)."""
    if new is None or old is None or new == old:
        return "tie"
    return "win" if new > old else "loss"


# ---- one chunk of head-to-head comparisons, either method ------------------------------------------
# `pairs` are (prompt, new model's answer, old model's answer). A method is its judge
# conversations for one generate call and the records made from that call's completions, one
# per pair, with what the judge wrote, what was read from it and the outcome for the new model:
# two pieces, so the eval stage feeds many chunks' calls to the engine at once
# (shards.run_chunked_generation) and dpo_select makes one call per chunk (compare_*).
def pairwise_conversations(pairs: list[tuple[str, str, str]]) -> list[list[dict]]:
    """Both orders of every pair: the new answer as A, then as B."""
    return [m for p, new, old in pairs for m in (compare_messages(p, new, old), compare_messages(p, old, new))]


def pairwise_records(pairs: list[tuple[str, str, str]], outs) -> list[dict]:
    """The two orders' verdicts of every pair; orders that disagree are a tie."""
    recs = []
    for n in range(len(pairs)):
        texts = [outs[2 * n][0].text, outs[2 * n + 1][0].text]
        verdicts = [parse_verdict(t) for t in texts]
        recs.append({"method": "pairwise", "judge_texts": texts, "verdicts": verdicts,
                     "outcome": combine_orders(*verdicts)})
    return recs


def _rubric_sets(pairs: list[tuple[str, str, str]]) -> list[ResponseSet]:
    return [ResponseSet(str(n), p, [Response("new", new, 0), Response("old", old, 0)])
            for n, (p, new, old) in enumerate(pairs)]


def rubric_conversations(pairs: list[tuple[str, str, str]]) -> list[list[dict]]:
    """Each answer alone in the judge stage's prompt (judge_conversations): new, then old."""
    return judge_conversations(_rubric_sets(pairs))


def rubric_records(pairs: list[tuple[str, str, str]], outs) -> list[dict]:
    """Each answer's samples read by the judge stage's parser and averaged (fill_judgements);
    judge_texts, judge_scores and scores are [new, old]."""
    recs = []
    for s in fill_judgements(_rubric_sets(pairs), outs):
        new, old = s.responses
        recs.append({"method": "rubric", "judge_texts": [new.judge_texts, old.judge_texts],
                     "judge_scores": [new.judge_scores, old.judge_scores], "scores": [new.score, old.score],
                     "outcome": rubric_outcome(new.score, old.score)})
    return recs


H2H_METHODS = {"pairwise": (pairwise_conversations, pairwise_records),
               "rubric": (rubric_conversations, rubric_records)}


def compare_pairwise(engine, pairs: list[tuple[str, str, str]], params: SamplingConfig) -> list[dict]:
    """One chunk by the A/B comparison, both orders, in one generate call."""
    return pairwise_records(pairs, engine.generate(pairwise_conversations(pairs), params))


def compare_rubric(engine, pairs: list[tuple[str, str, str]], params: SamplingConfig) -> list[dict]:
    """One chunk by the rubric, params.n samples per answer, in one generate call."""
    return rubric_records(pairs, engine.generate(rubric_conversations(pairs), params))


def parsed_share(rec: dict) -> tuple[int, int]:
    """(parsed, total) judge outputs of one h2h record: verdicts, or rubric score samples."""
    if rec.get("method", "pairwise") == "pairwise":
        read = rec["verdicts"]
    else:
        read = [s for x in rec["judge_scores"] for s in x]
    return sum(v is not None for v in read), len(read)


# ---- what a shard works on ----------------------------------------------------------------------
HELDOUT_SEED_FILE = "heldout.jsonl"  # srlm_hpc/seed/: written for the project, never trained on


def seed_heldout_turns() -> list[dict]:
    """The shipped held-out set: prompts with 3+ human-ranked replies that no IFT or EFT
    example uses (srlm_hpc/seed/README.md)."""
    from importlib import resources

    from ..data.oasst import first_turns, read_messages

    with resources.as_file(resources.files("srlm_hpc.seed").joinpath(HELDOUT_SEED_FILE)) as p:
        return [t for t in first_turns(read_messages(p))[0] if len(t["replies"]) >= 2]


def heldout(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(ranked turns for reward modeling, {"prompt_id", "prompt"} for head-to-head), capped.
    Without eval.oasst_path both come from the shipped held-out set."""
    e = eval_config(cfg)
    turns = heldout_turns(e.oasst_path, e.split_seed, e.ift_size, e.heldout_frac) if e.oasst_path \
        else seed_heldout_turns()
    prompts = [{"prompt_id": t["prompt_id"], "prompt": t["prompt"]} for t in turns]
    return turns[:e.max_rm_prompts], prompts[:e.max_h2h_prompts]


def plan(cfg: Config) -> tuple[int, dict]:
    """From the config alone: the caps bound both lists; trailing shards may get fewer (or none)."""
    e = eval_config(cfg)
    n = max(e.max_rm_prompts, e.max_h2h_prompts)
    return max(1, -(-n // e.shard_size)), {
        "oasst_path": e.oasst_path, "split_seed": e.split_seed, "ift_size": e.ift_size,
        "heldout_frac": e.heldout_frac, "max_rm_prompts": e.max_rm_prompts,
        "max_h2h_prompts": e.max_h2h_prompts, "shard_size": e.shard_size, "seed": cfg.run.seed,
        # Not a sharding key, but shards judged by two methods must not be summed together; left
        # out for the default, so plans written before the key existed still match on resume.
        **({"h2h_method": e.h2h_method} if e.h2h_method != "pairwise" else {})}


BASELINE = "SFT baseline"  # the IFT-only model (eval.baseline_model), the paper's "SFT baseline"


def models(cfg: Config) -> dict[str, tuple[str, Path]]:
    """role -> (name, path): "new" = M_{k+1}, "previous" = M_k, "baseline" = eval.baseline_model
    (else M1) unless it is M_k, and "judge" of the head-to-head: eval.judge_model, else M1
    frozen, the same model in every iteration and never the new model under test."""
    k, e = cfg.run.iter, eval_config(cfg)
    out = {"new": (f"M{k + 1}", model_path(cfg, k + 1)), "previous": (f"M{k}", model_path(cfg, k))}
    base = (BASELINE, Path(e.baseline_model)) if e.baseline_model else ("M1", model_path(cfg, 1))
    if base[1].resolve() != out["previous"][1].resolve():
        out["baseline"] = base
    out["judge"] = (Path(e.judge_model).name, Path(e.judge_model)) if e.judge_model else ("M1", model_path(cfg, 1))
    return out


def judged_roles(cfg: Config, roles: dict) -> list[str]:
    """Whose judging iteration k measures: the IFT-only baseline (when the run has one, and it
    is not M_k itself), M_k and M_{k+1}. Each model's numbers are cached by its fingerprint, so
    across iterations every model is measured once (M2 by iteration 1, reused by iteration 2)."""
    return (["baseline"] if eval_config(cfg).baseline_model and "baseline" in roles else []) + ["previous", "new"]


def comparisons(cfg: Config, roles: dict) -> list[tuple[str, str, str]]:
    """(key, new role, old role): M_{k+1} vs M_k, vs the baseline, and in iteration 1 with an
    IFT-only baseline, M1 vs that baseline (the paper's first head-to-head)."""
    out = [("previous", "new", "previous")]
    if "baseline" in roles:
        out.append(("baseline", "new", "baseline"))
    if eval_config(cfg).baseline_model and cfg.run.iter == 1 and "baseline" in roles:
        out.append(("previous_vs_baseline", "previous", "baseline"))
    return out


def cache_dir(cfg: Config, kind: str, model: Path) -> Path:
    """<work_dir>/eval_cache/<kind>-<settings>/<model fingerprint>/: one model's reward-modeling
    judgements ("rm") or held-out answers ("answers"), whichever iteration asked first. The
    settings digest covers everything that shapes them, so a changed setting is a new folder."""
    import hashlib
    import json

    from ..engines import resolve_engine_name
    from ..models import model_fingerprint

    e, j, r = eval_config(cfg), cfg.judge, cfg.responses
    keys = {"source": [e.oasst_path, e.split_seed, e.ift_size, e.heldout_frac], "shard_size": e.shard_size,
            "seed": cfg.run.seed, "engine": resolve_engine_name(cfg.run.engine), "batch_size": e.batch_size}
    if kind == "rm":
        keys.update(cap=e.max_rm_prompts, k=j.k, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens)
    else:
        keys.update(cap=e.max_h2h_prompts, temperature=r.temperature, top_p=r.top_p, max_tokens=e.max_tokens)
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]
    return cfg.work_dir / "eval_cache" / f"{kind}-{digest}" / model_fingerprint(model)[:24]


def _phase(path: Path, items: list, chunk_size: int, engine, request, to_records, desc: str,
           cached: bool = False) -> list[dict]:
    """A phase's records: from its saved file, else generated in chunks fed to `engine()`
    together (shards.run_chunked_generation: each chunk saved once done, a rerun makes only
    the missing ones). `engine` is called only when something is to be generated.

    A `cached` phase (eval_cache/) is shared by the iterations: its folder (settings digest,
    model fingerprint) is the whole key of its chunks, so iteration k+1 resumes the chunks a
    killed iteration k left there instead of removing them as another shard's (whose identity,
    runner.run_shard's, names iteration k's models)."""
    if not items:  # a trailing shard past the end of the data: nothing to load a model for
        write_jsonl(path, [])
    elif not path.exists():
        with parts_belong_to("", with_reads=False) if cached else contextlib.nullcontext():
            run_chunked_generation(path, items, chunk_size, engine(), request, to_records, desc=desc)
    return read_jsonl(path)


def run_shard(cfg: Config, shard: int) -> FileInfo:
    e, j, r = eval_config(cfg), cfg.judge, cfg.responses
    turns, prompts = heldout(cfg)
    lo, hi = shard * e.shard_size, (shard + 1) * e.shard_size
    turns, prompts = turns[lo:hi], prompts[lo:hi]
    roles = models(cfg)
    work = cfg.stage_dir(STAGE) / "work"
    name = f"shard-{shard:05d}"
    fingerprints: dict[str, str] = {}

    def fingerprint(role: str) -> str:
        from ..models import model_fingerprint

        path = roles[role][1]
        fingerprints.setdefault(str(path), model_fingerprint(path))
        return fingerprints[str(path)]

    def engine(role: str):
        return engine_for(cfg, roles[role][1], batch_size=e.batch_size)

    def seed(kind: str, c: int) -> int:
        # Iteration 0 for what is cached per model: the same draws whichever iteration asks.
        return shard_seed(cfg.run.seed, 0 if kind in ("rm", "answer") else cfg.run.iter, f"{STAGE}-{kind}", shard, c)

    # Each phase is (request, to_records) of one chunk for run_chunked_generation: request(chunk,
    # c) -> (conversations, params) of its generate call, to_records(chunk, c, completions).
    def judge_rm(role: str):
        built: dict[int, list[ResponseSet]] = {}  # chunk -> its sets, made (and tokenized) once

        def request(chunk: list[dict], c: int):
            count = engine(role).count_tokens
            built[c] = [ResponseSet(t["prompt_id"], t["prompt"], [Response(x["id"], x["text"], count(x["text"]))
                                                                  for x in t["replies"]]) for t in chunk]
            return judge_conversations(built[c]), SamplingConfig(
                n=j.k, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens, seed=seed("rm", c))

        def to_records(chunk: list[dict], c: int, outs) -> list[dict]:
            return [{"kind": "rm", "ranks": [x["rank"] for x in t["replies"]], **s.to_dict()}
                    for t, s in zip(chunk, fill_judgements(built.pop(c), outs))]
        return request, to_records

    def answer():
        def request(chunk: list[dict], c: int):
            # The same seed for every model: the answers differ by the model, not the draw.
            return [[{"role": "user", "content": p["prompt"]}] for p in chunk], SamplingConfig(
                n=1, temperature=r.temperature, top_p=r.top_p, max_tokens=e.max_tokens, seed=seed("answer", c))

        def to_records(chunk: list[dict], c: int, outs) -> list[dict]:
            return [{"kind": "answer", "prompt_id": p["prompt_id"], "prompt": p["prompt"], "text": o[0].text,
                     "n_tokens": o[0].n_tokens, "n_chars": len(o[0].text), "finish_reason": o[0].finish_reason}
                    for p, o in zip(chunk, outs)]
        return request, to_records

    def compare(key: str, new_answers: list[dict], old_answers: list[dict], new_role: str, old_role: str):
        conversations, records = H2H_METHODS[e.h2h_method]

        def chunk_pairs(chunk: list[int]) -> list[tuple[str, str, str]]:
            return [(new_answers[i]["prompt"], new_answers[i]["text"], old_answers[i]["text"]) for i in chunk]

        def request(chunk: list[int], c: int):
            if e.h2h_method == "rubric":  # the judge stage's sampling: k samples, their mean
                params = SamplingConfig(n=j.k, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens,
                                        seed=seed(f"rubric-{key}", c))
            else:
                params = SamplingConfig(n=1, temperature=e.compare_temperature, top_p=1.0,
                                        max_tokens=e.compare_max_tokens, seed=seed(f"compare-{key}", c))
            return conversations(chunk_pairs(chunk)), params

        def to_records(chunk: list[int], c: int, outs) -> list[dict]:
            return [{"kind": "h2h", "opponent": key, "new_model": roles[new_role][0],
                     "old_model": roles[old_role][0], "judge_model": roles["judge"][0],
                     "judge_fingerprint": fingerprint("judge"),
                     "prompt_id": new_answers[i]["prompt_id"], **rec}
                    for i, rec in zip(chunk, records(chunk_pairs(chunk), outs))]
        return request, to_records

    judged = judged_roles(cfg, roles)
    pairs = comparisons(cfg, roles)
    answering = sorted({x for _, n, o in pairs for x in (n, o)}, key=list(roles).index)
    # Each model loads once: its judging and its answers together, the h2h judge's model last.
    judge_path = roles["judge"][1].resolve()
    order = sorted(dict.fromkeys(judged + answering), key=lambda role: roles[role][1].resolve() == judge_path)
    per_rm = max(1, e.batch_size // max(1, j.k))
    rm, answers = [], {}
    for role in order:
        model, fp = roles[role][0], fingerprint(role)
        if role in judged:
            recs = _phase(cache_dir(cfg, "rm", roles[role][1]) / f"{name}.jsonl", turns, per_rm,
                          partial(engine, role), *judge_rm(role), f"eval rm {model} shard {shard}", cached=True)
            rm += [{**rec, "model": model, "fingerprint": fp} for rec in recs]
        if role in answering:
            recs = _phase(cache_dir(cfg, "answers", roles[role][1]) / f"{name}.jsonl", prompts, e.batch_size,
                          partial(engine, role), *answer(), f"eval {model} answers", cached=True)
            answers[role] = [{**rec, "role": role, "model": model, "fingerprint": fp} for rec in recs]
    h2h = []
    for key, new_role, old_role in pairs:
        h2h += _phase(work / f"{name}.h2h-{e.h2h_method}-{key}.jsonl", list(range(len(prompts))),
                      max(1, e.batch_size // 2), partial(engine, "judge"),
                      *compare(key, answers[new_role], answers[old_role], new_role, old_role), f"eval h2h {key}")
    info = write_jsonl(shard_output(cfg, STAGE, shard), rm + [a for role in answering for a in answers[role]] + h2h)
    for p in work.glob(f"{name}.*"):
        p.unlink()
    return info


# ---- metrics.json -------------------------------------------------------------------------------
BINS = [f"{i / 2:.1f}-{(i + 1) / 2:.1f}" for i in range(10)]  # 0-5 in steps of 0.5, as pairs' stats.json


def _hist(scores: list[float]) -> list[int]:
    h = [0] * len(BINS)
    for s in scores:
        h[min(max(int(s * 2), 0), len(BINS) - 1)] += 1
    return h


def reward_modeling_of(rm: list[dict]) -> dict:
    """The reward-modeling numbers of one judge from its rm records, with score histograms."""
    prompts = [(rec["ranks"], [x["score"] for x in rec["responses"]]) for rec in rm]
    samples = [s for rec in rm for x in rec["responses"] for s in x["judge_scores"]]
    by_rank: dict[str, list[float]] = {"0": [], "1": [], "2+": []}
    for rec in rm:
        for rank, x in zip(rec["ranks"], rec["responses"]):
            if x["score"] is not None:
                by_rank[str(rank) if rank < 2 else "2+"].append(x["score"])
    scores = [s for v in by_rank.values() for s in v]
    return {**reward_modeling(prompts, samples), "score_bins": BINS, "score_hist": _hist(scores),
            "score_hist_by_rank": {k: _hist(v) for k, v in by_rank.items()}}


def aggregate(records: list[dict]) -> dict:
    """The eval numbers of one iteration from its shard records (pure; summarise adds context).
    `reward_modeling` is the new model's (records without a model name: all of them);
    `reward_modeling_by_model` has every judged model's."""
    rm_by_model: dict[str, list[dict]] = {}
    for rec in records:
        if rec["kind"] == "rm":
            rm_by_model.setdefault(rec.get("model", ""), []).append(rec)
    by_model = {m: reward_modeling_of(recs) for m, recs in rm_by_model.items()}
    new_model = next((rec["new_model"] for rec in records if rec["kind"] == "h2h" and rec["opponent"] == "previous"),
                     next((rec["model"] for rec in records if rec["kind"] == "answer" and rec.get("role") == "new"), ""))
    answers: dict[str, dict] = {}
    for rec in records:
        if rec["kind"] == "answer":
            a = answers.setdefault(rec["role"], {"model": rec["model"], "lengths": [], "chars": [], "hit_max_tokens": 0})
            a["lengths"].append(rec["n_tokens"])
            a["chars"].append(rec.get("n_chars", 0))
            a["hit_max_tokens"] += rec["finish_reason"] == "length"
    h2h: dict[str, dict] = {}
    for key in sorted({rec["opponent"] for rec in records if rec["kind"] == "h2h"}):
        recs = [rec for rec in records if rec["kind"] == "h2h" and rec["opponent"] == key]
        shares = [parsed_share(rec) for rec in recs]
        parsed, total = sum(n for n, _ in shares), sum(n for _, n in shares)
        h2h[key] = {"new_model": recs[0]["new_model"], "old_model": recs[0]["old_model"],
                    "judge_model": recs[0]["judge_model"], "judge_fingerprint": recs[0].get("judge_fingerprint"),
                    "method": recs[0].get("method", "pairwise"),
                    **head_to_head(rec["outcome"] for rec in recs),
                    # pairwise: verdicts read (2 per prompt); rubric: score samples read (2k per prompt)
                    "verdict_parse_rate": parsed / total if total else None}
    unnamed = by_model.pop("", None)  # records written before rm records named their model
    return {
        "reward_modeling": by_model.get(new_model) or unnamed or {},
        "reward_modeling_by_model": by_model,
        "head_to_head": h2h,
        # tokens: "mean", "median", "p90"; characters (AlpacaEval's avg_length unit): "chars_*"
        "length": {"answers": {role: {**a, **length_stats(a["lengths"]),
                                      **{f"chars_{k}": v for k, v in length_stats(a["chars"]).items()}}
                               for role, a in answers.items()}},
    }


def run_relative(cfg: Config, path) -> str:
    """A model's path as metrics.json records it: relative to the work dir when inside it, so the
    file's bytes depend on the run, not on where its folder lives (a moved or copied run, or the
    same range run here and on Slurm, writes the same metrics.json)."""
    path = Path(path)
    return str(path.relative_to(cfg.work_dir)) if path.is_relative_to(cfg.work_dir) else str(path)


def summarise(cfg: Config) -> dict:
    """metrics.json of iteration k: aggregate() of the verified shards, the responses stage's
    lengths (M_k's samples) and the pairs' chosen/rejected lengths, when those stages ran;
    then the run's table across models (summary.write_run_summary)."""
    records = [rec for info in upstream_outputs(cfg, STAGE) for rec in iter_jsonl(info.path)]
    roles = models(cfg)
    fps = {rec["model"]: rec["fingerprint"] for rec in records if rec.get("fingerprint")}
    out = {"iter": cfg.run.iter, "models": {role: name for role, (name, _) in roles.items()},
           "model_paths": {role: run_relative(cfg, path) for role, (_, path) in roles.items()}, "fingerprints": fps,
           "judge": {"model": roles["judge"][0], "path": run_relative(cfg, roles["judge"][1]),
                     "chosen_by": "eval.judge_model" if eval_config(cfg).judge_model else "default: M1 frozen"},
           "heldout_source": eval_config(cfg).oasst_path or f"seed {HELDOUT_SEED_FILE} (written for the project)",
           **aggregate(records)}
    try:
        lengths = [x["n_tokens"] for info in upstream_outputs(cfg, "responses")
                   for rec in iter_jsonl(info.path) for x in rec["responses"]]
        out["length"]["responses_stage"] = {"model": f"M{cfg.run.iter}", "lengths": lengths, **length_stats(lengths)}
    except UpstreamNotReadyError:
        pass
    stats = cfg.stage_dir("pairs") / "stats.json"
    if stats.exists():
        s = read_json(stats)
        out["length"]["pairs"] = {k: s.get(k) for k in ("pairs", "mean_chosen_tokens", "mean_rejected_tokens",
                                                          "length_ratio", "chosen_longer_frac")}
    atomic_write_json(cfg.stage_dir(STAGE) / "metrics.json", out)
    shutil.rmtree(cfg.stage_dir(STAGE) / "work", ignore_errors=True)
    from ..summary import write_run_summary

    write_run_summary(cfg)
    return out


def main(argv: list[str] | None = None) -> int:
    from ..config import config_from_cli

    cfg = config_from_cli(argv)
    if cfg is None:
        return 2
    try:
        m = summarise(cfg)
    except UpstreamNotReadyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rm = m["reward_modeling"]
    print(f"iter {m['iter']}: pairwise accuracy {rm['pairwise_accuracy']}, parse rate {rm['parse_rate']}, "
          f"head-to-head {({o: (h['win'], h['tie'], h['loss']) for o, h in m['head_to_head'].items()})}")
    print(cfg.stage_dir(STAGE) / "metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())


finalize = summarise  # what the runner calls once every shard of the stage is done
