"""run.chat_template: the plain template for a base model without one, the model's own, or a file;
bad templates refused when the config is read. On the tiny model with SmolLM2's real tokenizer,
with and without its chat template."""

from __future__ import annotations

import pytest

from srlm_hpc.chat_template import plain_template
from srlm_hpc.config import ConfigError, build_config
from srlm_hpc.models import load_tokenizer
from srlm_hpc.training.tokenize import encode_prompt, prompt_parts

CHAT = [{"role": "user", "content": "Name a colour."}]


def test_a_model_without_a_template_gets_the_plain_one(tiny_base):
    tok = load_tokenizer(tiny_base)
    assert tok.chat_template == plain_template()
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == (tok.bos_token or "") + "User: Name a colour.\n\nAssistant:\n"
    answered = tok.apply_chat_template(CHAT + [{"role": "assistant", "content": "Red."}], tokenize=False)
    assert answered.endswith("Assistant:\nRed." + tok.eos_token + "\n\n")  # SFT's targets end with the end token
    ids, head, tail = prompt_parts(tok, CHAT)
    assert tok.decode(ids[head:len(ids) - tail]).strip() == "Name a colour." and tok.decode(ids[len(ids) - tail:]) == "\n\nAssistant:\n"


def test_auto_keeps_a_models_own_template_and_plain_replaces_it(tiny_llama):
    own = load_tokenizer(tiny_llama)
    assert "<|im_start|>assistant" in own.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    plain = load_tokenizer(tiny_llama, "plain")
    assert plain.chat_template == plain_template()


def test_a_template_file_is_used(tiny_base, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    tok = load_tokenizer(tiny_base, str(path))
    assert tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == "Q: Name a colour.\nA:"
    assert build_config({"chat_template": str(path)}).run.chat_template == str(path)


def test_bad_templates_are_refused_when_the_config_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"chat_template=.*nope\.jinja: no such file; expected auto, plain"):
        build_config({"chat_template": str(tmp_path / "nope.jinja")})
    no_prompt = tmp_path / "no_prompt.jinja"
    no_prompt.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(ConfigError, match="adds nothing for add_generation_prompt"):
        build_config({"chat_template": str(no_prompt)})
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(ConfigError, match="does not render a one-turn chat"):
        build_config({"chat_template": str(broken)})


def test_a_models_own_template_without_a_generation_prompt_is_refused_when_loaded(tiny_base, tmp_path):
    import shutil

    from srlm_hpc.chat_template import ChatTemplateError

    model = tmp_path / "m"
    shutil.copytree(tiny_base, model)
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="adds nothing for add_generation_prompt"):
        load_tokenizer(model)
    assert load_tokenizer(model, "plain").chat_template == plain_template()  # the fix the message names


def test_engine_and_training_condition_on_the_same_plain_prompt(tiny_base):
    from srlm_hpc.engines import SamplingConfig, make_engine

    engine = make_engine("hf", str(tiny_base), "cpu", batch_size=2)
    try:
        tok = load_tokenizer(tiny_base)
        assert engine.prompt_token_ids([CHAT]) == [encode_prompt(tok, CHAT)]
        out = engine.generate([CHAT], SamplingConfig(n=2, max_tokens=4, seed=1))
        assert len(out[0]) == 2 and all(c.finish_reason in ("stop", "length") for c in out[0])
    finally:
        engine.close()
