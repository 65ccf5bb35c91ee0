"""Faults injected into the whole tiny iteration run on this machine (executor=local): SIGKILL
inside every stage, at a clock's random moment and between two writes (srlm_hpc/faults.py),
kills at the two points no clock reaches reliably, damaged or deleted inputs, a duplicate live run, a config change between attempts, a disk that fills during a
save. Each scenario ends by rerunning the same command and comparing every output byte for
byte with an uninterrupted run; no temp file and no process may be left.

    make chaos                      # the full suite, writes bench/results/chaos.json
    pytest tests/chaos -q           # the CI subset (one kill per stage, three input kinds)
"""

from __future__ import annotations

import collections
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos.common import (STAGES, Clock, args_for, compare, finish, kill, leftovers, only, output_files,
                                running_in, stage_done, stage_running, stage_windows, start, stray_processes,
                                work_of)
from tests.chaos.conftest import FULL

pytestmark = pytest.mark.slow
# The bar is 20 kills per stage over the suite; SRLM_CHAOS_KILLS sets it for a shorter run.
KILLS_PER_STAGE = int(os.environ.get("SRLM_CHAOS_KILLS", 20 if FULL else 1))
SEED = int(os.environ.get("SRLM_CHAOS_SEED", "13"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama):
    """The uninterrupted run: its outputs, how long each stage took and how many writes each
    stage committed (kills are drawn from both)."""
    base = tmp_path_factory.mktemp("chaos-ref")
    log = base / "commits.tsv"
    assert finish(args_for(base, tiny_llama), tries=1, env={"SRLM_FAULT_LOG": str(log)}) == 1
    commits = collections.Counter(line.split("\t")[0] for line in log.read_text().splitlines())
    return output_files(base), stage_windows(base), commits


def check_and_record(base: Path, want: dict, scenario: str, faults: dict, clock: Clock, results: list,
                     detail: dict | None = None) -> None:
    got = compare(output_files(base), want)
    left, strays = leftovers(base), stray_processes(base)
    results.append({"scenario": scenario, "faults": dict(faults), **got, "seconds": clock.seconds(),
                    "temp_files_left": len(left), "processes_left": len(strays), **(detail or {})})
    assert got["outputs_differing"] == 0, got["differing"]
    assert got["records_lost"] == got["records_duplicated"] == 0
    assert left == [] and strays == []


def test_sigkill_inside_every_stage_then_rerun(reference, tmp_path, tiny_llama, chaos_results):
    want, windows, _ = reference
    args = args_for(tmp_path, tiny_llama)
    rng, clock, faults = random.Random(SEED), Clock(), collections.Counter()
    # Between an output's rename and its mark_done (here: SFT's model), then the kills.
    proc = start(args, {"SRLM_FAULT_POINT": "before-mark-done"})
    proc.communicate(timeout=1800)
    assert proc.returncode == -9, "the fault point was never reached"
    faults["sigkill:before-mark-done"] += 1
    for stage in STAGES:
        # Each kill is counted for the stage the killed process was in at that moment (a
        # resumed stage can finish inside the drawn delay, and the process goes on to the next).
        for _ in range(3 * KILLS_PER_STAGE):
            if stage_done(tmp_path, stage) or faults[f"sigkill:{stage}"] >= KILLS_PER_STAGE:
                break
            proc = start(args)
            while running_in(tmp_path, proc.pid) != stage and proc.poll() is None and not stage_done(tmp_path, stage):
                time.sleep(0.05)
            # Somewhere inside the stage's measured span; sooner if the stage ends first, so the
            # run never goes on through the next (short) stages before their own turn.
            until = time.monotonic() + rng.uniform(0, windows.get(stage, 5.0))
            while time.monotonic() < until and proc.poll() is None and running_in(tmp_path, proc.pid) == stage:
                time.sleep(0.02)
            if proc.poll() is None:
                at = running_in(tmp_path, proc.pid) or "between stages"
                kill(proc)
                faults[f"sigkill:{at}"] += 1
            else:
                _, err = proc.communicate()
                assert proc.returncode == 0, err.decode()[-3000:]
                break
    # Inside a finalize (eval's metrics.json or dpo's summary, whichever comes next).
    proc = start(args, {"SRLM_FAULT_POINT": "before-mark-finalized"})
    proc.communicate(timeout=1800)
    faults["sigkill:before-mark-finalized"] += proc.returncode == -9
    finish(args)
    assert sum(faults.values()) >= len(STAGES) // 2, faults
    check_and_record(tmp_path, want, f"sigkill in every stage ({KILLS_PER_STAGE} per stage asked)", faults, clock,
                     chaos_results)


# Stages a clock cannot kill 20 times on the tiny model: a resumed one finishes inside the
# drawn delay (SFT from its last checkpoint, responses on the engine the prompts stage left
# loaded, the merge in milliseconds). They are killed between two writes instead.
COMMIT_KILL_STAGES = ("sft", "responses", "pairs")


def restore(snapshot: Path | None, work: Path) -> None:
    """The run folder as it was when the stage was about to start (same path, so every path
    recorded in it still holds)."""
    shutil.rmtree(work, ignore_errors=True)
    if snapshot is not None:
        shutil.copytree(snapshot, work, symlinks=True)


@pytest.mark.parametrize("stage", COMMIT_KILL_STAGES)
def test_sigkill_between_two_writes_inside_a_stage(reference, tmp_path, tiny_llama, chaos_results, stage):
    """SIGKILL just before or just after the k-th write the stage commits (k drawn from the
    measured run's count), in runs of that stage alone. Kills accumulate until a run finishes
    the stage; its outputs must then equal the uninterrupted run's, with no temp file left,
    and the stage starts again from the snapshot taken before it, until enough kills landed."""
    want, _, commits = reference
    assert commits[stage] > 1, commits
    args = args_for(tmp_path, tiny_llama)
    for up in STAGES[:STAGES.index(stage)]:
        assert finish(only(args, up), tries=1) == 1
    work, snapshot = work_of(tmp_path), None
    if work.exists():
        snapshot = tmp_path / "snapshot"
        shutil.copytree(work, snapshot, symlinks=True)
    mine = {n: b for n, b in want.items() if n.startswith(f"iter1/{stage}/")}
    assert mine, f"the uninterrupted run has no outputs under iter1/{stage}/"
    rng, clock, faults, restarts = random.Random(f"{SEED}/{stage}"), Clock(), collections.Counter(), 0
    where = collections.Counter()  # kills just before a commit's rename, and just after one

    def check_stage() -> None:
        got = {n: b for n, b in output_files(tmp_path).items() if n.startswith(f"iter1/{stage}/")}
        result = compare(got, mine)
        assert result["outputs_differing"] == 0, (dict(faults), result["differing"])
        assert leftovers(tmp_path) == [] and stray_processes(tmp_path) == []

    for _ in range(4 * KILLS_PER_STAGE):
        if faults[f"sigkill:{stage}"] >= KILLS_PER_STAGE:
            break
        point = f"{stage}:{rng.randint(1, commits[stage])}{rng.choice(['', ':after'])}"
        proc = start(only(args, stage), {"SRLM_FAULT_COMMIT": point})
        _, err = proc.communicate(timeout=1800)
        proc.stderr.close()
        if proc.returncode == -9:
            faults[f"sigkill:{stage}"] += 1
            where[f"{'after' if point.endswith('after') else 'before'} a rename"] += 1
            continue
        assert proc.returncode == 0, err.decode()[-3000:]
        check_stage()  # it finished what the kills left: same bytes; then start the stage again
        restarts += 1
        restore(snapshot, work)
    assert faults[f"sigkill:{stage}"] >= KILLS_PER_STAGE, faults
    assert finish(only(args, stage), tries=1) == 1
    check_stage()
    check_and_record(tmp_path, {n: b for n, b in want.items() if n.split("/")[1] in STAGES[:STAGES.index(stage) + 1]},
                     f"sigkill between two writes in {stage} ({KILLS_PER_STAGE} asked; the stage finished and "
                     f"restarted from its snapshot {restarts} time(s))", faults, clock, chaos_results,
                     {"kill_points": dict(where), "commits_in_the_measured_run": commits[stage]})


DAMAGE = {  # kind: (file under <work>/iter1, what is done to it)
    "judge shard truncated": ("judge/shard-00000.jsonl", "truncate"),
    "pairs file deleted": ("pairs/pairs-00000.jsonl.zst", "delete"),
    "tokenizer file deleted": ("sft/model/tokenizer.json", "delete"),
}
DAMAGE_FULL = {
    "prompts shard deleted": ("prompts/shard-00000.jsonl", "delete"),
    "responses shard truncated": ("responses/shard-00001.jsonl", "truncate"),
    "pairs index truncated": ("pairs/index.json", "truncate"),
    "ref_logps shard deleted": ("ref_logps/shard-00000.jsonl", "delete"),
    "dpo weights truncated": ("dpo/model/model.safetensors", "truncate"),
    "sft model config deleted": ("sft/model/config.json", "delete"),
    "eval shard deleted": ("eval/shard-00000.jsonl", "delete"),
    "eval metrics deleted": ("eval/metrics.json", "delete"),
}


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("kinds", [DAMAGE, pytest.param(DAMAGE_FULL, marks=pytest.mark.chaos_full)],
                         ids=["ci", "full"])
def test_a_damaged_or_deleted_input_heals_on_the_next_rerun(reference, tmp_path, tiny_llama, chaos_results, kinds):
    want, _, _ = reference
    args = args_for(tmp_path, tiny_llama)
    finish(args, tries=1)
    clock, faults = Clock(), collections.Counter()
    for kind, (rel, how) in kinds.items():
        path = work_of(tmp_path) / "iter1" / rel
        assert path.exists(), rel
        damage(path, how)
        faults[f"input:{kind}"] += 1
        assert finish(args, tries=1) == 1  # one rerun heals it: nothing to reset by hand
        got = compare(output_files(tmp_path), want)
        assert got["outputs_differing"] == 0, (kind, got["differing"])
    check_and_record(tmp_path, want, f"damaged or deleted inputs: {', '.join(kinds)}", faults, clock, chaos_results)


def test_a_config_change_between_attempts_is_refused(reference, tmp_path, tiny_llama, chaos_results):
    want, windows, _ = reference
    args = args_for(tmp_path, tiny_llama)
    clock = Clock()
    proc = start(args)
    while not stage_running(tmp_path, "responses") and proc.poll() is None:
        time.sleep(0.05)
    kill(proc)
    changed = [a if not a.startswith("responses.max_tokens=") else "responses.max_tokens=13" for a in args]
    out = subprocess.run([sys.executable, "-m", "srlm_hpc.submit", *changed], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "responses.max_tokens: 12 -> 13" in out.stderr and "rm -r" in out.stderr
    finish(args)
    check_and_record(tmp_path, want, "config change between attempts", {"config change refused": 1}, clock,
                     chaos_results)


@pytest.mark.chaos_full
def test_two_live_runs_of_the_same_command_at_once(reference, tmp_path, tiny_llama, chaos_results):
    want, _, _ = reference
    args = args_for(tmp_path, tiny_llama)
    clock = Clock()
    procs = [start(args), start(args)]
    for p in procs:
        p.communicate(timeout=3600)
    finish(args)  # whatever the one that backed off left undone
    check_and_record(tmp_path, want, "duplicate live run", {"duplicate run": 1}, clock, chaos_results)


@pytest.mark.chaos_full
def test_a_disk_that_fills_during_a_save(reference, tmp_path, tiny_llama, chaos_results):
    """RLIMIT_FSIZE: the kernel refuses a write past 4 MB (EFBIG), as a full disk does (ENOSPC):
    SFT's first checkpoint or model save fails part-way."""
    want, _, _ = reference
    args = args_for(tmp_path, tiny_llama)
    clock = Clock()
    limit = 4 << 20

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = subprocess.run([sys.executable, "-m", "srlm_hpc.submit", *args], capture_output=True, text=True,
                         preexec_fn=small_disk, timeout=1800)
    # torch.save reports EFBIG its own way ("unexpected pos ..."): the run must fail, whatever the words
    assert out.returncode == 1 and "error:" in out.stderr, out.stderr[-2000:]
    assert leftovers(tmp_path) == []  # no half-written checkpoint or model folder
    finish(args)
    check_and_record(tmp_path, want, "disk full during a save", {"disk full": 1}, clock, chaos_results)
