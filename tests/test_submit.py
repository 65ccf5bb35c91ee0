"""submit's exit codes on the real one-node Slurm: wait=true returns 0 only when every
requested stage is done and verified, else 1 with the unfinished shards and their logs last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.manifest import StageManifest
from srlm_hpc.submit import main as submit


def broken_model(work: Path) -> None:
    """An M1 folder that looks like a model to submit (config.json) but cannot be loaded: every
    prompts shard fails inside its task, after Slurm has started it."""
    model = work / "iter1" / "sft" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))


@pytest.mark.slurm
def test_wait_true_exits_1_naming_the_failed_shard_and_its_log(slurm, tmp_path, capsys):
    work = tmp_path / "run"
    broken_model(work)
    args = ["stage=prompts", "iter=1", "executor=slurm", "wait=true", f"work_dir={work}", "engine=hf", "threads=1",
            "prompts.n_prompts=2", "prompts.shard_size=1", "slurm.partition=low", "slurm.cpus_per_task=1",
            "slurm.time_min=60", "slurm.heartbeat_s=1"]
    code = submit(args)
    out, err = capsys.readouterr()
    man = StageManifest(build_config({"work_dir": str(work)}).manifest_root, 1, "prompts")
    assert [st.state for st in man.states(2)] == ["failed", "failed"], out + err
    assert code == 1, out + err
    last = err.strip().splitlines()[-2:]  # the unfinished shards come last
    for shard, line in enumerate(last):
        assert line.startswith(f"  iter 1 prompts shard {shard:05d} failed: "), err
        assert f"(log: {man.get(shard).log})" in line and man.get(shard).log, line
    # A rerun without wait queues again and reports no failure of its own (0), whatever the
    # shards will do; status then says what they did.
    assert submit([a for a in args if a != "wait=true"]) == 0
