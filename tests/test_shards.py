"""Resume inside a shard (srlm_hpc/shards.run_chunked): a killed shard continues at its first
missing chunk, never emits a record twice, and never mixes in chunks that belong to another
chunk size, config or input."""

from __future__ import annotations

import random

import pytest

from srlm_hpc.files import read_jsonl
from srlm_hpc.manifest import note_read, recording_reads
from srlm_hpc.shards import part_path, parts_belong_to, parts_key, run_chunked, shard_seed


def squares(chunk: list[int], c: int) -> list[dict]:
    """A stand-in for generation: records depend on the items and on the chunk's seed."""
    rng = random.Random(shard_seed(0, 1, "test", 3, c))
    return [{"item": i, "chunk": c, "draw": rng.random()} for i in chunk]


def dies_at(chunk_index: int):
    def process(chunk: list[int], c: int) -> list[dict]:
        if c == chunk_index:
            raise KeyboardInterrupt(f"killed in chunk {c}")
        return squares(chunk, c)
    return process


def test_a_killed_shard_resumes_to_the_same_bytes_and_recomputes_no_chunk(tmp_path):
    items = list(range(23))
    whole = run_chunked(tmp_path / "whole.jsonl", items, 4, squares, desc="whole")
    out = tmp_path / "shard-00003.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_chunked(out, items, 4, dies_at(3), desc="cut")
    assert sorted(p.name for p in tmp_path.glob("shard-00003.*")) == [
        f"shard-00003.{parts_key(4)}.part-{c:05d}.jsonl" for c in range(3)]
    redone = []

    def counting(chunk, c):
        redone.append(c)
        return squares(chunk, c)

    resumed = run_chunked(out, items, 4, counting, desc="resumed")
    assert redone == [3, 4, 5]  # the three finished chunks are read back, not recomputed
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert resumed.sha256 == whole.sha256 and resumed.records == 23
    assert [r["item"] for r in read_jsonl(out)] == items  # each record once, in order
    assert not list(tmp_path.glob("shard-00003.*part-*"))  # parts removed once the shard is whole


def counting_squares(redone: list[int]):
    def process(chunk, c):
        redone.append(c)
        return squares(chunk, c)
    return process


