"""Two iterations (M1 -> M2 -> M3) on the real Slurm with the tiny model.

- `stage=all iter=1-2` queues both iterations at once: every stage's array job depends
  (afterok) on the jobs of the stage it reads, iteration 2's prompts on iteration 1's dpo
  (read back from squeue); a preemption in iteration 2 resumes; the outputs of both
  iterations equal a local run of the same range, byte for byte.
- `iter=2` submitted while iteration 1's dpo is still queued waits for it: no shard of
  iteration 2 starts early and fails. With nothing queued for iteration 1, it says what to run.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.manifest import StageManifest
from srlm_hpc.stages import stage_names
from srlm_hpc.submit import main as submit
from tests.stages.test_pipeline_e2e import e2e_args

pytestmark = pytest.mark.slurm
ITERS = (1, 2)
SLURM = ["slurm.partition=low", "slurm.cpus_per_task=1", "slurm.time_min=60", "slurm.heartbeat_s=1"]
PATH_KEYS = ("model_paths", "judge", "work_dir")  # absolute paths: the two runs live in different folders


def outputs(work: Path) -> dict[str, bytes]:
    """What each stage of both iterations hands on: shard files, pairs, models, eval metrics
    (less the absolute paths they name)."""
    out = {}
    for k in ITERS:
        for pattern in (f"iter{k}/*/shard-*.jsonl", f"iter{k}/pairs/pairs-*.jsonl.zst", f"iter{k}/pairs/index.json",
                        f"iter{k}/*/model/model.safetensors"):
            out.update({str(p.relative_to(work)): p.read_bytes() for p in sorted(work.glob(pattern))})
        metrics = json.loads((work / f"iter{k}" / "eval" / "metrics.json").read_text())
        out[f"iter{k}/eval/metrics.json"] = json.dumps({x: v for x, v in metrics.items() if x not in PATH_KEYS},
                                                       sort_keys=True).encode()
    return out


def manifests(work: Path) -> dict[tuple[int, str], StageManifest]:
    root = build_config({"work_dir": str(work)}).manifest_root
    return {(k, s): StageManifest(root, k, s) for k in ITERS for s in stage_names(k)}


def all_done(work: Path) -> bool:
    return all((plan := m.plan()) is not None and m.counts()["done"] == plan["n_shards"]
               for m in manifests(work).values())


def queue_by_name(slurm) -> dict[str, tuple[set[str], str]]:
    """job name -> (array job ids, dependency text) of everything in the queue."""
    out: dict[str, tuple[set[str], str]] = {}
    for line in slurm.run(["squeue", "-h", "-r", "-o", "%i|%j|%E"]).stdout.splitlines():
        job, name, dep = line.split("|", 2)
        ids, deps = out.setdefault(name, (set(), ""))
        out[name] = (ids | {job.split("_")[0]}, deps + " " + dep)
    return out


def depends_on(dep: str, jobs: set[str]) -> bool:
    return any(re.search(rf"afterok:{j}(_[\d*]+)?(?!\d)", dep) for j in jobs)  # squeue: afterok:64_*(unfulfilled)


def finish(args: list[str], work: Path, rounds: int = 3) -> None:
    """The user's loop: rerun the same command with wait=true until everything is done."""
    for _ in range(rounds):
        submit(["stage=all", "iter=1-2", "executor=slurm", "wait=true", *args])
        if all_done(work):
            return
    raise AssertionError("not every stage of iterations 1-2 is done after three reruns")


@pytest.fixture(scope="module")
def local_range(tmp_path_factory, tiny_llama) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("local")
    assert submit(["stage=all", "iter=1-2", "executor=local", *e2e_args(work, tiny_llama)]) == 0
    return outputs(work / "run")


