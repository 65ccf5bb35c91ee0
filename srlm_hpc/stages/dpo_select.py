"""DPO checkpoint selection (dpo.select=judge): which of the run's checkpoints becomes M_{k+1}.

The paper saved a checkpoint every 200 steps and kept the one that did best head-to-head
against the previous model on 253 validation prompts, judged by a fixed strong judge (GPT-4).
Here: the dpo stage saves a candidate every dpo.eval_every optimizer steps, and the final
weights as the last one (<stage_dir>/candidates/step-XXXXXXXX/, weights and tokenizer). Then
each candidate and M_k (the DPO reference policy) answer the validation prompts
(dpo.select_prompts) with the eval stage's answer settings, and eval's fixed judge
(eval.judge_model, "" = M1 frozen; eval.h2h_method) compares each candidate's answer with
M_k's through eval's own `compare_pairwise` / `compare_rubric`. The best (W + T/2) / n wins;
<stage_dir>/select.json records every candidate's W/T/L and the winner, whose folder becomes
<stage_dir>/model (renamed, not copied); the other candidates are then deleted.

Resumable like the rest of DPO: M_k's answers, each candidate's answers and each candidate's
verdicts are files of their own under <stage_dir>/select/<settings digest>/, written chunk by
chunk (shards.run_chunked) and atomically. A file found there is never recomputed, so a kill
between two candidates' evaluations loses at most a chunk, and no verdict is counted twice.

    python -m srlm_hpc.submit stage=dpo iter=1 preset=demo dpo.select=judge dpo.eval_every=50
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .. import validation_prompts as validation_prompts_file
from ..config import Config, ConfigError
from ..engines import SamplingConfig
from ..files import atomic_write_json, read_json, read_jsonl, replace_dir
from ..metrics import head_to_head
from ..shards import run_chunked, shard_seed
from .common import engine_for

STAGE = "dpo"


# ---- the candidates ------------------------------------------------------------------------------
def candidates_dir(cfg: Config) -> Path:
    return cfg.stage_dir(STAGE) / "candidates"


def candidate_dir(cfg: Config, step: int) -> Path:
    return candidates_dir(cfg) / f"step-{step:08d}"


def candidate_steps(total: int, every: int) -> list[int]:
    """Every `every` steps, and the final step: eval_every larger than the run leaves the final
    weights as the only candidate (chosen without judging; see select_checkpoint)."""
    return sorted(set(range(every, total + 1, every)) | {total})


def saved_candidates(cfg: Config, total: int) -> list[tuple[int, Path]]:
    """(step, folder) of every candidate of a run of `total` steps; all must exist."""
    out = [(s, candidate_dir(cfg, s)) for s in candidate_steps(total, cfg.dpo.eval_every)]
    missing = [str(p) for _, p in out if not p.is_dir()]
    if missing:
        raise FileNotFoundError(f"dpo.select=judge: candidate checkpoint(s) {', '.join(missing)} are missing; "
                                f"delete {cfg.stage_dir(STAGE) / 'checkpoint'} and {candidates_dir(cfg)} to train "
                                f"this stage again")
    return out


# ---- the validation prompts ----------------------------------------------------------------------
def prompts_source(cfg: Config) -> str:
    """As select.json records it: a path inside the work dir relative to it (eval's run_relative)."""
    if not cfg.dpo.select_prompts:
        return validation_prompts_file.source("")
    from .eval import run_relative

    return run_relative(cfg, Path(cfg.dpo.select_prompts).expanduser().resolve())


def validation_prompts(cfg: Config) -> list[dict]:
    """{"prompt_id", "prompt"} of dpo.select_prompts (else the shipped file), the first dpo.select_max_prompts."""
    return validation_prompts_file.load(cfg.dpo.select_prompts, cfg.dpo.select_max_prompts)


def _same_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def plan_problem(cfg: Config) -> str | None:
    """Why dpo.select=judge cannot run with this config, or None. The config refuses a bad file
    or backend when it is read; a prompt shared with eval's test prompts (which needs eval's
    data) is refused when the dpo stage is planned: at submit on Slurm, before any job is queued."""
    if cfg.dpo.select != "judge":
        return None
    if (problem := validation_prompts_file.setting_problem(cfg.dpo)) is not None:  # the config's own check
        return problem
    prompts = validation_prompts(cfg)
    from .eval import heldout

    turns, tests = heldout(cfg)
    test_texts = {_same_text(t["prompt"]) for t in turns + tests}
    shared = [p for p in prompts if _same_text(p["prompt"]) in test_texts]
    if shared:
        return (f"dpo.select_prompts: {len(shared)} validation prompt(s) of {prompts_source(cfg)} are also eval's "
                f"held-out test prompts (first: {shared[0]['prompt_id']} {shared[0]['prompt'][:60]!r}); selecting "
                f"on test prompts would inflate eval's head-to-head: remove them from the validation file")
    return None


def check_plan(cfg: Config) -> None:
    if (problem := plan_problem(cfg)) is not None:
        raise ConfigError(problem)


# ---- answers and verdicts ------------------------------------------------------------------------
def select_dir(cfg: Config, previous: Path, judge: Path, prompts: list[dict]) -> Path:
    """<stage_dir>/select/<digest>/: the digest covers everything that shapes the answers and
    verdicts (prompts, models, sampling, judge method), so a changed setting never reuses them."""
    from ..engines import resolve_engine_name
    from ..models import model_fingerprint

    e, j, r = cfg.eval, cfg.judge, cfg.responses
    keys = {"prompts": prompts, "previous": model_fingerprint(previous), "judge": model_fingerprint(judge),
            "seed": cfg.run.seed, "iter": cfg.run.iter, "engine": resolve_engine_name(cfg.run.engine),
            "batch_size": e.batch_size, "answer": [r.temperature, r.top_p, e.max_tokens], "method": e.h2h_method,
            "compare": [e.compare_temperature, e.compare_max_tokens] if e.h2h_method == "pairwise"
            else [j.k, j.temperature, j.top_p, j.max_tokens]}
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]
    return cfg.stage_dir(STAGE) / "select" / digest


