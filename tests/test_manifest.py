import os

import pytest

from srlm_hpc.files import write_jsonl
from srlm_hpc.manifest import PlanMismatchError, StageManifest


def test_shard_lifecycle_and_counts(tmp_path):
    man = StageManifest(tmp_path / "m", 1, "judge")
    man.write_plan(3, {"shard_size": 8})
    assert man.counts() == {"pending": 3, "running": 0, "done": 0, "failed": 0}
    man.mark_running(0)
    man.mark_running(1)
    info = write_jsonl(tmp_path / "out0.jsonl", [{"x": 1}])
    man.mark_done(0, info)
    try:
        raise ValueError("bad shard input")
    except ValueError as e:
        man.mark_failed(1, e)
    assert man.counts() == {"pending": 1, "running": 0, "done": 1, "failed": 1}
    st = man.get(1)
    assert st.error == "ValueError: bad shard input" and "bad shard input" in st.traceback_tail
    man.mark_running(1)
    assert man.get(1).attempt == 2 and man.get(1).history[-1]["state"] == "failed"


def test_done_requires_the_recorded_output(tmp_path):
    man = StageManifest(tmp_path / "m", 1, "responses")
    info = write_jsonl(tmp_path / "out.jsonl", [{"x": 1}])
    man.mark_running(0)
    man.mark_done(0, info)
    assert man.verified_output(man.get(0)) == info
    (tmp_path / "out.jsonl").write_text('{"x": 2}\n')
    assert man.verified_output(man.get(0)) is None  # same size, other bytes: not done


def test_a_rerun_that_would_reshard_is_refused(tmp_path):
    man = StageManifest(tmp_path / "m", 2, "prompts")
    man.write_plan(4, {"n_prompts": 32, "shard_size": 8})
    man.write_plan(4, {"n_prompts": 32, "shard_size": 8})  # the same plan again is fine
    with pytest.raises(PlanMismatchError, match="changed: n_prompts, shard_size"):
        man.write_plan(8, {"n_prompts": 32, "shard_size": 4} | {"n_prompts": 64})


def test_a_preemption_is_an_attempt_but_not_a_failure(tmp_path):
    man = StageManifest(tmp_path / "m", 1, "responses")
    for _ in range(5):  # preempted five times, each time requeued
        man.mark_running(0)
        man.mark_preempted(0, "SystemExit: -1")
    st = man.get(0)
    assert (st.state, st.attempt, st.failures) == ("pending", 5, 0)
    assert [h["state"] for h in st.history] == ["preempted"] * 5
    man.mark_running(0)
    man.mark_failed(0, RuntimeError("out of memory"))
    man.mark_pending(0, "job 7_0 left the queue while running", failed=True)
    assert man.get(0).failures == 2 and man.get(0).attempt == 6


def test_queueing_a_job_never_undoes_what_its_task_already_wrote(tmp_path):
    """submit records the job id sbatch gave it after the array is queued; by then a task may
    have started or even finished the shard."""
    man = StageManifest(tmp_path / "m", 1, "judge")
    info = write_jsonl(tmp_path / "out.jsonl", [{"x": 1}])
    man.mark_running(0)
    man.mark_done(0, info)
    man.mark_running(1)
    man.mark_queued(0, "41_0")
    man.mark_queued(1, "41_1")
    assert man.verified_output(man.get(0)) == info and man.get(1).state == "running"
    assert (man.queued_job(0), man.queued_job(1), man.queued_job(2)) == ("41_0", "41_1", "")


def test_triage_counts_failures_not_preemptions_against_the_retry_limit(tmp_path):
    from srlm_hpc.launch.slurm import StageSubmission, triage

    man = StageManifest(tmp_path / "m", 1, "judge")
    man.write_plan(5, {})
    for _ in range(4):  # shard 0: preempted four times, never failed
        man.mark_running(0)
        man.mark_preempted(0, "requeued")
    for _ in range(3):  # shard 1: failed three times
        man.mark_running(1)
        man.mark_failed(1, ValueError("bad"))
    man.mark_queued(2, "50_2")  # shard 2: queued, its job still in the queue
    man.mark_running(3)  # shard 3: its job vanished while running it
    sub = StageSubmission("judge", 5, 0)
    to_submit = triage(man, [0, 1, 2, 3, 4], {"50_2": "PENDING"}, 3, sub)
    assert to_submit == [0, 3, 4] and sub.exhausted == [1] and sub.in_queue == {2: "50_2"}
    st = man.get(3)
    assert (st.state, st.failures) == ("pending", 1) and "left the queue" in st.error


# ---- one owner per shard ---------------------------------------------------------------------
class _LateBeat(StageManifest):
    """Between the heartbeat's read of the shard and its write, another run finishes the shard:
    the interleaving that put a done shard back to running when beats rewrote the shard file."""

    def __init__(self, *a, finish):
        super().__init__(*a)
        self.finish, self.armed = finish, False

    def get(self, shard):
        st = super().get(shard)
        if self.armed:
            self.armed = False
            self.finish()
        return st


def test_a_late_heartbeat_never_puts_a_done_shard_back_to_running(tmp_path):
    info = write_jsonl(tmp_path / "out.jsonl", [{"x": 1}])
    other = StageManifest(tmp_path / "m", 1, "judge")
    man = _LateBeat(tmp_path / "m", 1, "judge", finish=lambda: other.mark_done(0, info))
    st = man.mark_running(0)
    man.armed = True
    man.heartbeat(0, st.owner)  # reads "running", then the other run marks it done, then it writes
    st = other.get(0)
    assert st.state == "done" and other.verified_output(st) == info


