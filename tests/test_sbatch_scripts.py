"""The plain-sbatch scripts (slurm/*.sbatch), without Slurm: every stage has the script that
slurm/iteration.sh submits for it, and each one is the same shape.

    python -m pytest tests/test_sbatch_scripts.py -q
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from srlm_hpc.stages import ALIASES, EXTRA, ORDER

SLURM = Path(__file__).resolve().parent.parent / "slurm"
STAGES = ORDER + EXTRA


def script_name(stage: str) -> str:
    """The script iteration.sh picks for a stage, by running its own mapping line in bash."""
    line = next(ln.strip() for ln in (SLURM / "iteration.sh").read_text().splitlines()
                if ln.strip().startswith('script="$stage"'))
    out = subprocess.run(["bash", "-c", f'stage="$1"; {line}; printf %s "$script"', "_", stage],
                         capture_output=True, text=True, check=True)
    return out.stdout


def directives(path: Path) -> dict[str, str]:
    """#SBATCH --key=value lines, {'job-name': 'srlm-judge', 'requeue': '', ...}."""
    found = re.findall(r"^#SBATCH --([\w-]+)(?:=(\S*))?\s*$", path.read_text(), flags=re.M)
    return {k: v for k, v in found}


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_the_script_iteration_sh_submits(stage):
    path = SLURM / f"{script_name(stage)}.sbatch"
    assert path.is_file(), f"stage {stage!r}: iteration.sh submits {path}, which does not exist"
    assert path.stat().st_mode & 0o111, f"{path} is not executable (the other scripts are)"


def test_the_name_mapping_is_the_alias_one():
    """iteration.sh and get_stage agree: `merge` is the script of stage `pairs`, every other
    stage's script has the stage's name."""
    inverse = {stage: alias for alias, stage in ALIASES.items()}
    assert {s: script_name(s) for s in STAGES} == {s: inverse.get(s, s) for s in STAGES}


def test_no_script_without_a_stage():
    scripts = {p.stem for p in SLURM.glob("*.sbatch")}
    assert scripts == {script_name(s) for s in STAGES}


@pytest.mark.parametrize("stage", STAGES)
def test_script_parses_and_runs_its_stage_through_common_sh(stage):
    name = script_name(stage)
    path = SLURM / f"{name}.sbatch"
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, f"bash -n {path}: {check.stderr}"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    # Job and log names follow the script's name (srlm-merge for stage pairs): `scancel -n srlm-<script>`.
    d = directives(path)
    assert d.get("job-name") == f"srlm-{name}", d
    assert d.get("output") == f"srlm-{name}-%A_%a.out", d
    # common.sh's USR2 requeue needs the signal sent to the batch shell, and the job requeueable;
    # a failed upstream must cancel it rather than leave it pending forever.
    assert d.get("signal") == "B:USR2@120" and "requeue" in d and d.get("kill-on-invalid-dep") == "yes", d
    assert "cpus-per-task" in d and "time" in d, d
    assert re.search(rf"^export SRLM_STAGE={stage}$", text, flags=re.M), f"{path} does not run stage {stage}"
    assert text.rstrip().endswith('source "${SRLM_HOME:-$SLURM_SUBMIT_DIR}/slurm/common.sh"'), path


def test_common_sh_parses_and_calls_the_worker_entry_point():
    common = SLURM / "common.sh"
    assert subprocess.run(["bash", "-n", str(common)]).returncode == 0
    assert re.search(r'"\$PYTHON" -m srlm_hpc\.worker "\$CONFIG" "\$STAGE" "\$SHARD"', common.read_text())


def test_generation_stages_share_resources():
    """eval and eft generate and judge like judge does: same CPUs and time defaults."""
    ref = directives(SLURM / "judge.sbatch")
    for stage in ("prompts", "responses", "eval", "eft"):
        d = directives(SLURM / f"{script_name(stage)}.sbatch")
        assert (d["cpus-per-task"], d["time"]) == (ref["cpus-per-task"], ref["time"]), stage


def test_array_slices_keep_every_index_below_max_array_size():
    from srlm_hpc.worker import array_slices

    assert array_slices([0, 1, 2, 3, 4, 5], 5) == [(0, [0, 1, 2, 3, 4]), (5, [0])]
    assert array_slices([3, 7, 8, 2000, 2004], 1001) == [(3, [0, 4, 5]), (2000, [0, 4])]
    shards = list(range(0, 5000, 3))
    slices = array_slices(shards, 1001)
    assert [o + i for o, idx in slices for i in idx] == shards  # every shard once, in order
    assert max(i for _, idx in slices for i in idx) <= 1000
