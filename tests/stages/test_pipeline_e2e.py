"""All the stages of iteration 1 on a tiny random Llama with the real SmolLM2 tokenizer.

The test's own EFT set has targets of the bare form "Score: N", so that a 2-layer model
learns in a few dozen SFT steps to end a judgement with a parseable score: every stage
then has real input, including DPO. Asserts the files each stage writes and their schemas.
"""

from __future__ import annotations

import json
import subprocess

import datasets
import pytest
import torch

from srlm_hpc.config import build_config
from srlm_hpc.files import iter_jsonl, read_json
from srlm_hpc.manifest import StageManifest
from srlm_hpc.schema import PairRecord, PromptRecord, ResponseSet
from srlm_hpc.shards import parts_key
from srlm_hpc.submit import main as submit
from srlm_hpc.templates import judge_prompt
from tests.conftest import oasst_rows, write_jsonl_rows

IFT = [("Name a primary colour.", "Red."), ("What is 2 + 2?", "4."), ("Say hello.", "Hello!"),
       ("Name a fruit.", "An apple."), ("What colour is the sky?", "Blue."), ("Name a planet.", "Mars."),
       ("Give a number.", "Seven."), ("Name an animal.", "A cat.")]


def eft_pairs() -> list[tuple[str, str]]:
    answers = ["Paris is the capital.", "I do not know.", "Bananas are yellow.", "It is 4.", "Blue, usually."]
    return [(judge_prompt(q, a), f"Score: {1 + (i + j) % 5}")
            for i, (q, _) in enumerate(IFT) for j, a in enumerate(answers[:3])]


def e2e_args(work, tiny_llama) -> list[str]:
    """The whole iteration on the tiny model: small enough for CI, every stage with real input."""
    work.mkdir(parents=True, exist_ok=True)
    ift = write_jsonl_rows(work / "ift.jsonl", oasst_rows(IFT, "ift"))
    eft = write_jsonl_rows(work / "eft.jsonl", oasst_rows(eft_pairs(), "eft"))
    return [f"work_dir={work / 'run'}", f"model={tiny_llama}", "engine=hf", "seed=7", "threads=1",
            f"sft.ift_path={ift}", f"sft.eft_path={eft}", "sft.lr=1e-2", "sft.min_lr=1e-3", "sft.epochs=16",
            "sft.warmup_steps=4",
            "sft.batch_size=8", "sft.micro_batch_size=8", "sft.max_len=640", "sft.dropout=0.0",
            "prompts.n_prompts=6", "prompts.shard_size=3", "prompts.max_tokens=12", "prompts.min_words=1",
            "responses.n=4", "responses.max_tokens=12", "responses.shard_size=4", "responses.batch_size=4",
            "judge.k=3", "judge.max_tokens=8", "judge.shard_size=4", "judge.batch_size=12",
            # the tiny model seldom ends a 12-token answer itself: with truncated responses left out
            # (the default) it would have no pairs; allowed, DPO trains them without the end token
            "pairs.allow_truncated=true",
            "dpo.lr=1e-3", "dpo.batch_size=2", "dpo.micro_batch_size=2", "dpo.epochs=2", "dpo.dropout=0.0",
            "eval.max_rm_prompts=4", "eval.max_h2h_prompts=3", "eval.shard_size=4", "eval.compare_max_tokens=8",
            "eval.max_tokens=12"]


@pytest.fixture(scope="module")
def iteration(tmp_path_factory, tiny_llama):
    args = e2e_args(tmp_path_factory.mktemp("e2e"), tiny_llama)
    assert submit(["stage=all", "iter=1", "executor=local", *args]) == 0
    return build_config({a.split("=", 1)[0]: a.split("=", 1)[1] for a in args}), args


def test_every_stage_is_done_in_the_manifest(iteration):
    cfg, _ = iteration
    for stage in ("sft", "prompts", "responses", "judge", "pairs", "ref_logps", "dpo", "eval"):
        man = StageManifest(cfg.manifest_root, 1, stage)
        plan = man.plan()
        assert plan is not None, stage
        states = man.states()
        assert [s.state for s in states] == ["done"] * plan["n_shards"], stage
        assert all(man.verified_output(s) is not None for s in states), stage