def test_chunks_of_another_size_are_removed_and_redone_never_mixed_in(tmp_path):
    items = list(range(20))
    out = tmp_path / "shard-00000.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_chunked(out, items, 4, dies_at(2), desc="cut")
    assert len(list(tmp_path.glob("shard-00000.c4-*.part-*"))) == 2
    redone: list[int] = []
    run_chunked(out, items, 2, counting_squares(redone), desc="smaller batch")
    assert redone == list(range(10))  # every chunk of the new size computed, none read from the old parts
    assert [r["item"] for r in read_jsonl(out)] == items
    assert [r["chunk"] for r in read_jsonl(out)] == [i // 2 for i in items]  # cut at 2, not a mix with 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.jsonl"]  # the old parts are gone


@pytest.mark.parametrize("change", ["upstream output", "config or model"])
def test_chunks_made_from_other_inputs_are_redone(tmp_path, change):
    """A part is keyed by what the shard read and by its config and models: after an upstream
    shard was regenerated with other bytes (GPU generation is not bit-reproducible), or the
    stage restarted afresh with new values, the old parts would resume it on stale records."""
    items = list(range(12))
    out = tmp_path / "shard-00002.jsonl"

    def attempt(process, upstream_digest: str, identity: str):
        with recording_reads(), parts_belong_to(identity):
            note_read(1, "prompts", 0, upstream_digest)
            return run_chunked(out, items, 4, process, desc="attempt")

    with pytest.raises(KeyboardInterrupt):
        attempt(dies_at(2), "a" * 64, "config-1")
    assert len(list(tmp_path.glob("shard-00002.*part-*"))) == 2
    redone: list[int] = []
    if change == "upstream output":
        attempt(counting_squares(redone), "b" * 64, "config-1")
    else:
        attempt(counting_squares(redone), "a" * 64, "config-2")
    assert redone == [0, 1, 2]
    assert not list(tmp_path.glob("shard-00002.*part-*"))
    # ...and the same inputs resume: only the missing chunks are computed
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        attempt(dies_at(1), "c" * 64, "config-1")
    redone.clear()
    attempt(counting_squares(redone), "c" * 64, "config-1")
    assert redone == [1, 2]


def test_a_damaged_chunk_is_recomputed(tmp_path):
    items = list(range(12))
    out = tmp_path / "shard-00001.jsonl"
    want = run_chunked(tmp_path / "want.jsonl", items, 4, squares, desc="want")
    with pytest.raises(KeyboardInterrupt):
        run_chunked(out, items, 4, dies_at(2), desc="cut")
    part = part_path(out, parts_key(4), 1)
    part.write_bytes(part.read_bytes()[:-7])  # a torn write the atomic rename should never allow
    assert run_chunked(out, items, 4, squares, desc="resumed").sha256 == want.sha256


# ---- upstream_range: a downstream shard checks only the upstream shards it reads ---------------
def _upstream(tmp_path, counts):
    from srlm_hpc.config import build_config
    from srlm_hpc.files import write_jsonl
    from srlm_hpc.manifest import StageManifest
    from srlm_hpc.shards import shard_output

    cfg = build_config({"work_dir": str(tmp_path)})
    man = StageManifest(cfg.manifest_root, 1, "up")
    man.write_plan(len(counts), {})
    first = 0
    for shard, n in enumerate(counts):
        man.mark_running(shard)
        man.mark_done(shard, write_jsonl(shard_output(cfg, "up", shard), [{"i": first + j} for j in range(n)]))
        first += n
    return cfg, man


def test_a_range_verifies_and_records_only_the_shards_holding_it(tmp_path, monkeypatch):
    from srlm_hpc.manifest import StageManifest, recording_reads
    from srlm_hpc.shards import UpstreamNotReadyError, shard_output, upstream_range

    monkeypatch.setattr(StageManifest, "QUIET_S", -1.0)  # index at once (the test waits out the mtime tick)
    cfg, man = _upstream(tmp_path, [3, 2, 4])
    shard_output(cfg, "up", 0).write_text('{"i": 99}\n')  # damaged, but no shard below reads it
    with recording_reads() as reads:
        assert [r["i"] for r in upstream_range(cfg, "up", 4, 7)] == [4, 5, 6]
    assert [r["shard"] for r in reads] == [1, 2]
    assert man.records_index_path.exists()  # the counts are indexed for the stage's next reader
    with pytest.raises(UpstreamNotReadyError, match=r"shard\(s\) 0 of 3 are not done \(shard 0: .*bytes, expected"):
        upstream_range(cfg, "up", 2, 4)


def test_a_rerun_upstream_shard_with_other_counts_moves_the_ranges_after_it(tmp_path, monkeypatch):
    import time

    from srlm_hpc.files import write_jsonl
    from srlm_hpc.manifest import StageManifest
    from srlm_hpc.shards import shard_output, upstream_range

    monkeypatch.setattr(StageManifest, "QUIET_S", -1.0)
    cfg, man = _upstream(tmp_path, [3, 2, 4])
    assert [r["i"] for r in upstream_range(cfg, "up", 5, 7)] == [5, 6]  # indexed: [3, 2, 4]
    time.sleep(0.05)  # past the folder's mtime tick, so the rerun below moves it
    man.mark_running(0)
    man.mark_done(0, write_jsonl(shard_output(cfg, "up", 0), [{"i": 100}]))  # now 1 record
    assert [r["i"] for r in upstream_range(cfg, "up", 1, 4)] == [3, 4, 5]  # shard 1 starts at record 1 now
    assert man.record_counts(3) == [1, 2, 4]