def _phase(path: Path, items: list, chunk_size: int, process, desc: str) -> list[dict]:
    """The records of `path` if it exists, else computed chunk by chunk (a killed run keeps its chunks)."""
    if not path.exists():
        run_chunked(path, items, chunk_size, process, desc=desc)
    return read_jsonl(path)


def _seed(cfg: Config, kind: str, chunk: int) -> int:
    # The same draws for every model: answers and verdicts differ by the model, not the seed.
    return shard_seed(cfg.run.seed, cfg.run.iter, f"dpo-select-{kind}", 0, chunk)


def answers(cfg: Config, model: Path, path: Path, prompts: list[dict], name: str) -> list[dict]:
    """`model`'s answers to the validation prompts, with eval's answer settings."""
    e, r = cfg.eval, cfg.responses

    def process(chunk: list[dict], c: int) -> list[dict]:
        params = SamplingConfig(n=1, temperature=r.temperature, top_p=r.top_p, max_tokens=e.max_tokens,
                                seed=_seed(cfg, "answer", c))
        outs = engine_for(cfg, model, batch_size=e.batch_size).generate(
            [[{"role": "user", "content": p["prompt"]}] for p in chunk], params)
        return [{"prompt_id": p["prompt_id"], "prompt": p["prompt"], "text": o[0].text, "n_tokens": o[0].n_tokens,
                 "finish_reason": o[0].finish_reason} for p, o in zip(chunk, outs)]

    return _phase(path, prompts, e.batch_size, process, f"dpo select: {name} answers")


