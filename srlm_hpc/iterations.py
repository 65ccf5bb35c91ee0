"""Iterations as a range, and what each stage of an iteration waits for.

    python -m srlm_hpc.iterations 1-2        # prints "1 2" (slurm/iteration.sh expands iter= with it)

`iter=1-2` on the command line means: iteration 1 (M1 -> M2, after SFT makes M1), then
iteration 2 (M2 -> M3). Each iteration keeps its own config (`RunConfig.iter` stays one
integer) and manifest; the range exists only at the submit level.

A stage's upstream is the stage before it in its iteration; the first stage of iteration
k > 1 (prompts) reads M_k, which iteration k-1's dpo writes.
"""

from __future__ import annotations

import re
import sys

from .config import Config
from .manifest import StageManifest
from .stages import stage_names

RANGE_HINT = "expected an iteration number or a rising range, e.g. iter=2 or iter=1-3"


class IterationRangeError(ValueError):
    pass


def parse_iter_range(text: str) -> list[int]:
    """'2' -> [2]; '1-3' -> [1, 2, 3]. Iterations count from 1; a range must rise."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not m:
        raise IterationRangeError(f"iter={text!r}: {RANGE_HINT}")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) is not None else first
    if first < 1:
        raise IterationRangeError(f"iter={text}: iterations count from 1 (iteration 1 trains M2 from M1); {RANGE_HINT}")
    if last < first:
        raise IterationRangeError(f"iter={text}: the range runs backwards; write iter={last}-{first}")
    return list(range(first, last + 1))


def split_iter_arg(argv: list[str]) -> tuple[list[str], list[int] | None]:
    """argv with its iter= argument set to the range's first iteration, and the range (None
    when argv has no iter=: the preset's or the default iteration applies)."""
    found = [i for i, a in enumerate(argv) if a.split("=", 1)[0].strip().lstrip("-") == "iter" and "=" in a]
    if not found:
        return list(argv), None
    iters = parse_iter_range(argv[found[-1]].split("=", 1)[1])
    out = [a for i, a in enumerate(argv) if i not in found]
    return out + [f"iter={iters[0]}"], iters


def upstreams_of(k: int, stage: str) -> list[tuple[int, str]]:
    """(iteration, stage) pairs whose outputs `stage` of iteration k reads: the stage before it
    in its iteration (dpo: pairs, and ref_logps when that ran), or for the first stage of
    iteration k > 1, iteration k-1's dpo (M_k). SFT and eft wait for nothing of the loop."""
    names = stage_names(k)
    if stage not in names:
        return []
    i = names.index(stage)
    if i == 0:
        return [(k - 1, "dpo")] if k > 1 else []
    if stage == "dpo":
        return [(k, "pairs"), (k, "ref_logps")]
    return [(k, names[i - 1])]


def stage_progress(cfg: Config, k: int, stage: str) -> tuple[bool, str]:
    """(done, what its shards are doing), for messages. A model stage (sft, dpo) that was never
    planned counts as done when its model folder is there: a model brought by hand."""
    man = StageManifest(cfg.manifest_root, k, stage)
    plan = man.plan()
    if plan is None:
        if stage in ("sft", "dpo") and (cfg.stage_dir(stage, k) / "model" / "config.json").exists():
            return True, "model in place (never planned here)"
        return False, "never planned (not started)"
    states = man.states(plan["n_shards"])
    counts: dict[str, int] = {}
    for st in states:
        state = st.state if st.state != "done" or man.verified_output(st) is not None else "damaged"
        counts[state] = counts.get(state, 0) + 1
    done = counts.get("done", 0) == len(states)
    return done, f"{len(states)} shard(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def optional_upstream(cfg: Config, k: int, stage: str) -> bool:
    """ref_logps is optional: dpo computes the reference log-probs itself when it never ran."""
    return stage == "ref_logps" and StageManifest(cfg.manifest_root, k, stage).plan() is None


def outside_upstreams(plan: list[tuple[Config, list[str]]]) -> list[tuple[int, str]]:
    """Upstream (iteration, stage) pairs that this command does not itself run, in order."""
    ours = {(c.run.iter, s) for c, stages in plan for s in stages}
    out = []
    for c, stages in plan:
        for s in stages:
            for u in upstreams_of(c.run.iter, s):
                if u not in ours and u not in out and not optional_upstream(c, *u):
                    out.append(u)
    return out


def not_ready_message(cfg: Config, k: int, stage: str, progress: str, why: str = "") -> str:
    return (f"iteration {k}'s {stage} is not done ({progress}){why}: run "
            f"`python -m srlm_hpc.submit stage={stage} iter={k} ...` first, or take it into this command's range "
            f"(e.g. iter={k}-{cfg.run.iter if cfg.run.iter > k else k + 1} stage=all)")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m srlm_hpc.iterations RANGE   (e.g. 1-3; prints the iterations)", file=sys.stderr)
        return 2
    try:
        print(" ".join(map(str, parse_iter_range(argv[0]))))
    except IterationRangeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
