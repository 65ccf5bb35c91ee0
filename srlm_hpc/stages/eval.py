"""Stage `eval`: how good are the judge and the answers of M_{k+1}, the model iteration k made.

Per shard, over held-out data (SPEC.md, "Evaluation"):
(a) reward modeling: M_{k+1} judges every held-out ranked reply with the paper's rubric,
    through the judge stage's `judge_sets` and its settings (judge.k, temperature, ...);
(b) head-to-head: M_{k+1} and M_k (and the SFT baseline, when it is another model) answer
    the held-out prompts with the responses stage's sampling settings; the judge model
    (eval.judge_model, default M_{k+1}) decides each pair of answers by eval.h2h_method:
    "pairwise" (the paper's GPT-4 style A/B comparison, in both orders) or "rubric" (each
    answer scored alone with the paper's 0-5 rubric, judge.k samples averaged; the higher
    mean wins), for a judge that was only ever taught the rubric;
(c) lengths of those answers, in tokens.
A shard works in phases, each saved (and chunked, through run_chunked) before the next, so a
killed shard resumes where it stopped; the phases are ordered so each model loads once.
`summarise` then writes <work_dir>/iter<k>/eval/metrics.json from the verified shards.

    python -m srlm_hpc.submit stage=eval iter=1 preset=demo
    python -m srlm_hpc.stages.eval iter=1 preset=demo     # (re)write metrics.json only
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from ..config import Config, EvalConfig
from ..data.oasst import heldout_turns, load_seed
from ..engines import SamplingConfig
from ..files import FileInfo, atomic_write_json, iter_jsonl, read_json, read_jsonl, write_jsonl
from ..metrics import combine_orders, head_to_head, length_stats, reward_modeling
from ..models import model_path
from ..schema import Response, ResponseSet
from ..shards import UpstreamNotReadyError, run_chunked, shard_output, shard_seed, upstream_outputs
from .common import engine_for
from .judge import judge_sets

STAGE = "eval"


# The lead moves this into config.py as `Config.eval`; until then `eval_config` falls back to it.
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
# `pairs` are (prompt, new model's answer, old model's answer); each returns one record per pair
# with what the judge wrote, what was read from it and the outcome for the new model.
def compare_pairwise(engine, pairs: list[tuple[str, str, str]], params: SamplingConfig) -> list[dict]:
    """Both orders (new answer as A, then as B); orders that disagree are a tie."""
    convs = [m for p, new, old in pairs for m in (compare_messages(p, new, old), compare_messages(p, old, new))]
    outs = engine.generate(convs, params)
    recs = []
    for n in range(len(pairs)):
        texts = [outs[2 * n][0].text, outs[2 * n + 1][0].text]
        verdicts = [parse_verdict(t) for t in texts]
        recs.append({"method": "pairwise", "judge_texts": texts, "verdicts": verdicts,
                     "outcome": combine_orders(*verdicts)})
    return recs


def compare_rubric(engine, pairs: list[tuple[str, str, str]], params: SamplingConfig) -> list[dict]:
    """Each answer judged alone through the judge stage's `judge_sets` (its prompt, parser and
    mean of params.n samples); judge_texts, judge_scores and scores are [new, old]."""
    sets = [ResponseSet(str(n), p, [Response("new", new, 0), Response("old", old, 0)])
            for n, (p, new, old) in enumerate(pairs)]
    recs = []
    for s in judge_sets(engine, sets, params):
        new, old = s.responses
        recs.append({"method": "rubric", "judge_texts": [new.judge_texts, old.judge_texts],
                     "judge_scores": [new.judge_scores, old.judge_scores], "scores": [new.score, old.score],
                     "outcome": rubric_outcome(new.score, old.score)})
    return recs


def parsed_share(rec: dict) -> tuple[int, int]:
    """(parsed, total) judge outputs of one h2h record: verdicts, or rubric score samples."""
    if rec.get("method", "pairwise") == "pairwise":
        read = rec["verdicts"]
    else:
        read = [s for x in rec["judge_scores"] for s in x]
    return sum(v is not None for v in read), len(read)


# ---- what a shard works on ----------------------------------------------------------------------
def heldout(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(ranked turns for reward modeling, {"prompt_id", "prompt"} for head-to-head), capped."""
    e = eval_config(cfg)
    turns = heldout_turns(e.oasst_path or None, e.split_seed, e.ift_size, e.heldout_frac)
    if e.oasst_path:
        prompts = [{"prompt_id": t["prompt_id"], "prompt": t["prompt"]} for t in turns]
    else:
        prompts = [{"prompt_id": p["id"], "prompt": p["prompt"]} for p in load_seed("ift")]
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