def test_prompts_and_responses_follow_the_schema(iteration):
    cfg, _ = iteration
    prompts = [PromptRecord.from_dict(r) for p in sorted(cfg.stage_dir("prompts").glob("shard-*.jsonl"))
               for r in iter_jsonl(p)]
    assert 1 <= len(prompts) <= 6
    assert len({p.prompt_id for p in prompts}) == len(prompts)
    sets = [ResponseSet.from_dict(r) for p in sorted(cfg.stage_dir("responses").glob("shard-*.jsonl"))
            for r in iter_jsonl(p)]
    # Responses keep prompt order and skip a prompt that repeats an earlier one word for word.
    first_of_text = {}
    for p in prompts:
        first_of_text.setdefault(" ".join(p.prompt.lower().split()), p.prompt_id)
    assert [s.prompt_id for s in sets] == [p.prompt_id for p in prompts if p.prompt_id in first_of_text.values()]
    assert all(len(s.responses) == 4 for s in sets)
    assert not list(cfg.stage_dir("responses").glob("*.part-*"))  # chunk files removed once the shard is whole


def test_judge_keeps_raw_text_and_scores_parse_after_sft(iteration):
    cfg, _ = iteration
    judged = [ResponseSet.from_dict(r) for p in sorted(cfg.stage_dir("judge").glob("shard-*.jsonl"))
              for r in iter_jsonl(p)]
    responses = [r for s in judged for r in s.responses]
    assert all(len(r.judge_texts) == 3 and len(r.judge_scores) == 3 for r in responses)
    assert all(len(r.judge_finish_reasons) == 3 and set(r.judge_finish_reasons) <= {"stop", "length"}
               for r in responses)  # the engine's finish reason is kept with every judge sample
    parsed = [s for r in responses for s in r.judge_scores if s is not None]
    assert len(parsed) / (3 * len(responses)) >= 0.8  # SFT taught the "Score: N" format
    for r in responses:
        valid = [s for s in r.judge_scores if s is not None]
        assert r.score == (pytest.approx(sum(valid) / len(valid)) if valid else None)


def test_pairs_file_is_real_zstd_jsonl_that_datasets_reads(iteration, tmp_path):
    cfg, _ = iteration
    path = cfg.stage_dir("pairs") / "pairs-00000.jsonl.zst"
    pairs = [PairRecord.from_dict(r) for r in iter_jsonl(path)]
    assert pairs, "the tiny judge produced no pair; the pipeline test has nothing to train on"
    for p in pairs:
        assert p.chosen_score > p.rejected_score and p.iter == 1
    out = tmp_path / "pairs.jsonl"
    subprocess.run(["zstd", "-d", "-q", str(path), "-o", str(out)], check=True)
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == [p.prompt_id for p in pairs]
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names) and len(ds) == len(pairs)
    stats = read_json(cfg.stage_dir("pairs") / "stats.json")
    assert stats["pairs"] == len(pairs)
    # finish reasons travel from responses to pairs; stats count the truncated ones
    finish = {r.response_id: r.finish_reason for p in sorted(cfg.stage_dir("judge").glob("shard-*.jsonl"))
              for rec in iter_jsonl(p) for r in ResponseSet.from_dict(rec).responses}
    assert stats["truncated_responses"] == sum(f == "length" for f in finish.values())
    assert [(p.chosen_finish_reason, p.rejected_finish_reason) for p in pairs] == [
        (finish[p.chosen_id], finish[p.rejected_id]) for p in pairs]
    assert stats["truncated_in_pairs"] == sum((p.chosen_finish_reason == "length") + (p.rejected_finish_reason == "length")
                                              for p in pairs)


def test_dpo_targets_end_with_the_end_token_only_when_the_response_ended(iteration):
    cfg, _ = iteration
    tok, pairs, encoded = stored_pairs(cfg)
    sides = [(p.chosen_finish_reason, c) for p, (c, _) in zip(pairs, encoded)] + [
        (p.rejected_finish_reason, r) for p, (_, r) in zip(pairs, encoded)]
    for finish, (ids, _) in sides:
        assert (ids[-1] == tok.eos_token_id) == (finish == "stop"), finish


