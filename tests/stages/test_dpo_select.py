"""DPO checkpoint selection (dpo.select=judge, srlm_hpc/stages/dpo_select.py).

The candidates and M_k are real tiny Llamas (SmolLM2's tokenizer) whose answers are forced:
every layer's output projections are zero and every embedding is the same vector, so the
last hidden state is constant and lm_head makes one word ("blue", "red", "grey") certain.
They answer through the real hf engine. The judge is the one fake, behind the engine
interface (srlm_hpc/engines/base.Engine): a real tiny model's preferences cannot be set by a
test, so FakeJudge reads the two responses in eval's compare prompt and prefers the word the
test ranks higher (PREFERENCE), answering "Winner: A|B|tie" as eval's parser expects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from srlm_hpc.cli import EXIT_USAGE, failure_exit
from srlm_hpc.config import ConfigError, build_config
from srlm_hpc.engines import Completion
from srlm_hpc.files import read_json
from srlm_hpc.models import model_path
from srlm_hpc.schema import PairRecord
from srlm_hpc.stages import dpo, dpo_select

PREFERENCE = {"blue": 3, "grey": 2, "red": 1}  # the judge's taste, set here: blue > grey (M_k) > red
N_PROMPTS = 5


def forced_llama(out: Path, tokenizer_dir: Path, word: str) -> Path:
    """A 2-layer Llama that answers `word word word ...` whatever it is asked (see the docstring)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(" " + word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{word!r} is not one token"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0  # every token the same: the final norm gives 8 on dim 0
        model.lm_head.weight.zero_()
        model.lm_head.weight[ids[0], 0] = 10.0  # logit 80 for `word`, 0 for every other token
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


class FakeJudge:
    """eval's compare prompt in, a verdict by PREFERENCE out; counts what it is asked."""

    name = "fake-judge"

    def __init__(self):
        self.calls, self.conversations = 0, 0

    def generate(self, conversations, params):
        self.calls += 1
        self.conversations += len(conversations)
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            a = re.search(r"<response_a>(.*?)</response_a>", text, re.S).group(1).split()
            b = re.search(r"<response_b>(.*?)</response_b>", text, re.S).group(1).split()
            pa, pb = PREFERENCE.get(a[0] if a else "", 0), PREFERENCE.get(b[0] if b else "", 0)
            verdict = "A" if pa > pb else "B" if pb > pa else "tie"
            out.append([Completion(f"A fair comparison.\nWinner: {verdict}", 8, "stop")] * params.n)
        return out

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        pass


@pytest.fixture(scope="module")
def words(tmp_path_factory, smollm_tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("forced")
    return {w: forced_llama(root / w, smollm_tokenizer_dir, w) for w in PREFERENCE}


def validation_lines(n: int = N_PROMPTS) -> str:
    return "".join(json.dumps({"prompt_id": f"v{i}", "prompt": f"Name a colour, please ({i})."}) + "\n"
                   for i in range(n))


def make_cfg(work: Path, judge: Path, prompts_text: str | None = None, **dpo_keys) -> object:
    return build_config(cfg_keys(work, judge, prompts_text, **dpo_keys))


def cfg_keys(work: Path, judge: Path, prompts_text: str | None = None, **dpo_keys) -> dict:
    prompts = work / "validation.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text(validation_lines() if prompts_text is None else prompts_text)
    return {"work_dir": str(work), "model": str(judge), "engine": "hf", "device": "cpu", "seed": 5, "iter": 1,
            "threads": 1, "eval.judge_model": str(judge), "eval.max_tokens": 3, "eval.batch_size": 2,
            "eval.compare_max_tokens": 8, "dpo.select": "judge", "dpo.select_prompts": str(prompts),
            **{f"dpo.{k}": v for k, v in dpo_keys.items()}}


def place(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def setup_run(work: Path, words: dict, judge: Path, candidate_words: list[str]):
    """M1 answers "grey"; candidate i (step i + 1) answers candidate_words[i]."""
    cfg = make_cfg(work, judge, eval_every=1)
    place(words["grey"], model_path(cfg, 1))
    cands = [(s + 1, place(words[w], dpo_select.candidate_dir(cfg, s + 1))) for s, w in enumerate(candidate_words)]
    return cfg, cands


@pytest.fixture
def engines(monkeypatch, tiny_llama):
    """The real engine for every model but the judge (tiny_llama's folder), and generate calls per model."""
    real_engine_for = dpo_select.engine_for
    judge, calls = FakeJudge(), {}

    def engine_for(cfg, path, batch_size):
        if Path(path) == Path(tiny_llama):
            return judge
        eng = real_engine_for(cfg, path, batch_size)

        class Counted:
            def generate(self, conversations, params):
                calls[Path(path).name] = calls.get(Path(path).name, 0) + 1
                return eng.generate(conversations, params)
        return Counted()

    monkeypatch.setattr(dpo_select, "engine_for", engine_for)
    return judge, calls


def test_the_judges_favourite_wins_and_equal_scores_go_to_the_earlier_step(tmp_path, words, tiny_llama, engines,
                                                                             capsys):
    judge, calls = engines
    cfg, cands = setup_run(tmp_path, words, tiny_llama, ["red", "blue", "grey", "blue"])
    result = dpo_select.select_checkpoint(cfg, cands)
    rows = {r["step"]: (r["win"], r["tie"], r["loss"], r["n"]) for r in result["candidates"]}
    n = N_PROMPTS
    # red < grey (M1) < blue; grey against grey is a tie in both orders
    assert rows == {1: (0, 0, n, n), 2: (n, 0, 0, n), 3: (0, n, 0, n), 4: (n, 0, 0, n)}
    assert result["winner_step"] == 2  # steps 2 and 4 both score 1.0: the earlier one
    assert read_json(cfg.stage_dir("dpo") / "select.json") == result
    assert judge.conversations == 4 * n * 2  # every candidate, every prompt, both orders

    # the winner's folder becomes the model the next iteration loads; the candidates go
    want = (words["blue"] / "model.safetensors").read_bytes()
    model = dpo_select.selected_model(cfg, 4)
    assert model == model_path(cfg, 2) and (model / "model.safetensors").read_bytes() == want
    assert not dpo_select.candidates_dir(cfg).exists()
    assert "checkpoint of step 2 of 4 kept as M2" in capsys.readouterr().out


def test_eval_every_beyond_the_run_keeps_the_final_weights_unjudged(tmp_path, words, tiny_llama, engines):
    judge, calls = engines
    cfg = make_cfg(tmp_path, tiny_llama, eval_every=10)
    place(words["grey"], model_path(cfg, 1))
    assert dpo_select.candidate_steps(4, 10) == [4]
    place(words["red"], dpo_select.candidate_dir(cfg, 4))
    dpo_select.selected_model(cfg, 4)
    result = read_json(cfg.stage_dir("dpo") / "select.json")
    assert result["winner_step"] == 4 and result["judged"] is False
    assert judge.calls == 0 and calls == {}  # nothing to choose between: no answer, no verdict


def test_a_kill_between_two_candidates_resumes_without_judging_any_twice(tmp_path, words, tiny_llama, engines,
                                                                         monkeypatch):
    judge, calls = engines
    ref_cfg, ref_cands = setup_run(tmp_path / "uninterrupted", words, tiny_llama, ["red", "blue"])
    want = dpo_select.select_checkpoint(ref_cfg, ref_cands)
    ref_conversations = judge.conversations
    judge.calls = judge.conversations = 0
    calls.clear()

    cfg, cands = setup_run(tmp_path / "killed", words, tiny_llama, ["red", "blue"])
    real_verdicts = dpo_select.verdicts

    def killed_after_the_first(*args, **kw):
        recs = real_verdicts(*args, **kw)
        raise KeyboardInterrupt("killed after the first candidate's verdicts were written")

    monkeypatch.setattr(dpo_select, "verdicts", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        dpo_select.select_checkpoint(cfg, cands)
    assert not (cfg.stage_dir("dpo") / "select.json").exists()
    first = next(cfg.stage_dir("dpo").glob("select/*/step-00000001.verdicts.jsonl"))
    saved = (first.read_bytes(), first.stat().st_mtime_ns)
    first_conversations = judge.conversations
    assert first_conversations == N_PROMPTS * 2
    answer_calls = dict(calls)

    monkeypatch.setattr(dpo_select, "verdicts", real_verdicts)
    got = dpo_select.select_checkpoint(cfg, cands)
    assert got == want  # select.json equals the uninterrupted run's
    assert (first.read_bytes(), first.stat().st_mtime_ns) == saved  # reused, not rewritten
    assert judge.conversations == ref_conversations  # the first judged once, the second once
    assert calls == answer_calls  # M1's and both candidates' answers were read back, not generated again
    assert not list(first.parent.glob("*.part-*"))


# ---- checked before anything runs -------------------------------------------------------------------
def config_error(work: Path, judge: Path, prompts_text: str | None = None, **dpo_keys) -> str:
    with pytest.raises(ConfigError) as e:
        make_cfg(work, judge, prompts_text, **dpo_keys)
    assert failure_exit(e.value) == EXIT_USAGE  # exit 2 under the CLI contract, no traceback
    return str(e.value)


def test_zero_validation_prompts_are_a_usage_error_before_anything_runs(tmp_path, tiny_llama, capsys):
    from srlm_hpc.submit import main as submit

    msg = config_error(tmp_path, tiny_llama, "\n")
    assert "dpo.select=judge:" in msg and "holds no validation prompts" in msg and "dpo.select=last" in msg
    args = [f"{k}={v}" for k, v in cfg_keys(tmp_path, tiny_llama, "").items()]
    assert submit(["stage=dpo", "executor=local", *args]) == 2
    err = capsys.readouterr().err
    assert "holds no validation prompts" in err and "Traceback" not in err
    assert make_cfg(tmp_path, tiny_llama, "", select="last").dpo.select == "last"  # select=last reads nothing


def test_bad_validation_files_and_backends_name_the_fix(tmp_path, tiny_llama):
    assert "no such file" in config_error(tmp_path, tiny_llama, select_prompts=str(tmp_path / "nope"))
    assert f"line {N_PROMPTS + 1}:" in config_error(tmp_path, tiny_llama, validation_lines() + '{"prompt_id": "x"}\n')
    assert "dpo.backend=torch" in config_error(tmp_path, tiny_llama, backend="deepspeed")
    assert "dpo.eval_every=0: expected a value >= 1" in config_error(tmp_path, tiny_llama, eval_every=0)


def test_validation_prompts_that_are_eval_test_prompts_are_refused_when_dpo_is_planned(tmp_path, tiny_llama):
    from srlm_hpc.stages.eval import heldout

    test_prompt = heldout(make_cfg(tmp_path, tiny_llama))[1][0]["prompt"]
    leak = json.dumps({"prompt_id": "leak", "prompt": "  " + test_prompt.upper() + " "}) + "\n"
    cfg = make_cfg(tmp_path, tiny_llama, validation_lines() + leak)
    with pytest.raises(ConfigError) as e:
        dpo.plan(cfg)
    assert failure_exit(e.value) == EXIT_USAGE and "\n" not in str(e.value)
    assert "1 validation prompt(s)" in str(e.value) and "leak" in str(e.value)
    assert "held-out test prompts" in str(e.value)
    assert dpo.plan(make_cfg(tmp_path, tiny_llama, validation_lines() + leak, select="last"))[0] == 1


def test_the_shipped_validation_prompts_are_disjoint_from_test_and_training_prompts(tmp_path, tiny_llama):
    from srlm_hpc.data.oasst import load_seed
    from srlm_hpc.stages.eval import heldout

    cfg = make_cfg(tmp_path, tiny_llama, select_prompts="")
    assert dpo_select.plan_problem(cfg) is None
    mine = {dpo_select._same_text(p["prompt"]) for p in dpo_select.validation_prompts(cfg)}
    assert len(mine) == 24
    others = [t["prompt"] for t in heldout(cfg)[0]] + [r["prompt"] for s in ("ift", "eft") for r in load_seed(s)]
    assert not mine & {dpo_select._same_text(p) for p in others}


# ---- the dpo stage: candidates saved in training, select=last unchanged ---------------------------------
def tiny_pairs(n: int) -> list[PairRecord]:
    return [PairRecord(prompt=f"Say something about the number {i}.", chosen=f"The number {i} is fine.",
                       rejected="No.", prompt_id=f"p{i}", chosen_id=f"p{i}-a", rejected_id=f"p{i}-b",
                       chosen_score=4.0, rejected_score=1.0, chosen_judge_scores=[4.0], rejected_judge_scores=[1.0],
                       chosen_tokens=6, rejected_tokens=1, iter=1) for i in range(n)]


def run_dpo(work: Path, tiny_llama: Path, monkeypatch, **dpo_keys):
    """The dpo stage's run_shard on 6 pairs (3 steps of 2), pairs handed in directly (the pairs
    stage's files are tested in test_pairs/test_merge), the reference computed inline."""
    keys = {"lr": 1e-3, "batch_size": 2, "micro_batch_size": 2, "reference_logps": "inline", "max_len": 64,
            **dpo_keys}
    cfg = make_cfg(work, tiny_llama, **keys)
    if not model_path(cfg, 1).exists():  # a rerun finds it
        place(tiny_llama, model_path(cfg, 1))
    monkeypatch.setattr(dpo, "iter_pairs", lambda cfg: iter(tiny_pairs(6)))
    info = dpo.run_shard(cfg, 0)
    return cfg, info


def test_select_last_writes_what_it_did_and_judge_trains_the_same_weights(tmp_path, tiny_llama, monkeypatch,
                                                                          engines):
    from srlm_hpc.training import loop

    judge, _ = engines
    last_cfg, last = run_dpo(tmp_path / "last", tiny_llama, monkeypatch, select="last")
    final = (model_path(last_cfg, 2) / "model.safetensors").read_bytes()
    assert Path(last.path) == model_path(last_cfg, 2) / "model.safetensors"
    assert not {"candidates", "select", "select.json"} & {p.name for p in last_cfg.stage_dir("dpo").iterdir()}

    # select=judge, a candidate after every step, the run killed after step 2's checkpoint and
    # rerun: saving candidates changes no update and the kill loses none (the final candidate,
    # trained by the resumed run, equals select=last's model). The random model's answers hold
    # none of the judge's words, so every comparison is a tie and the earliest candidate is kept.
    real_save = loop.save_checkpoint

    def killed_after_step_2(ckpt_dir, model, optimizer, step, *a, **kw):
        real_save(ckpt_dir, model, optimizer, step, *a, **kw)
        if step == 2:
            raise KeyboardInterrupt("killed after the checkpoint of step 2")

    monkeypatch.setattr(loop, "save_checkpoint", killed_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_dpo(tmp_path / "judge", tiny_llama, monkeypatch, select="judge", eval_every=1)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    cands = dpo_select.candidates_dir(make_cfg(tmp_path / "judge", tiny_llama))
    assert sorted(p.name for p in cands.iterdir()) == ["step-00000001", "step-00000002"]

    seen = {}
    real_selected = dpo_select.selected_model

    def look(cfg, total):
        seen.update({s: (dpo_select.candidate_dir(cfg, s) / "model.safetensors").read_bytes() for s in (1, 2, 3)})
        return real_selected(cfg, total)

    monkeypatch.setattr(dpo_select, "selected_model", look)
    judge_cfg, got = run_dpo(tmp_path / "judge", tiny_llama, monkeypatch, select="judge", eval_every=1)
    assert seen[3] == final and seen[1] != final
    result = read_json(judge_cfg.stage_dir("dpo") / "select.json")
    assert [(r["step"], r["tie"]) for r in result["candidates"]] == [(1, N_PROMPTS), (2, N_PROMPTS), (3, N_PROMPTS)]
    assert result["winner_step"] == 1
    assert (model_path(judge_cfg, 2) / "model.safetensors").read_bytes() == seen[1]
    assert Path(got.path) == model_path(judge_cfg, 2) / "model.safetensors"
    assert not dpo_select.candidates_dir(judge_cfg).exists()


def test_a_kill_between_select_json_and_the_rename_finishes_from_the_saved_verdicts(tmp_path, words, tiny_llama,
                                                                                   engines, monkeypatch):
    judge, calls = engines
    cfg, _ = setup_run(tmp_path, words, tiny_llama, ["red", "blue"])
    real_replace = dpo_select.replace_dir

    def killed(*a):
        raise KeyboardInterrupt("killed before the winner was renamed")

    monkeypatch.setattr(dpo_select, "replace_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        dpo_select.selected_model(cfg, 2)
    done = (judge.calls, dict(calls))
    monkeypatch.setattr(dpo_select, "replace_dir", real_replace)
    model = dpo_select.selected_model(cfg, 2)
    assert (judge.calls, calls) == done  # every answer and verdict read back
    assert (model / "model.safetensors").read_bytes() == (words["blue"] / "model.safetensors").read_bytes()
    assert dpo_select.selected_model(cfg, 2) == model  # and once more: nothing left to do
