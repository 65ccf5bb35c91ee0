"""The chat template every stage renders prompts with (run.chat_template).

The paper's M0 is a base model (Llama 2 70B), which has no chat template; the embedded
SmolLM2-135M-Instruct has one. `auto` takes the model's own and falls back to the plain
template (`chat_templates/plain.jinja`); `plain` uses the plain one for any model; a path uses
that Jinja file. The sft stage loads M0's tokenizer with it and saves it with M1, so every
later model, and with it generation, judging, SFT and DPO, uses the same template.

    python -m srlm_hpc.submit stage=all iter=1 model=/models/llama-2-70b chat_template=plain

A template must add something for `add_generation_prompt`: the engines generate after it, and
tokenize.encode_prompt ends a training prompt with it. A path that does not exist, a template
that does not parse, or one without a generation prompt is refused when the config is read,
so at plan time, before any job is queued.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

AUTO, PLAIN = "auto", "plain"


class ChatTemplateError(ValueError):
    """A chat template that cannot be used; the message names it and the fix."""


def plain_template() -> str:
    return resources.files("srlm_hpc").joinpath("chat_templates/plain.jinja").read_text()


def template_text(setting: str, own: str | None) -> str:
    """The template `setting` stands for, given the model's own (None when it has none)."""
    if setting == AUTO:
        return own if isinstance(own, str) and own else plain_template()
    if setting == PLAIN:
        return plain_template()
    path = Path(setting).expanduser()
    if not path.is_file():
        raise ChatTemplateError(f"chat_template={setting}: no such file; expected auto, plain, or the path of a "
                                f"Jinja chat template file")
    return path.read_text()


def check_template(text: str, where: str) -> None:
    """Raise ChatTemplateError unless `text` renders a one-turn chat and adds a generation prompt.
    Rendered as transformers renders it (a sandboxed Jinja environment with trim_blocks and
    lstrip_blocks), with stand-in special tokens."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    messages = [{"role": "user", "content": "Name a colour."}]
    try:
        template = env.from_string(text)
        rendered = [template.render(messages=messages, add_generation_prompt=g, bos_token="<s>", eos_token="</s>")
                    for g in (False, True)]
    except TemplateError as e:
        raise ChatTemplateError(f"{where}: the chat template does not render a one-turn chat ({e})") from e
    if rendered[0] == rendered[1]:
        raise ChatTemplateError(f"{where}: the chat template adds nothing for add_generation_prompt, so generation "
                                f"would continue the user's turn; use a template with a generation prompt "
                                f"(chat_template=plain is one)")


def setting_problem(setting: str) -> str | None:
    """Why run.chat_template=`setting` cannot be used, or None (auto is checked when a model loads)."""
    if setting == AUTO:
        return None
    try:
        check_template(template_text(setting, None), f"chat_template={setting}")
    except ChatTemplateError as e:
        return str(e)
    return None