def test_a_second_live_run_backs_off_and_a_lost_owner_writes_nothing(tmp_path):
    from srlm_hpc.manifest import OwnershipLostError, ShardBusyError

    man = StageManifest(tmp_path / "m", 1, "judge")
    first = man.claim(0, "owner-a", liveness_s=30)
    assert first.pid == os.getpid()
    # A live owner on this host (its process exists): the second run backs off at once.
    man._put(replace_state(man.get(0), pid=os.getppid()))
    with pytest.raises(ShardBusyError, match="is running under job"):
        man.claim(0, "owner-b", liveness_s=30)
    assert man.get(0).owner == "owner-a"
    # Its process gone: the shard is taken over, the old owner's later writes are refused.
    man._put(replace_state(man.get(0), pid=_dead_pid()))
    taken = man.claim(0, "owner-b", liveness_s=30)
    assert (taken.owner, taken.attempt, taken.history[-1]["state"]) == ("owner-b", 2, "abandoned")
    info = write_jsonl(tmp_path / "out.jsonl", [{"x": 1}])
    with pytest.raises(OwnershipLostError, match="now owned by"):
        man.mark_done(0, info, owner="owner-a")
    with pytest.raises(OwnershipLostError):
        man.mark_failed(0, RuntimeError("late"), owner="owner-a")
    assert not man.heartbeat(0, "owner-a")
    assert man.get(0).state == "running" and man.get(0).owner == "owner-b"
    man.mark_done(0, info, owner="owner-b")
    assert man.verified_output(man.get(0)) == info


def test_an_owner_on_another_node_is_alive_while_its_heartbeat_advances(tmp_path):
    import threading

    from srlm_hpc.manifest import ShardBusyError

    man = StageManifest(tmp_path / "m", 1, "judge")
    man.claim(0, "owner-a")
    man._put(replace_state(man.get(0), host="elsewhere", pid=1))
    stop = threading.Event()
    beats = threading.Thread(target=lambda: [man.heartbeat(0, "owner-a") for _ in iter(lambda: stop.wait(0.2), True)])
    beats.start()
    try:
        with pytest.raises(ShardBusyError):
            man.claim(0, "owner-b", liveness_s=2)
    finally:
        stop.set()
        beats.join()
    assert man.claim(0, "owner-b", liveness_s=0.5).owner == "owner-b"  # its beats stopped: taken over


def test_two_tasks_claiming_the_same_attempt_get_one_owner(tmp_path):
    import multiprocessing as mp

    root = str(tmp_path / "m")
    ctx = mp.get_context("fork")
    with ctx.Pool(8) as pool:
        won = pool.map(_try_claim, [(root, f"owner-{i}") for i in range(16)])
    winners = [w for w in won if w]
    st = StageManifest(root, 1, "judge").get(0)
    assert len(winners) == 1 and st.owner == winners[0] and st.attempt == 1


def _try_claim(args):
    from srlm_hpc.manifest import ShardBusyError

    root, owner = args
    try:
        StageManifest(root, 1, "judge").claim(0, owner, liveness_s=30)
        return owner
    except ShardBusyError:
        return ""


def replace_state(st, **kw):
    for k, v in kw.items():
        setattr(st, k, v)
    return st


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_unchanged_stamps_skip_the_hash_and_a_full_check_still_finds_changed_bytes(tmp_path, monkeypatch):
    """Re-hash only what changed size, mtime or inode (a 70B model takes minutes to hash);
    `status --verify` (full=True) hashes everything, catching bytes changed in place behind
    an mtime put back."""
    from srlm_hpc import files as files_mod

    man = StageManifest(tmp_path / "m", 1, "responses")
    path = tmp_path / "out.jsonl"
    info = write_jsonl(path, [{"x": 1}])
    man.mark_running(0)
    man.mark_done(0, info)
    hashed = []
    real = files_mod.sha256_file
    monkeypatch.setattr(files_mod, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    assert man.verified_output(man.get(0)) == info and hashed == []  # stamp unchanged: no hash
    st = os.stat(path)
    with open(path, "r+b") as f:  # same size, same inode, mtime put back
        f.write(b'{"x": 2}')
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert man.verified_output(man.get(0)) == info  # the stamp cannot see it ...
    assert man.verified_output(man.get(0), full=True) is None  # ... the full check does
    from srlm_hpc.status import stage_report

    man.write_plan(1, {})
    import time as _time

    assert stage_report(man, 900, _time.time(), None, verify=True)["counts"]["pending"] == 1


def test_every_file_of_a_model_folder_is_part_of_the_output(tmp_path):
    from srlm_hpc.files import file_info

    model = tmp_path / "sft" / "model"
    model.mkdir(parents=True)
    for name, data in {"config.json": b"{}", "model.safetensors": b"w" * 64, "tokenizer.json": b"{\"t\": 1}",
                       "tokenizer_config.json": b"{}", ".srlm-fingerprint.json": b"cache"}.items():
        (model / name).write_bytes(data)
    man = StageManifest(tmp_path / "m", 1, "sft")
    man.mark_running(0)
    st = man.mark_done(0, file_info(model / "model.safetensors", records=3))
    assert sorted(os.path.basename(p["path"]) for p in st.output["parts"]) == [
        "config.json", "tokenizer.json", "tokenizer_config.json"]  # a hidden cache is not part of it
    assert man.verified_output(man.get(0)) is not None
    (model / ".srlm-fingerprint.json").unlink()
    assert man.verified_output(man.get(0)) is not None
    (model / "tokenizer.json").unlink()
    assert "tokenizer.json: missing" in man.output_problem(man.get(0))
