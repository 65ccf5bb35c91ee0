"""Iteration ranges (srlm_hpc/iterations.py) and what submit does with them before any stage
runs: malformed ranges and missing upstream iterations are refused with one clear line, and
nothing is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.files import FileInfo
from srlm_hpc.iterations import (IterationRangeError, outside_upstreams, parse_iter_range, split_iter_arg,
                                 stage_progress, upstreams_of)
from srlm_hpc.manifest import StageManifest
from srlm_hpc.submit import main as submit

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text,iters", [("1", [1]), ("3", [3]), ("1-2", [1, 2]), ("1-3", [1, 2, 3]),
                                        (" 2 - 4 ", [2, 3, 4]), ("2-2", [2])])
def test_parse_iter_range(text, iters):
    assert parse_iter_range(text) == iters


@pytest.mark.parametrize("text,message", [
    ("3-1", "iter=3-1: the range runs backwards; write iter=1-3"),
    ("0", "iter=0: iterations count from 1"),
    ("0-2", "iter=0-2: iterations count from 1"),
    ("a", "iter='a': expected an iteration number or a rising range, e.g. iter=2 or iter=1-3"),
    ("1-", "iter='1-': expected"), ("1,2", "iter='1,2': expected"), ("", "iter='': expected"),
])
def test_malformed_ranges_are_refused(text, message):
    with pytest.raises(IterationRangeError) as e:
        parse_iter_range(text)
    assert message in str(e.value)


def test_split_iter_arg_keeps_the_other_arguments():
    assert split_iter_arg(["stage=all", "iter=1-3", "seed=7"]) == (["stage=all", "seed=7", "iter=1"], [1, 2, 3])
    assert split_iter_arg(["stage=all", "seed=7"]) == (["stage=all", "seed=7"], None)  # the preset's iter applies


def test_upstreams():
    assert upstreams_of(1, "sft") == []
    assert upstreams_of(1, "prompts") == [(1, "sft")]
    assert upstreams_of(2, "prompts") == [(1, "dpo")]  # M2 is iteration 1's dpo output
    assert upstreams_of(2, "judge") == [(2, "responses")]
    assert upstreams_of(3, "dpo") == [(3, "pairs"), (3, "ref_logps")]
    assert upstreams_of(1, "eft") == []


def test_outside_upstreams_are_only_what_the_command_does_not_run(tmp_path):
    cfg = build_config({"work_dir": str(tmp_path)})
    with_iter = [(build_config({"work_dir": str(tmp_path), "iter": k}), s) for k, s in
                 ((1, ["sft", "prompts", "responses", "judge", "pairs", "ref_logps", "dpo", "eval"]),
                  (2, ["prompts", "responses", "judge", "pairs", "ref_logps", "dpo", "eval"]))]
    assert outside_upstreams(with_iter) == []  # stage=all iter=1-2 makes everything it reads
    assert outside_upstreams([(build_config({"work_dir": str(tmp_path), "iter": 2}), ["judge"])]) == \
        [(2, "responses")]
    # dpo reads ref_logps only when that stage ran (else it computes the reference itself)
    assert outside_upstreams([(cfg, ["dpo"])]) == [(1, "pairs")]


@pytest.mark.parametrize("bad", ["iter=3-1", "iter=0", "iter=a"])
def test_submit_refuses_a_malformed_range_before_writing_anything(tmp_path, capsys, bad):
    work = tmp_path / "run"
    assert submit(["stage=all", bad, f"work_dir={work}", "executor=local"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: iter=") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not work.exists()


def test_iteration_2_before_iteration_1_names_the_missing_stage_and_its_shards(tmp_path, capsys):
    work = tmp_path / "run"
    cfg = build_config({"work_dir": str(work)})
    man = StageManifest(cfg.manifest_root, 1, "dpo")
    man.write_plan(1, {})
    man.mark_running(0)  # iteration 1's dpo started, never finished
    assert stage_progress(cfg, 1, "dpo") == (False, "1 shard(s): 1 running")
    assert submit(["stage=all", "iter=2", f"work_dir={work}", "executor=local"]) == 1
    err = capsys.readouterr().err
    assert "iteration 1's dpo is not done (1 shard(s): 1 running)" in err
    assert "stage=dpo iter=1" in err and "iter=1-2" in err
    assert not (work / "iter2").exists()  # nothing written for iteration 2


def test_a_model_put_in_place_by_hand_counts_as_done(tmp_path):
    cfg = build_config({"work_dir": str(tmp_path)})
    assert stage_progress(cfg, 1, "sft") == (False, "never planned (not started)")
    (tmp_path / "iter1" / "sft" / "model").mkdir(parents=True)
    (tmp_path / "iter1" / "sft" / "model" / "config.json").write_text("{}")
    assert stage_progress(cfg, 1, "sft")[0]


def test_a_done_shard_whose_output_changed_is_not_done(tmp_path):
    cfg = build_config({"work_dir": str(tmp_path)})
    man = StageManifest(cfg.manifest_root, 1, "prompts")
    man.write_plan(1, {})
    out = tmp_path / "iter1" / "prompts" / "shard-00000.jsonl"
    out.parent.mkdir(parents=True)
    out.write_text('{"a": 1}\n')
    from srlm_hpc.files import sha256_file

    man.mark_running(0)
    man.mark_done(0, FileInfo(str(out), 1, out.stat().st_size, sha256_file(out)))
    assert stage_progress(cfg, 1, "prompts")[0]
    out.write_text('{"a": 2}\n')
    assert not stage_progress(cfg, 1, "prompts")[0]


def test_iterations_cli_expands_a_range_for_iteration_sh():
    run = [sys.executable, "-m", "srlm_hpc.iterations"]
    assert subprocess.run([*run, "1-3"], capture_output=True, text=True, cwd=REPO).stdout == "1 2 3\n"
    bad = subprocess.run([*run, "3-1"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr == "error: iter=3-1: the range runs backwards; write iter=1-3\n"
