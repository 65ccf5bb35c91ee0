"""Stage `eft`: the baseline judges ranked replies (tiny random Llama), then `finalize` keeps the
prompts whose scores agree with the human ranking, rebalances, and writes SFT-format data."""

from __future__ import annotations

import dataclasses

from srlm_hpc.config import build_config
from srlm_hpc.data.oasst import load_seed
from srlm_hpc.files import read_json, read_jsonl, write_jsonl
from srlm_hpc.manifest import StageManifest
from srlm_hpc.stages import eft
from srlm_hpc.templates import judge_prompt


def make_cfg(work, tiny_llama, **kw):
    cfg = build_config({"work_dir": str(work), "model": str(tiny_llama), "engine": "hf", "device": "cpu",
                        "judge.max_tokens": 6})
    return dataclasses.replace(cfg, eft=dataclasses.replace(cfg.eft, model=str(tiny_llama), **kw))


def test_shard_judges_every_ranked_reply_once(tmp_path, tiny_llama):
    cfg = make_cfg(tmp_path / "run", tiny_llama, max_prompts=2, shard_size=2, batch_size=4)
    assert eft.plan(cfg)[0] == 1
    info = eft.run_shard(cfg, 0)
    recs = read_jsonl(info.path)
    assert len(recs) == 2
    for rec in recs:
        assert len(rec["replies"]) >= 2
        # judge.max_tokens=6: a random tiny model never ends a judgement that soon
        assert {x["finish_reason"] for x in rec["replies"]} == {"length"}
        assert all(isinstance(x["judgement"], str) and set(x) == {"id", "text", "rank", "judgement", "finish_reason", "score"}
                   for x in rec["replies"])


def test_finalize_filters_rebalances_and_writes_sft_format(tmp_path, tiny_llama):
    cfg = make_cfg(tmp_path / "run", tiny_llama, max_prompts=4, shard_size=4)

    def rec(i, scores):
        return {"tree_id": f"t{i}", "prompt_id": f"t{i}", "prompt": f"Question {i}?", "replies": [
            {"id": f"t{i}-{r}", "text": f"reply {r}", "rank": r, "judgement": f"Fine.\nScore: {s}", "score": s}
            for r, s in enumerate(scores)]}

    # t0, t1 agree (4 appears 2x, 2 once, 5 once, 3 once -> 4 thinned to 1); t2 ties; t3 is reversed
    records = [rec(0, [4, 2]), rec(1, [5, 4, 3]), rec(2, [3, 3]), rec(3, [1, 4])]
    man = StageManifest(cfg.manifest_root, 1, "eft")
    man.write_plan(*eft.plan(cfg))
    man.mark_running(0)
    man.mark_done(0, write_jsonl(cfg.stage_dir("eft") / "shard-00000.jsonl", records))
    stats = eft.finalize(cfg)
    assert (stats["prompts"], stats["agree"], stats["examples_agreeing"], stats["examples"]) == (4, 2, 5, 4)
    assert stats["scores_before"] == {"2": 1, "3": 1, "4": 2, "5": 1} and stats["scores_after"]["4"] == 1
    assert read_json(cfg.stage_dir("eft") / "stats.json") == stats
    pairs = load_seed("eft", stats["sft_eft_path"])
    assert len(pairs) == 4 and all(p["response"].endswith(("Score: 2", "Score: 3", "Score: 4", "Score: 5")) for p in pairs)
    assert judge_prompt("Question 1?", "reply 0") in {p["prompt"] for p in pairs}


def test_finalize_keeps_a_cut_judgement_out_of_the_training_targets(tmp_path, tiny_llama):
    cfg = make_cfg(tmp_path / "run", tiny_llama, max_prompts=2, shard_size=2)
    replies = [{"id": "t0-0", "text": "best", "rank": 0, "judgement": "Good.\nScore: 5", "finish_reason": "stop",
                "score": 5},
               {"id": "t0-1", "text": "middle", "rank": 1, "judgement": "Score: 3 because the answer is",
                "finish_reason": "length", "score": 3},
               {"id": "t0-2", "text": "worst", "rank": 2, "judgement": "Poor.\nScore: 1", "score": 1}]  # an older shard
    man = StageManifest(cfg.manifest_root, 1, "eft")
    man.write_plan(*eft.plan(cfg))
    man.mark_running(0)
    man.mark_done(0, write_jsonl(cfg.stage_dir("eft") / "shard-00000.jsonl",
                                 [{"tree_id": "t0", "prompt_id": "t0", "prompt": "Q?", "replies": replies}]))
    stats = eft.finalize(cfg)
    # the cut reply's score still decides the prompt's agreement (5 > 3 > 1), but it is no target
    assert (stats["agree"], stats["examples_cut"], stats["examples_agreeing"]) == (1, 1, 2)
    targets = {p["response"] for p in load_seed("eft", stats["sft_eft_path"])}
    assert targets == {"Good.\nScore: 5", "Poor.\nScore: 1"}