def test_range_is_queued_at_once_preempted_in_iteration_2_and_equals_a_local_run(slurm, tmp_path, tiny_llama,
                                                                                 local_range):
    args = [*e2e_args(tmp_path, tiny_llama), *SLURM]
    work = tmp_path / "run"
    assert submit(["stage=all", "iter=1-2", "executor=slurm", *args]) == 0
    queue = queue_by_name(slurm)
    names = {f"srlm-default-i{k}-{s}": (k, s) for k in ITERS for s in stage_names(k)}
    assert set(queue) == set(names), sorted(queue)  # 8 + 7 array jobs, all queued by one command
    for name, (k, stage) in names.items():
        order = stage_names(k)
        if stage == "sft":
            continue
        if stage == "prompts":  # M_k: SFT's in iteration 1, else the previous iteration's dpo
            before = ["srlm-default-i1-sft"] if k == 1 else [f"srlm-default-i{k - 1}-dpo"]
        elif stage == "dpo":
            before = [f"srlm-default-i{k}-pairs", f"srlm-default-i{k}-ref_logps"]
        else:
            before = [f"srlm-default-i{k}-{order[order.index(stage) - 1]}"]
        ids, dep = queue[name]
        for upstream in before:
            assert depends_on(dep, queue[upstream][0]), f"{name} ({dep.strip()}) does not wait for {upstream}"

    # Preempt once iteration 2's eval shard runs (claimed in the manifest, so the task's signal
    # handling is in place; a task preempted while Python still starts up just fails and is
    # resubmitted): a high-priority job takes the node. Eval is the longest stage of iteration 2
    # on the tiny model (three judges' chunks, each saved, so it resumes mid-shard).
    eval_2 = manifests(work)[(2, "eval")]

    def eval_2_running():
        return eval_2.plan() is not None and eval_2.get(0).state == "running" or None

    slurm.wait_for(eval_2_running, timeout=1500, interval=0.1, what="iteration 2's eval running")
    high = slurm.sbatch("--partition=high", "--cpus-per-task=8", "--output=/dev/null", "--wrap=sleep 3")
    slurm.wait_final(high, timeout=120)
    finish(args, work)
    preempted = [(k, s, st.shard) for (k, s), m in manifests(work).items() for st in m.states()
                 if "preempted" in [h["state"] for h in st.history]]
    assert (2, "eval", 0) in preempted, preempted
    assert all(st.failures == 0 for m in manifests(work).values() for st in m.states())  # preemption is no failure
    got = outputs(work)
    assert sorted(got) == sorted(local_range)
    assert [k for k in local_range if got[k] != local_range[k]] == []


def test_iteration_2_waits_for_iteration_1_queued_by_another_command(slurm, tmp_path, tiny_llama, local_range,
                                                                    capsys):
    args = [*e2e_args(tmp_path, tiny_llama), *SLURM]
    work = tmp_path / "run"
    # Nothing of iteration 1 is done or queued: there is nothing to wait for, and it says what to run.
    assert submit(["stage=all", "iter=2", "executor=slurm", *args]) == 1
    err = capsys.readouterr().err
    assert "iteration 1's dpo is not done" in err and "no job of it is queued" in err and "stage=dpo iter=1" in err
    assert slurm.run(["squeue", "-h", "-o", "%i"]).stdout.strip() == ""

    assert submit(["stage=all", "iter=1", "executor=slurm", *args]) == 0
    assert submit(["stage=all", "iter=2", "executor=slurm", *args]) == 0  # a second command, at once
    queue = queue_by_name(slurm)
    dpo_1 = queue["srlm-default-i1-dpo"][0]
    assert depends_on(queue["srlm-default-i2-prompts"][1], dpo_1), queue["srlm-default-i2-prompts"]
    deadline = time.monotonic() + 1200
    while slurm.run(["squeue", "-h", "-o", "%i"], check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(2)
    assert all_done(work), {f"{k}/{s}": m.counts() for (k, s), m in manifests(work).items()}
    for (k, s), m in manifests(work).items():
        for st in m.states():
            assert st.failures == 0 and st.attempt == 1, (k, s, st.shard, st.history)  # never started early
    got = outputs(work)
    assert [k for k in local_range if got.get(k) != local_range[k]] == []