def models(cfg: Config) -> dict[str, tuple[str, Path]]:
    """role -> (name, path): "new" = M_{k+1}, "previous" = M_k, "baseline" unless it is M_k, "judge"."""
    k, e = cfg.run.iter, eval_config(cfg)
    out = {"new": (f"M{k + 1}", model_path(cfg, k + 1)), "previous": (f"M{k}", model_path(cfg, k))}
    base = (Path(e.baseline_model).name, Path(e.baseline_model)) if e.baseline_model else ("M1", model_path(cfg, 1))
    if base[1].resolve() != out["previous"][1].resolve():
        out["baseline"] = base
    out["judge"] = (Path(e.judge_model).name, Path(e.judge_model)) if e.judge_model else out["new"]
    return out


def _phase(path: Path, items: list, chunk_size: int, process, desc: str) -> list[dict]:
    """A phase's records: from its saved file, else computed chunk by chunk (resumable)."""
    if not items:  # a trailing shard past the end of the data: nothing to load a model for
        write_jsonl(path, [])
    elif not path.exists():
        run_chunked(path, items, chunk_size, process, desc=desc)
    return read_jsonl(path)


def run_shard(cfg: Config, shard: int) -> FileInfo:
    e, j, r = eval_config(cfg), cfg.judge, cfg.responses
    turns, prompts = heldout(cfg)
    lo, hi = shard * e.shard_size, (shard + 1) * e.shard_size
    turns, prompts = turns[lo:hi], prompts[lo:hi]
    roles = models(cfg)
    work = cfg.stage_dir(STAGE) / "work"

    def engine(role: str):
        return engine_for(cfg, roles[role][1], batch_size=e.batch_size)

    def seed(kind: str, c: int) -> int:
        return shard_seed(cfg.run.seed, cfg.run.iter, f"{STAGE}-{kind}", shard, c)

    def judge_rm(chunk: list[dict], c: int) -> list[dict]:
        eng = engine("new")
        sets = [ResponseSet(t["prompt_id"], t["prompt"], [Response(x["id"], x["text"], eng.count_tokens(x["text"]))
                                                          for x in t["replies"]]) for t in chunk]
        params = SamplingConfig(n=j.k, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens,
                                seed=seed("rm", c))
        return [{"kind": "rm", "ranks": [x["rank"] for x in t["replies"]], **s.to_dict()}
                for t, s in zip(chunk, judge_sets(eng, sets, params))]

    def answer(role: str):
        def process(chunk: list[dict], c: int) -> list[dict]:
            # The same seed for every model: the answers differ by the model, not the draw.
            params = SamplingConfig(n=1, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                    seed=seed("answer", c))
            outs = engine(role).generate([[{"role": "user", "content": p["prompt"]}] for p in chunk], params)
            return [{"kind": "answer", "role": role, "model": roles[role][0], "prompt_id": p["prompt_id"],
                     "prompt": p["prompt"], "text": o[0].text, "n_tokens": o[0].n_tokens,
                     "finish_reason": o[0].finish_reason} for p, o in zip(chunk, outs)]
        return process

    def compare(opponent: str, new_answers: list[dict], old_answers: list[dict]):
        def process(chunk: list[int], c: int) -> list[dict]:
            pairs = [(new_answers[i]["prompt"], new_answers[i]["text"], old_answers[i]["text"]) for i in chunk]
            if e.h2h_method == "rubric":  # the judge stage's sampling: k samples, their mean
                params = SamplingConfig(n=j.k, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens,
                                        seed=seed(f"rubric-{opponent}", c))
                found = compare_rubric(engine("judge"), pairs, params)
            else:
                params = SamplingConfig(n=1, temperature=e.compare_temperature, top_p=1.0,
                                        max_tokens=e.compare_max_tokens, seed=seed(f"compare-{opponent}", c))
                found = compare_pairwise(engine("judge"), pairs, params)
            return [{"kind": "h2h", "opponent": opponent, "new_model": roles["new"][0],
                     "old_model": roles[opponent][0], "judge_model": roles["judge"][0],
                     "prompt_id": new_answers[i]["prompt_id"], **rec} for i, rec in zip(chunk, found)]
        return process

    name = f"shard-{shard:05d}"
    per_rm = max(1, e.batch_size // max(1, j.k))
    opponents = [o for o in ("previous", "baseline") if o in roles]
    # Order: the opponents' answers, then everything M_{k+1} does, then the judge (often M_{k+1}).
    answers = {o: _phase(work / f"{name}.answers-{o}.jsonl", prompts, e.batch_size, answer(o), f"eval {o} answers")
               for o in opponents}
    rm = _phase(work / f"{name}.rm.jsonl", turns, per_rm, judge_rm, f"eval rm shard {shard}")
    answers["new"] = _phase(work / f"{name}.answers-new.jsonl", prompts, e.batch_size, answer("new"),
                            "eval new answers")
    h2h = []
    for o in opponents:
        h2h += _phase(work / f"{name}.h2h-{e.h2h_method}-{o}.jsonl", list(range(len(prompts))),
                      max(1, e.batch_size // 2),
                      compare(o, answers["new"], answers[o]), f"eval h2h vs {o}")
    info = write_jsonl(shard_output(cfg, STAGE, shard), rm + [a for o in ("new", *opponents) for a in answers[o]] + h2h)
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


def aggregate(records: list[dict]) -> dict:
    """The eval numbers of one iteration from its shard records (pure; summarise adds context)."""
    rm = [rec for rec in records if rec["kind"] == "rm"]
    prompts = [(rec["ranks"], [x["score"] for x in rec["responses"]]) for rec in rm]
    samples = [s for rec in rm for x in rec["responses"] for s in x["judge_scores"]]
    by_rank: dict[str, list[float]] = {"0": [], "1": [], "2+": []}
    for rec in rm:
        for rank, x in zip(rec["ranks"], rec["responses"]):
            if x["score"] is not None:
                by_rank[str(rank) if rank < 2 else "2+"].append(x["score"])
    scores = [s for v in by_rank.values() for s in v]
    answers: dict[str, dict] = {}
    for rec in records:
        if rec["kind"] == "answer":
            a = answers.setdefault(rec["role"], {"model": rec["model"], "lengths": [], "hit_max_tokens": 0})
            a["lengths"].append(rec["n_tokens"])
            a["hit_max_tokens"] += rec["finish_reason"] == "length"
    h2h: dict[str, dict] = {}
    for opp in sorted({rec["opponent"] for rec in records if rec["kind"] == "h2h"}):
        recs = [rec for rec in records if rec["kind"] == "h2h" and rec["opponent"] == opp]
        shares = [parsed_share(rec) for rec in recs]
        parsed, total = sum(n for n, _ in shares), sum(n for _, n in shares)
        h2h[opp] = {"new_model": recs[0]["new_model"], "old_model": recs[0]["old_model"],
                    "judge_model": recs[0]["judge_model"], "method": recs[0].get("method", "pairwise"),
                    **head_to_head(rec["outcome"] for rec in recs),
                    # pairwise: verdicts read (2 per prompt); rubric: score samples read (2k per prompt)
                    "verdict_parse_rate": parsed / total if total else None}
    return {
        "reward_modeling": {**reward_modeling(prompts, samples), "score_bins": BINS, "score_hist": _hist(scores),
                            "score_hist_by_rank": {k: _hist(v) for k, v in by_rank.items()}},
        "head_to_head": h2h,
        "length": {"answers": {role: {**a, **length_stats(a["lengths"])} for role, a in answers.items()}},
    }


def summarise(cfg: Config) -> dict:
    """metrics.json of iteration k: aggregate() of the verified shards, the responses stage's
    lengths (M_k's samples) and the pairs' chosen/rejected lengths, when those stages ran."""
    records = [rec for info in upstream_outputs(cfg, STAGE) for rec in iter_jsonl(info.path)]
    out = {"iter": cfg.run.iter, "models": {role: name for role, (name, _) in models(cfg).items()},
           "heldout_source": eval_config(cfg).oasst_path or "seed (smoke-scale stand-in)", **aggregate(records)}
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
