"""timing.py: a shard's model loads (an engine's own weight load counted once) and generated
tokens go into its manifest entry; the table's wall, shard-seconds, loads and tokens/s are
the recorded numbers; one process keeps one engine per model whatever the batch size."""

from __future__ import annotations

import json
import types

import pytest

from srlm_hpc import runner, timing
from srlm_hpc.config import build_config
from srlm_hpc.engines.base import Completion, SamplingConfig
from srlm_hpc.files import write_jsonl
from srlm_hpc.manifest import StageManifest
from srlm_hpc.shards import shard_output


class ScriptedEngine:
    """Generates `tokens` tokens per sample, nothing else (the engine interface's shape)."""

    def __init__(self, tokens: int):
        self.tokens = tokens

    def generate(self, conversations, params):
        return [[Completion("x", self.tokens, "stop")] * params.n for _ in conversations]

    def generate_chunks(self, jobs):
        from srlm_hpc.engines.base import generate_one_by_one

        return generate_one_by_one(self, jobs)


def test_a_load_inside_a_load_counts_once_and_nothing_is_kept_outside_a_shard():
    with timing.model_load("engine", "/m"):  # outside recording(): nowhere to go, no error
        pass
    with timing.recording() as spent:
        with timing.model_load("engine", "/m1"):
            with timing.model_load("model", "/m1"):  # the engine loading its weights
                pass
        with timing.model_load("model", "/m2"):
            pass
    assert spent["model_loads"] == 2 and [x["kind"] for x in spent["loads"]] == ["engine", "model"]
    assert [x["path"] for x in spent["loads"]] == ["/m1", "/m2"]
    assert spent["model_load_s"] == pytest.approx(sum(x["seconds"] for x in spent["loads"]), abs=2e-3)


def test_a_counting_engine_adds_up_the_tokens_of_every_sample():
    engine = timing.CountingEngine(ScriptedEngine(tokens=7))
    with timing.recording() as spent:
        engine.generate([[{"role": "user", "content": "a"}]] * 3, SamplingConfig(n=4))
        engine.generate([[{"role": "user", "content": "b"}]], SamplingConfig(n=1))
    assert spent["generated_tokens"] == 7 * (3 * 4 + 1) and spent["generate_s"] >= 0
    assert engine.tokens == 7  # everything else is the engine's own
    with timing.recording() as streamed:  # the continuous feed: each job counted as it comes out
        jobs = [([[{"role": "user", "content": "a"}]] * 2, SamplingConfig(n=3)), ([[{"role": "user", "content": "b"}]],
                                                                               SamplingConfig(n=1))]
        done = [i for i, _ in engine.generate_chunks(iter(jobs))]
    assert done == [0, 1] and streamed["generated_tokens"] == 7 * (2 * 3 + 1)


def _done(man, shard, started, finished, spent):
    st = man.mark_running(shard)
    man.mark_done(shard, write_jsonl(man.dir.parent / f"out-{shard}.jsonl", [{"i": shard}]), timing=spent)
    st = man.get(shard)
    st.started, st.finished = started, finished
    man._put(st)


def test_the_table_gives_the_recorded_numbers(tmp_path):
    cfg = build_config({"work_dir": str(tmp_path)})
    gen = StageManifest(cfg.manifest_root, 1, "judge")
    gen.write_plan(3, {})
    _done(gen, 0, 1000.0, 1010.0, {"model_loads": 1, "model_load_s": 4.0, "generated_tokens": 300, "generate_s": 5.0})
    _done(gen, 1, 1002.0, 1020.0, {"model_loads": 1, "model_load_s": 3.5, "generated_tokens": 500, "generate_s": 5.0})
    dpo = StageManifest(cfg.manifest_root, 1, "dpo")
    dpo.write_plan(1, {})
    _done(dpo, 0, 2000.0, 2100.0, {"model_loads": 2, "model_load_s": 6.0, "generated_tokens": 0, "generate_s": 0.0})
    log = cfg.stage_dir("dpo") / "train_log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps({"step": i, "tokens": 400.0, "seconds": 20.0}) + "\n" for i in range(4)))

    rows = {r["stage"]: r for r in timing.run_timing(cfg.manifest_root, cfg.work_dir)}
    # judge: shards 0 and 1 of 3 done; from 1000 (first start) to 1020 (last end); 10 + 18 shard-seconds
    assert rows["judge"] == {"iter": 1, "stage": "judge", "shards": 3, "done": 2, "wall_s": 20.0, "shard_s": 28.0,
                             "model_loads": 2, "model_load_s": 7.5, "tokens": 800, "work_s": 10.0,
                             "tokens_per_s": 80.0, "kind": "generated"}
    # dpo: 1,600 tokens trained in 80 s of steps
    assert (rows["dpo"]["tokens"], rows["dpo"]["work_s"], rows["dpo"]["tokens_per_s"]) == (1600, 80.0, 20.0)
    assert rows["dpo"]["kind"] == "trained" and rows["dpo"]["model_loads"] == 2


UP = types.SimpleNamespace(plan=lambda cfg: (2, {}))


def test_a_run_records_its_loads_and_tokens_and_keeps_one_engine_per_model(tmp_path, tiny_llama, monkeypatch):
    """Two shards in one process, asking for the tiny model at two batch sizes: one load, in
    shard 0's entry; shard 1 loads nothing; both count the tokens they generated."""
    from srlm_hpc.stages import common

    def run_shard(cfg, shard):
        engine = common.engine_for(cfg, tiny_llama, batch_size=2 + 6 * shard)  # 2, then 8: the same engine
        outs = engine.generate([[{"role": "user", "content": f"hi {i}"}] for i in range(3)],
                               SamplingConfig(n=2, max_tokens=4, seed=shard))
        return write_jsonl(shard_output(cfg, "up", shard), [{"n": c.n_tokens} for s in outs for c in s])

    monkeypatch.setattr(runner, "get_stage", lambda name: types.SimpleNamespace(plan=UP.plan, run_shard=run_shard))
    monkeypatch.setattr(common, "_ENGINES", {})
    cfg = build_config({"work_dir": str(tmp_path / "run"), "run.engine": "hf", "run.device": "cpu"})
    runner.run_stage_local(cfg, "up")
    man = StageManifest(cfg.manifest_root, 1, "up")
    first, second = man.get(0).timing, man.get(1).timing
    assert first["model_loads"] == 1 and first["loads"][0]["kind"] == "engine"
    assert first["loads"][0]["path"] == str(tiny_llama) and second["model_loads"] == 0
    for shard, spent in ((0, first), (1, second)):
        from srlm_hpc.files import read_jsonl

        assert spent["generated_tokens"] == sum(r["n"] for r in read_jsonl(shard_output(cfg, "up", shard)))
    assert next(iter(common._ENGINES.values())).engine.batch_size == 8
