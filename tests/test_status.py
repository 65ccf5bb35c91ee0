"""`status` exits 0 / 1 / 3 (and 2) in states built for each, prints the same facts as JSON,
and shows a running shard's progress from its heartbeat."""

from __future__ import annotations

import json
import time

import pytest

from srlm_hpc import progress
from srlm_hpc.config import build_config
from srlm_hpc.files import write_jsonl
from srlm_hpc.manifest import StageManifest
from srlm_hpc.status import main as status


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run whose prompts stage has 3 shards, 0 and 1 done with verified outputs; no Slurm
    queue is asked (PATH without squeue), so only heartbeats count."""
    monkeypatch.setenv("PATH", "/nonexistent")
    cfg = build_config({"work_dir": str(tmp_path), "slurm.max_retries": "2"})
    man = StageManifest(cfg.manifest_root, 1, "prompts")
    man.write_plan(3, {"n_prompts": 3})
    for shard in (0, 1):
        man.mark_running(shard)
        man.mark_done(shard, write_jsonl(tmp_path / f"out-{shard}.jsonl", [{"i": shard}]))
    return cfg, man, [f"work_dir={tmp_path}", "slurm.max_retries=2"]


def finish_last(man, tmp_path):
    man.mark_running(2)
    man.mark_done(2, write_jsonl(tmp_path / "out-2.jsonl", [{"i": 2}]))


def test_nothing_planned_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert status([f"work_dir={tmp_path}"]) == 2
    assert "nothing planned under" in capsys.readouterr().err


def test_pending_exits_3_so_an_until_loop_keeps_waiting(run, capsys):
    cfg, man, args = run
    assert status(args) == 3
    assert "   1 prompts         3      2        0        1" in capsys.readouterr().out


def test_running_with_a_fresh_heartbeat_exits_3_and_shows_progress(run, capsys):
    cfg, man, args = run
    man.mark_running(2)
    now = time.time()
    progress.reset()
    progress._state.update(unit="chunk", first_done=1, first_time=now - 20, done=3, total=10, updated=now)
    progress.write(man.dir, 2)
    assert status(args) == 3
    out = capsys.readouterr().out
    # 2 chunks in 20 s by this process: 0.1 chunk/s, 7 left -> 70 s
    assert "shard 00002 running" in out and "chunk 3/10, 0.1 chunk/s, ETA 70s" in out


def test_everything_done_and_verified_exits_0(run, tmp_path):
    cfg, man, args = run
    finish_last(man, tmp_path)
    assert status(args) == 0


def test_done_but_damaged_output_is_pending_again(run, tmp_path):
    cfg, man, args = run
    finish_last(man, tmp_path)
    (tmp_path / "out-1.jsonl").write_text('{"i": 99}\n')
    assert status(args) == 3


def test_failed_shard_exits_1_and_names_it(run, capsys):
    cfg, man, args = run
    man.mark_running(2)
    man.mark_failed(2, ValueError("bad prompt"))
    assert status(args) == 1
    assert "shard 00002 failed: ValueError: bad prompt (attempt 1)" in capsys.readouterr().out


def test_stale_running_shard_exits_1(run, capsys):
    cfg, man, args = run
    man.mark_running(2)
    assert status([*args, "slurm.heartbeat_s=1", "slurm.stale_after_s=1.5"]) == 3
    time.sleep(1.6)  # not a timing test: only makes the heartbeat older than stale_after_s
    assert status([*args, "slurm.heartbeat_s=1", "slurm.stale_after_s=1.5"]) == 1
    assert "shard 00002 stale: no heartbeat for" in capsys.readouterr().out


def test_given_up_shard_exits_1(run, capsys):
    cfg, man, args = run
    for _ in range(2):  # two failures: slurm.max_retries=2, so submit will not resubmit it
        man.mark_running(2)
        man.mark_pending(2, "job left the queue while running", failed=True)
    assert status(args) == 1
    assert "shard 00002 given up: failed 2 times (slurm.max_retries=2)" in capsys.readouterr().out


def test_json_holds_the_same_facts_and_exit_code(run, capsys):
    cfg, man, args = run
    man.mark_running(2)
    man.mark_failed(2, ValueError("bad prompt"))
    assert status([*args, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "failed" and doc["exit_code"] == 1
    (stage,) = doc["stages"]
    assert (stage["iter"], stage["stage"], stage["n_shards"]) == (1, "prompts", 3)
    assert stage["counts"] == {"pending": 0, "running": 0, "done": 2, "failed": 1, "stale": 0}
    assert stage["attention"][0]["shard"] == 2 and "bad prompt" in stage["attention"][0]["why"]


def test_eft_stage_is_shown(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    cfg = build_config({"work_dir": str(tmp_path)})
    StageManifest(cfg.manifest_root, 1, "eft").write_plan(2, {})
    assert status([f"work_dir={tmp_path}"]) == 3
    assert "   1 eft             2      0" in capsys.readouterr().out


def test_timing_prints_each_stages_wall_loads_and_tokens_per_second(run, capsys):
    """--timing: a table after the shard counts, from the shards' recorded start, end and
    timing; in --json too. Shard 0 ran 100 -> 130 s, shard 1 110 -> 150 s."""
    cfg, man, args = run
    for shard, (start, end, tokens) in enumerate([(100.0, 130.0, 600), (110.0, 150.0, 1000)]):
        st = man.get(shard)
        st.started, st.finished = start, end
        st.timing = {"model_loads": 1, "model_load_s": 2.5, "generated_tokens": tokens, "generate_s": 20.0}
        man._put(st)
    assert status(args) == 3
    out = capsys.readouterr().out
    assert "where the time went" not in out  # not by default: the table reads every entry again
    assert status([*args, "--timing"]) == 3
    out = capsys.readouterr().out
    # wall 100 -> 150 = 50 s, 30 + 40 = 70 shard-s, 2 loads of 2.5 s, 1,600 tokens in 40 s of generate
    assert "   1 prompts         2     50.0     70.0     2     5.0     1600     40.0" in out.split("where the time")[1]
    assert status([*args, "--timing", "--json"]) == 3
    (row,) = json.loads(capsys.readouterr().out)["timing"]
    assert (row["wall_s"], row["shard_s"], row["model_loads"], row["tokens_per_s"]) == (50.0, 70.0, 2, 40.0)
