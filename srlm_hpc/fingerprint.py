"""Which config keys shape a stage's outputs, and the fingerprint of their values.

A shard's output, its finished chunks and a training checkpoint belong to the values of
the keys that shape them (this table) plus the upstream outputs they read (recorded per
shard in the manifest). The first plan of a stage records these values in its plan.json;
a rerun that changes one is refused, naming the key with its old and new value, since
finished shards, chunks and checkpoints would mix two configs. Launch-only keys (the
Slurm section, paths, executor, threads, log settings, checkpoint cadence, memory knobs)
may change between attempts freely.

To start a stage afresh with new values: remove its manifest folder and its output folder
(`rm -r <manifest_root>/iter<k>/<stage> <work_dir>/iter<k>/<stage>`, both named in the
error), then rerun; the stages after it rerun where their inputs changed.
"""

from __future__ import annotations

import hashlib
import json

from .config import Config, to_dict

# Read by every stage: the model, the seed, the chat template, the engine and device.
COMMON = ("run.model", "run.seed", "run.iter", "run.chat_template", "run.engine", "run.device")

# Each stage's own section, and the keys of other sections it reads.
STAGE_KEYS = {
    "sft": ("sft", "deepspeed"),
    "prompts": ("prompts", "sft.ift_path", "vllm"),
    "responses": ("responses", "prompts.n_prompts", "vllm"),
    "judge": ("judge", "prompts.n_prompts", "responses.n", "vllm"),
    "pairs": ("pairs", "judge.shard_size", "prompts.n_prompts"),
    "ref_logps": ("ref_logps", "prompts.n_prompts", "dpo.reference", "dpo.max_len", "dpo.share_prompt"),
    "dpo": ("dpo", "deepspeed"),
    "eval": ("eval", "judge", "responses", "vllm"),
    "eft": ("eft", "eval", "judge", "vllm"),
}

# Keys inside those sections that do not change a byte of the outputs.
LAUNCH_ONLY = frozenset({
    "sft.checkpoint_every", "sft.checkpoint_minutes", "dpo.checkpoint_every", "dpo.checkpoint_minutes",
    "pairs.zstd_threads",  # the merge records single- vs multi-threaded itself (the only difference)
    "vllm.gpu_memory_utilization", "vllm.kv_cache_gb",
})


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def shaping_values(cfg: Config, stage: str) -> dict:
    """{key: value} of every key that shapes `stage`'s outputs."""
    flat = _flat(to_dict(cfg))
    wanted = COMMON + STAGE_KEYS.get(stage, (stage,))
    out = {}
    for key, value in flat.items():
        if key in LAUNCH_ONLY:
            continue
        if any(key == w or key.startswith(w + ".") for w in wanted):
            out[key] = value
    return dict(sorted(out.items()))


def fingerprint(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def stage_fingerprint(cfg: Config, stage: str) -> str:
    return fingerprint(shaping_values(cfg, stage))


def changed_keys(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old value, new value) of every shaping key whose value differs. A key the old
    record lacks was added to the config after the stage was planned: not compared."""
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a is missing:
            continue
        if a != b:
            out.append((key, None if a is missing else a, None if b is missing else b))
    return out
