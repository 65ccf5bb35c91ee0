"""The validation prompts of DPO checkpoint selection (dpo.select=judge, stages/dpo_select.py).

A JSONL file of {"prompt_id", "prompt"} lines (dpo.select_prompts), else the shipped
srlm_hpc/seed/validation.jsonl: 24 prompts written for the project, none of them an eval test
prompt or an IFT/EFT prompt (the paper used 253). Below the config and the stages: the config
checks the file when it is read (so a bad one is refused before anything runs, exit 2), the
dpo stage reads the prompts from it. json and importlib only: the config must stay cheap.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

SEED_FILE = "validation.jsonl"  # srlm_hpc/seed/: written for the project, never trained on


class PromptFileError(ValueError):
    """A validation prompt file that cannot be used; the message names the file, line and fix."""


def source(setting: str) -> str:
    return setting or f"seed {SEED_FILE} (written for the project)"


def read_prompt_file(path: Path, name: str) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and bool(rec["prompt"].strip())
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise PromptFileError(f"dpo.select_prompts={name} line {n}: expected a JSON object with a non-empty "
                                  f"\"prompt\" string (and a \"prompt_id\"); fix or remove the line")
        out.append({"prompt_id": str(rec.get("prompt_id", f"line-{n}")), "prompt": rec["prompt"]})
    return out


def load(setting: str, cap: int) -> list[dict]:
    """{"prompt_id", "prompt"} of the file `setting` names ("" = the shipped one), the first `cap`."""
    if setting:
        path = Path(setting).expanduser()
        if not path.is_file():
            raise PromptFileError(f"dpo.select_prompts={setting}: no such file; expected a JSONL file of "
                                  f"{{\"prompt_id\", \"prompt\"}} lines, or \"\" for the shipped validation prompts")
        return read_prompt_file(path, setting)[:cap]
    with resources.as_file(resources.files("srlm_hpc.seed").joinpath(SEED_FILE)) as p:
        return read_prompt_file(p, f"seed {SEED_FILE}")[:cap]


def setting_problem(dpo) -> str | None:
    """Why the dpo section's selection settings cannot run, or None (dpo.select=last reads nothing).
    The overlap with eval's test prompts needs the eval data: the dpo stage's plan checks it."""
    if dpo.select != "judge":
        return None
    if dpo.backend != "torch":
        return (f"dpo.select=judge: expected dpo.backend=torch (candidates are saved from the torch loop; "
                f"dpo.backend={dpo.backend} keeps the weights sharded across ranks); or dpo.select=last")
    try:
        prompts = load(dpo.select_prompts, dpo.select_max_prompts)
    except (PromptFileError, OSError, UnicodeDecodeError) as e:
        return str(e) if isinstance(e, PromptFileError) else f"dpo.select_prompts={dpo.select_prompts}: {e}"
    if not prompts:
        return (f"dpo.select=judge: {source(dpo.select_prompts)} holds no validation prompts; expected at least "
                f"one {{\"prompt_id\", \"prompt\"}} line (the paper used 253), or dpo.select=last")
    return None