def test_dpo_writes_a_model_that_loads_and_differs_from_its_start(iteration, tiny_llama):
    from transformers import AutoModelForCausalLM

    cfg, _ = iteration
    m2 = AutoModelForCausalLM.from_pretrained(cfg.stage_dir("dpo") / "model")
    m1 = AutoModelForCausalLM.from_pretrained(cfg.stage_dir("sft") / "model")
    m0 = AutoModelForCausalLM.from_pretrained(tiny_llama)
    w = "model.layers.0.mlp.down_proj.weight"
    sd0, sd1, sd2 = m0.state_dict(), m1.state_dict(), m2.state_dict()
    assert not torch.equal(sd0[w], sd1[w]) and not torch.equal(sd1[w], sd2[w])
    summary = read_json(cfg.iter_dir() / "summary.json")
    assert summary["n_pairs"] >= 1 and summary["model_out"].endswith("dpo/model")
    assert summary["dpo_loss_first"] is not None and summary["judge_parse_rate"] >= 0.8


def naive_logps(model, ids: list[int], n_prompt: int) -> float:
    """log p(target | prompt) by plain PyTorch, one unpadded sequence: the independent check."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    targets = torch.tensor(ids[1:])
    lp = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
    return float(lp[n_prompt - 1:].sum())


def stored_pairs(cfg):
    from srlm_hpc.stages.dpo import encode_pairs
    from srlm_hpc.stages.pairs import iter_pairs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.stage_dir("sft") / "model")
    pairs = list(iter_pairs(cfg))
    return tok, pairs, encode_pairs(tok, pairs, cfg.dpo.max_len)


def test_ref_logps_match_plain_pytorch_on_the_reference(iteration):
    from srlm_hpc.stages.ref_logps import load_reference_logps
    from transformers import AutoModelForCausalLM

    cfg, _ = iteration
    m1 = AutoModelForCausalLM.from_pretrained(cfg.stage_dir("sft") / "model").eval()  # iter 1's reference
    tok, pairs, encoded = stored_pairs(cfg)
    stored = load_reference_logps(cfg, pairs, encoded, cfg.stage_dir("sft") / "model")
    expected = torch.tensor([[naive_logps(m1, *c), naive_logps(m1, *r)] for c, r in encoded], dtype=torch.float32)
    assert stored.shape == (len(pairs), 2)
    torch.testing.assert_close(stored, expected, rtol=1e-4, atol=1e-3)
    # mean reduction divides by the target token counts stored beside the sums
    n_tokens = torch.tensor([[len(c[0]) - c[1], len(r[0]) - r[1]] for c, r in encoded], dtype=torch.float32)
    from dataclasses import replace

    mean_cfg = replace(cfg, dpo=replace(cfg.dpo, logp_reduction="mean"))
    torch.testing.assert_close(load_reference_logps(mean_cfg, pairs, encoded, cfg.stage_dir("sft") / "model"),
                               expected / n_tokens, rtol=1e-4, atol=1e-4)


def test_dpo_read_stored_ref_logps_equal_to_inline_ones(iteration):
    from dataclasses import replace

    from srlm_hpc.stages.dpo import reference_logps_for

    cfg, _ = iteration
    tok, pairs, encoded = stored_pairs(cfg)
    stored = reference_logps_for(cfg, pairs, encoded, tok.pad_token_id, "cpu")
    inline_cfg = replace(cfg, dpo=replace(cfg.dpo, reference_logps="inline"))
    inline = reference_logps_for(inline_cfg, pairs, encoded, tok.pad_token_id, "cpu")
    torch.testing.assert_close(stored, inline, rtol=1e-5, atol=1e-4)


def test_stale_ref_logps_are_refused_naming_file_and_line(iteration, tiny_llama):
    from srlm_hpc.stages.ref_logps import StaleReferenceError, load_reference_logps

    cfg, _ = iteration
    tok, pairs, encoded = stored_pairs(cfg)
    # another reference model (M0 instead of M1)
    with pytest.raises(StaleReferenceError, match=r"ref_logps/shard-00000\.jsonl:1: computed with reference model"):
        load_reference_logps(cfg, pairs, encoded, tiny_llama)
    # other token ids (a changed template or dpo.max_len): the chosen side one token shorter
    cut = [((c_ids[:-1], c_n), r) for (c_ids, c_n), r in encoded]
    with pytest.raises(StaleReferenceError, match=r"shard-00000\.jsonl:1: computed on other token ids"):
        load_reference_logps(cfg, pairs, cut, cfg.stage_dir("sft") / "model")
    # a pair the stage never saw
    ghost = replace_prompt_id(pairs[0], "ghost")
    with pytest.raises(StaleReferenceError, match="no stored reference log-probs for pair ghost"):
        load_reference_logps(cfg, [ghost], encoded[:1], cfg.stage_dir("sft") / "model")


def replace_prompt_id(pair, prompt_id):
    from dataclasses import replace

    return replace(pair, prompt_id=prompt_id)


def test_ref_logps_shard_killed_mid_way_resumes_to_the_same_file(iteration, tmp_path, monkeypatch):
    from dataclasses import replace

    from srlm_hpc.stages import ref_logps

    cfg, _ = iteration
    small = replace(cfg, ref_logps=replace(cfg.ref_logps, chunk_size=1, micro_batch_size=1))
    n_pairs = len(list(ref_logps.shard_pairs(small, 0)))
    if n_pairs < 2:
        pytest.skip(f"the tiny pipeline kept {n_pairs} pair(s): nothing to cut mid-way")
    monkeypatch.setattr(ref_logps, "shard_output", lambda cfg, stage, shard: tmp_path / "whole.jsonl")
    whole = ref_logps.run_shard(small, 0)
    monkeypatch.setattr(ref_logps, "shard_output", lambda cfg, stage, shard: tmp_path / "cut.jsonl")
    real, calls = ref_logps.score_pairs, []

    def dies_on_second_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("preempted")
        return real(*a, **k)

    monkeypatch.setattr(ref_logps, "score_pairs", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        ref_logps.run_shard(small, 0)
    assert [p.name for p in tmp_path.glob("cut.*part-*")] == [f"cut.{parts_key(small.ref_logps.chunk_size)}.part-00000.jsonl"]
    monkeypatch.setattr(ref_logps, "score_pairs", real)
    resumed = ref_logps.run_shard(small, 0)
    assert (tmp_path / "cut.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert resumed.records == whole.records == n_pairs


def test_rerun_skips_every_finished_shard(iteration, capsys):
    cfg, args = iteration
    before = {p: p.stat().st_mtime_ns for p in cfg.work_dir.rglob("shard-*.jsonl")}
    assert submit(["stage=all", "iter=1", "executor=local", *args]) == 0
    assert {p: p.stat().st_mtime_ns for p in cfg.work_dir.rglob("shard-*.jsonl")} == before
    assert "0 to run" in capsys.readouterr().out


def test_eval_metrics_and_report(iteration, tmp_path):
    from srlm_hpc.report import main as report

    cfg, args = iteration
    metrics = read_json(cfg.stage_dir("eval") / "metrics.json")
    assert 0.0 <= metrics["reward_modeling"]["parse_rate"] <= 1.0
    assert report([a for a in args if a.startswith("work_dir=")]) == 0
    html = (cfg.work_dir / "report" / "index.html").read_text()
    assert "<img" in html and "pairwise" in html.lower()


def test_dpo_and_sft_curves_mirror_train_log_and_the_iteration_has_judge_curves(iteration):
    """What `tensorboard --logdir <work_dir>` shows after an iteration: the DPO loss series that
    train_log.jsonl holds, step for step (read with tensorboard's own reader)."""
    import json

    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cfg, _ = iteration
    for stage in ("sft", "dpo"):
        log = [json.loads(x) for x in (cfg.stage_dir(stage) / "train_log.jsonl").read_text().splitlines()]
        acc = ea.EventAccumulator(str(cfg.stage_dir(stage) / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
        assert got == [(e["step"], pytest.approx(e["loss"], rel=1e-6, abs=1e-7)) for e in log], stage
        assert "train/tokens_per_s" in acc.Tags()["scalars"], stage
    acc = ea.EventAccumulator(str(cfg.work_dir / "tensorboard" / "iter1"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("judge/parse_rate")] == [1]
