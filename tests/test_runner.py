"""The runner's side of "rerun after any failure": one owner per shard, finalize tracked in
the manifest and redone when missing, and a shard whose input changed no longer done.

The stages here are two small ones defined below (an upstream of 3 shards, a downstream of 3
shards that reads it through shards.upstream_range, and a finalize): the protocol under test
is the runner's and the manifest's, and the real stages need a model to run."""

from __future__ import annotations

import json
import os
import types

import pytest

from srlm_hpc import runner
from srlm_hpc.config import build_config
from srlm_hpc.files import atomic_write_json, write_jsonl
from srlm_hpc.manifest import StageManifest
from srlm_hpc.shards import UpstreamNotReadyError, shard_output, upstream_outputs, upstream_range

CALLS: list[tuple[str, int]] = []


def _up_run(cfg, shard):
    CALLS.append(("up", shard))
    salt = (cfg.stage_dir("up") / "salt").read_text() if (cfg.stage_dir("up") / "salt").exists() else ""
    return write_jsonl(shard_output(cfg, "up", shard), [{"i": shard * 2 + j, "salt": salt} for j in range(2)])


def _down_run(cfg, shard):
    CALLS.append(("down", shard))
    recs = upstream_range(cfg, "up", shard * 2, shard * 2 + 2)
    return write_jsonl(shard_output(cfg, "down", shard), [{"twice": r["i"] * 2} for r in recs])


def _down_finalize(cfg):
    CALLS.append(("finalize", -1))
    if (cfg.stage_dir("down") / "fail-finalize").exists():
        raise OSError("disk full while writing metrics.json")
    total = sum(1 for _ in upstream_outputs(cfg, "down"))
    atomic_write_json(cfg.stage_dir("down") / "metrics.json", {"shards": total})


STAGES = {"up": types.SimpleNamespace(plan=lambda cfg: (3, {}), run_shard=_up_run),
          "down": types.SimpleNamespace(plan=lambda cfg: (3, {}), run_shard=_down_run, finalize=_down_finalize)}


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "get_stage", STAGES.__getitem__)
    monkeypatch.setitem(runner.FINAL_FILES, "down", ("down/metrics.json",))
    CALLS.clear()
    return build_config({"work_dir": str(tmp_path / "run"), "slurm.heartbeat_s": "1"})


def run_both(cfg):
    runner.run_stage_local(cfg, "up")
    runner.run_stage_local(cfg, "down")


def test_a_finalize_that_failed_once_is_redone_by_the_next_run(cfg):
    (cfg.stage_dir("down")).mkdir(parents=True)
    (cfg.stage_dir("down") / "fail-finalize").write_text("")
    runner.run_stage_local(cfg, "up")
    with pytest.raises(OSError, match="disk full"):
        runner.run_stage_local(cfg, "down")  # the last shard is done, then its finalize fails
    man = StageManifest(cfg.manifest_root, 1, "down")
    assert man.counts(3)["done"] == 3 and not (cfg.stage_dir("down") / "metrics.json").exists()
    (cfg.stage_dir("down") / "fail-finalize").unlink()
    CALLS.clear()
    runner.run_shard(cfg, "down", 1)  # a task that finds its shard done finalizes what is missing
    assert CALLS == [("finalize", -1)]
    assert json.loads((cfg.stage_dir("down") / "metrics.json").read_text()) == {"shards": 3}
    CALLS.clear()
    runner.run_stage_local(cfg, "down")  # recorded now: not redone
    assert CALLS == []
    (cfg.stage_dir("down") / "metrics.json").write_text("{}")  # damaged: redone
    runner.run_stage_local(cfg, "down")
    assert CALLS == [("finalize", -1)]
    assert json.loads((cfg.stage_dir("down") / "metrics.json").read_text()) == {"shards": 3}


def test_a_changed_upstream_shard_makes_the_shards_that_read_it_run_again(cfg):
    run_both(cfg)
    down = StageManifest(cfg.manifest_root, 1, "down")
    assert [i["shard"] for i in down.get(1).inputs] == [1]  # shard 1 read records 2-3: up shard 1 alone
    # up shard 1 regenerated with other bytes (a rerun after its file was damaged, say)
    (cfg.stage_dir("up") / "salt").write_text("new")
    StageManifest(cfg.manifest_root, 1, "up").mark_pending(1, "test: regenerate")
    CALLS.clear()
    runner.run_stage_local(cfg, "up")
    assert down.verified_output(down.get(1)) is None and "changed since it was read" in down.output_problem(down.get(1))
    assert down.verified_output(down.get(0)) is not None and down.verified_output(down.get(2)) is not None
    runner.run_stage_local(cfg, "down")
    # only what read the change; its output came out the same, so the finalize stands
    assert CALLS == [("up", 1), ("down", 1)]
    assert down.verified_output(down.get(1)) is not None


def test_a_damaged_upstream_heals_on_the_next_rerun(cfg):
    run_both(cfg)
    victim = shard_output(cfg, "up", 2)
    victim.write_text(victim.read_text()[:-3])
    with pytest.raises(UpstreamNotReadyError, match=r"shard\(s\) 2 of 3 are not done \(shard 2: .* bytes, expected"):
        upstream_outputs(cfg, "up")
    CALLS.clear()
    run_both(cfg)  # the same command again: the damaged shard is redone, its readers keep their outputs
    assert CALLS == [("up", 2)]  # same bytes again (deterministic): nothing downstream changed
    assert all(StageManifest(cfg.manifest_root, 1, s).verified_output(st) is not None
               for s in ("up", "down") for st in StageManifest(cfg.manifest_root, 1, s).states(3))