def verdicts(cfg: Config, judge: Path, path: Path, new: list[dict], old: list[dict], name: str) -> list[dict]:
    """The fixed judge's head-to-head of `new` (a candidate's answers) against `old` (M_k's),
    as the eval stage compares M_{k+1} with M_k."""
    from .eval import compare_pairwise, compare_rubric

    e, j = cfg.eval, cfg.judge

    def process(chunk: list[int], c: int) -> list[dict]:
        pairs = [(new[i]["prompt"], new[i]["text"], old[i]["text"]) for i in chunk]
        engine = engine_for(cfg, judge, batch_size=e.batch_size)
        if e.h2h_method == "rubric":
            params = SamplingConfig(n=j.k, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens,
                                    seed=_seed(cfg, "rubric", c))
            found = compare_rubric(engine, pairs, params)
        else:
            params = SamplingConfig(n=1, temperature=e.compare_temperature, top_p=1.0,
                                    max_tokens=e.compare_max_tokens, seed=_seed(cfg, "compare", c))
            found = compare_pairwise(engine, pairs, params)
        return [{"prompt_id": new[i]["prompt_id"], **rec} for i, rec in zip(chunk, found)]

    return _phase(path, list(range(len(new))), max(1, e.batch_size // 2), process, f"dpo select: judge {name}")


def score(counts: dict) -> float:
    """(W + T/2) / n, unparsed verdicts counted in n: a judge that cannot read a candidate's
    answers gives it no credit."""
    return (counts["win"] + counts["tie"] / 2) / counts["n"] if counts["n"] else 0.0


def winner_of(rows: list[dict]) -> dict:
    """The best score; among equals the earlier step: it has drifted less from M_k (length
    growth, the paper's known failure, grows with steps) on the same evidence."""
    return max(rows, key=lambda row: (row["score"], -row["step"]))


# ---- the selection -------------------------------------------------------------------------------
def select_checkpoint(cfg: Config, candidates: list[tuple[int, Path]]) -> dict:
    """Judge every candidate against M_k, write <stage_dir>/select.json, return it."""
    from ..models import model_path
    from .eval import models

    previous = model_path(cfg, cfg.run.iter)
    judge_name, judge = models(cfg)["judge"]
    out = {"select": "judge", "eval_every": cfg.dpo.eval_every, "previous_model": f"M{cfg.run.iter}",
           "judge_model": judge_name, "method": cfg.eval.h2h_method, "prompts_source": prompts_source(cfg),
           "tie_break": "earlier step"}
    if len(candidates) == 1:  # eval_every >= the run's steps: nothing to choose between
        step = candidates[0][0]
        out.update(n_prompts=0, judged=False, winner_step=step,
                   candidates=[{"step": step, "win": None, "tie": None, "loss": None, "n": 0, "score": None}])
    else:
        prompts = validation_prompts(cfg)
        work = select_dir(cfg, previous, judge, prompts)
        atomic_write_json(work / "settings.json", {"candidates": [s for s, _ in candidates], "n_prompts": len(prompts)})
        todo = [(s, p) for s, p in candidates if not (work / f"step-{s:08d}.verdicts.jsonl").exists()]
        # Each model loads once, the judge last: M_k's answers, every unjudged candidate's, then verdicts.
        old = answers(cfg, previous, work / "previous.answers.jsonl", prompts, f"M{cfg.run.iter}") if todo else []
        new = {s: answers(cfg, p, work / f"step-{s:08d}.answers.jsonl", prompts, f"step {s}") for s, p in todo}
        rows = []
        for s, _ in candidates:
            path = work / f"step-{s:08d}.verdicts.jsonl"
            recs = read_jsonl(path) if path.exists() else verdicts(cfg, judge, path, new[s], old, f"step {s}")
            counts = head_to_head(rec["outcome"] for rec in recs)
            rows.append({"step": s, **{k: counts[k] for k in ("win", "tie", "loss", "unparsed", "n")},
                         "score": score(counts)})
        out.update(n_prompts=len(prompts), judged=True, winner_step=winner_of(rows)["step"], candidates=rows)
    atomic_write_json(cfg.stage_dir(STAGE) / "select.json", out)
    return out


def selected_model(cfg: Config, total: int) -> Path:
    """<stage_dir>/model after selection among the candidates of a run of `total` steps.

    Order, for a kill at any point: select.json first; then the winner's folder renamed to
    model; then the candidates deleted (their disk: one float32 model each). A rerun that finds
    select.json and model is past the rename; one that finds no model judges again from the
    saved verdicts (no engine call) and renames."""
    model = cfg.stage_dir(STAGE) / "model"
    result_path = cfg.stage_dir(STAGE) / "select.json"
    if not (result_path.exists() and model.exists()):
        result = select_checkpoint(cfg, saved_candidates(cfg, total))
        replace_dir(candidate_dir(cfg, result["winner_step"]), model)
    result = read_json(result_path)
    shutil.rmtree(candidates_dir(cfg), ignore_errors=True)
    print(f"[dpo] checkpoint of step {result['winner_step']} of {total} kept as M{cfg.run.iter + 1}: "
          f"{describe(result)}", flush=True)
    return model


def describe(result: dict) -> str:
    if not result["judged"]:
        return f"the only candidate (dpo.eval_every={result['eval_every']} >= the run's steps), not judged"
    return "; ".join(f"step {r['step']} W/T/L {r['win']}/{r['tie']}/{r['loss']} ({r['score']:.3f})"
                     for r in result["candidates"]) + f" vs {result['previous_model']}, judge {result['judge_model']}"
