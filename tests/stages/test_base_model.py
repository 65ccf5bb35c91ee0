"""A base model (no chat template, as the paper's Llama 2 70B): the plain template round-trips
through SFT (saved with M1), generation and judging (the engine on M1) and DPO's encoding and
loss, on the tiny random Llama with SmolLM2's tokenizer stripped of its template."""

from __future__ import annotations

from srlm_hpc.chat_template import plain_template
from srlm_hpc.config import build_config
from tests.conftest import oasst_rows, write_jsonl_rows


def test_the_plain_template_goes_from_sft_to_generation_judging_and_dpo(tiny_base, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from srlm_hpc.engines import SamplingConfig, make_engine
    from srlm_hpc.models import load_model, load_tokenizer
    from srlm_hpc.schema import PairRecord, Response, ResponseSet
    from srlm_hpc.stages import dpo, sft
    from srlm_hpc.stages.judge import judge_sets
    from srlm_hpc.training.dpo_loss import dpo_loss, response_logps

    ift = write_jsonl_rows(tmp_path / "ift.jsonl", oasst_rows([("Name a colour.", "Red."), ("Say hi.", "Hi!"),
                                                               ("Count to two.", "One, two."), ("Name a pet.", "A cat.")]))
    cfg = build_config({"work_dir": str(tmp_path / "run"), "model": str(tiny_base), "sft.ift_path": str(ift),
                        "sft.use_eft": "false", "sft.batch_size": "4", "sft.micro_batch_size": "4",
                        "sft.max_len": "128", "sft.dropout": "0", "threads": "1"})
    assert AutoTokenizer.from_pretrained(tiny_base).chat_template is None
    sft.run_shard(cfg, 0)
    m1 = cfg.stage_dir("sft") / "model"
    assert AutoTokenizer.from_pretrained(m1).chat_template == plain_template()  # saved with M1

    engine = make_engine("hf", str(m1), "cpu", batch_size=4)
    try:
        chat = [{"role": "user", "content": "Name a colour."}]
        assert engine.tokenizer.decode(engine.prompt_token_ids([chat])[0]).endswith("User: Name a colour.\n\nAssistant:\n")
        answers = engine.generate([chat], SamplingConfig(n=2, max_tokens=6, seed=3))[0]
        sets = [ResponseSet("p0", "Name a colour.", [Response(f"p0-r{j}", a.text, a.n_tokens, a.finish_reason)
                                                     for j, a in enumerate(answers)])]
        judged = judge_sets(engine, sets, SamplingConfig(n=2, max_tokens=6, seed=4))
        assert all(len(r.judge_texts) == 2 and len(r.judge_finish_reasons) == 2 for r in judged[0].responses)
    finally:
        engine.close()

    tok = load_tokenizer(m1)
    pair = PairRecord(prompt="Name a colour.", chosen="Red.", rejected=answers[0].text, prompt_id="p0",
                      chosen_id="p0-r0", rejected_id="p0-r1", chosen_score=4.0, rejected_score=1.0,
                      chosen_judge_scores=[4.0], rejected_judge_scores=[1.0], chosen_tokens=2,
                      rejected_tokens=answers[0].n_tokens, iter=1, rejected_finish_reason=answers[0].finish_reason)
    (c_ids, c_n), (r_ids, r_n) = dpo.encode_pairs(tok, [pair], cfg.dpo.max_len)[0]
    assert c_ids[:c_n] == r_ids[:r_n] and tok.decode(c_ids[:c_n]).endswith("User: Name a colour.\n\nAssistant:\n")
    assert tok.decode(c_ids[c_n:]) == "Red." + tok.eos_token  # finished: ends with the end token
    model = load_model(m1)
    lp = response_logps(model, dpo.pair_batch([((c_ids, c_n), (r_ids, r_n))], [0], tok.pad_token_id, "cpu"), "sum")
    losses, _, _ = dpo_loss(lp[:1], lp[1:], lp[:1].detach(), lp[1:].detach(), 0.1)
    assert torch.isfinite(losses).all() and abs(losses.item() - 0.6931) < 1e-3  # policy = reference: log 2
