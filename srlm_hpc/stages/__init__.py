"""The stages of one self-rewarding iteration, in order. Each stage module defines

    plan(cfg) -> (n_shards, keys)      how the stage splits; keys must not change on resume
    run_shard(cfg, shard) -> FileInfo  do one shard, write its output atomically, describe it

and reads its inputs from the work dir only: no stage knows how it was launched. A stage
may also define `finalize(cfg)`: run after its last shard is done (idempotent, since two
tasks may finish together), e.g. to aggregate shard outputs into one metrics file.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ORDER = ("sft", "prompts", "responses", "judge", "pairs", "ref_logps", "dpo", "eval")
EXTRA = ("eft",)  # run on request only: builds EFT data from oasst1 with an IFT-only baseline


def stage_names(iteration: int) -> list[str]:
    """SFT (M0 -> M1) happens once, in iteration 1."""
    return [s for s in ORDER if s != "sft" or iteration == 1]


ALIASES = {"merge": "pairs"}  # the pairs stage is the merger of judged shards


def get_stage(name: str) -> ModuleType:
    name = ALIASES.get(name, name)
    if name not in ORDER + EXTRA:
        raise ValueError(f"stage={name!r}: expected one of {', '.join(ORDER + EXTRA)}, or all")
    return importlib.import_module(f"{__name__}.{name}")


def requested_stages(cfg) -> list[str]:
    """stage=all, one stage, or a comma-separated list (stage=prompts,responses), in pipeline order."""
    if cfg.run.stage == "all":
        return stage_names(cfg.run.iter)
    names = [ALIASES.get(s.strip(), s.strip()) for s in cfg.run.stage.split(",") if s.strip()]
    known = ORDER + EXTRA
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ValueError(f"stage={cfg.run.stage!r}: expected all, or one or more of {', '.join(known)}, merge "
                         f"(comma-separated)")
    return sorted(set(names), key=known.index)