def test_a_second_live_run_of_a_shard_waits_for_its_owner(cfg, capsys):
    """A duplicate task ends only once the shard is done (so afterok dependents never start
    early), or with an error after slurm.stale_after_s; it never runs the shard meanwhile."""
    import threading
    from dataclasses import replace

    from srlm_hpc.manifest import ShardBusyError

    man = StageManifest(cfg.manifest_root, 1, "up")
    man.write_plan(3, {})
    st = man.claim(0, "the-other-task", liveness_s=10)
    st.pid = os.getppid()  # a live process of this host owns it
    man._put(st)
    impatient = replace(cfg, slurm=replace(cfg.slurm, stale_after_s=2.0))
    with pytest.raises(ShardBusyError, match="gave up after waiting 2s"):
        runner.run_shard(impatient, "up", 0)
    assert CALLS == [] and "waiting for it" in capsys.readouterr().out
    assert man.get(0).owner == "the-other-task" and man.get(0).state == "running"
    # The owner finishes while the duplicate waits: the duplicate ends, without running it.
    finish = threading.Timer(1.5, lambda: man.mark_done(0, _up_run(cfg, 0), owner="the-other-task"))
    finish.start()
    runner.run_shard(cfg, "up", 0)
    finish.join()
    assert CALLS == [("up", 0)] and "done by the task that owned it" in capsys.readouterr().out


def test_temp_files_of_a_killed_attempt_are_swept_by_the_next_owner(cfg):
    d = cfg.stage_dir("up")
    d.mkdir(parents=True)
    left = [d / ".shard-00000.jsonl.abc123.tmp", d / ".shard-00000.c4.part-00001.jsonl.x.tmp"]
    other = d / ".shard-00001.jsonl.def456.tmp"  # another shard's: not ours to remove
    for p in left + [other]:
        p.write_text("half")
    runner.run_shard(cfg, "up", 0)
    assert not any(p.exists() for p in left) and other.exists()


def test_a_changed_shaping_key_is_refused_naming_it_and_launch_keys_change_freely(tmp_path):
    from srlm_hpc.config import ConfigError
    from srlm_hpc.manifest import ConfigChangedError

    base = {"work_dir": str(tmp_path / "run"), "responses.temperature": "0.7"}
    runner.plan_stage(build_config(base), "responses")
    # Slurm settings, threads, checkpoint cadence: launch-only
    runner.plan_stage(build_config({**base, "slurm.partition": "gpu", "slurm.time_min": "600", "threads": "3",
                                    "dpo.checkpoint_minutes": "5"}), "responses")
    with pytest.raises(ConfigChangedError) as e:
        runner.plan_stage(build_config({**base, "responses.temperature": "0.9", "model": "/models/other"}), "responses")
    msg = str(e.value)
    assert "responses.temperature: 0.7 -> 0.9" in msg and "run.model: 'default' -> '/models/other'" in msg
    assert f"rm -r {tmp_path / 'run' / 'manifests' / 'default' / 'iter1' / 'responses'}" in msg
    assert isinstance(e.value, ConfigError)  # a usage mistake: exit 2, no traceback
    # Another stage's keys do not concern this one; its own do.
    runner.plan_stage(build_config({**base, "judge.temperature": "0.1"}), "responses")
    runner.plan_stage(build_config(base), "judge")
    with pytest.raises(ConfigChangedError, match="responses.n: 4 -> 6"):
        runner.plan_stage(build_config({**base, "responses.n": "6"}), "judge")


def test_a_task_reading_a_config_with_other_shaping_values_is_refused(cfg, monkeypatch):
    from dataclasses import replace

    from srlm_hpc.manifest import ConfigChangedError

    monkeypatch.setattr(runner, "get_stage", {**STAGES, "responses": STAGES["up"]}.__getitem__)
    runner.plan_stage(cfg, "responses")
    other = replace(cfg, responses=replace(cfg.responses, top_p=0.5))
    with pytest.raises(ConfigChangedError, match="responses.top_p: 0.9 -> 0.5"):
        runner.run_shard(other, "responses", 0)
    assert CALLS == [] and StageManifest(cfg.manifest_root, 1, "responses").get(0).state == "pending"
    runner.run_shard(cfg, "responses", 0)
    st = StageManifest(cfg.manifest_root, 1, "responses").get(0)
    assert st.state == "done" and len(st.config) == 16


def test_a_training_stage_runs_with_its_checkpoint_identity(cfg, monkeypatch):
    """What sft's and dpo's checkpoints record and check (training/loop.checkpoint_identity):
    the runner sets it around the stage, with the shaping fingerprint and the inputs' digests."""
    from srlm_hpc.training.loop import run_identity

    seen = {}

    def fake_sft(cfg, shard):
        seen.update(run_identity([]))
        return write_jsonl(cfg.stage_dir("sft") / "out.jsonl", [{"x": 1}])

    monkeypatch.setattr(runner, "get_stage", {"sft": types.SimpleNamespace(plan=lambda c: (1, {}),
                                                                          run_shard=fake_sft)}.__getitem__)
    runner.plan_stage(cfg, "sft")
    runner.run_shard(cfg, "sft", 0)
    st = StageManifest(cfg.manifest_root, 1, "sft").get(0)
    assert seen["stage"] == "sft" and seen["config"] == st.config and len(seen["config"]) == 16
    assert "config" not in run_identity([])  # only while the stage runs
