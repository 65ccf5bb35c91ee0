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
