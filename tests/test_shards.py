"""Resume inside a shard (srlm_hpc/shards.run_chunked): a killed shard continues at its first
missing chunk, never emits a record twice, and refuses chunks cut at another size."""

from __future__ import annotations

import random

import pytest

from srlm_hpc.files import read_jsonl
from srlm_hpc.shards import ChunkingChangedError, part_path, run_chunked, shard_seed


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
        f"shard-00003.c4.part-{c:05d}.jsonl" for c in range(3)]
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


def test_chunks_of_another_size_are_refused_and_kept(tmp_path):
    items = list(range(20))
    out = tmp_path / "shard-00000.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_chunked(out, items, 4, dies_at(2), desc="cut")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ChunkingChangedError, match=r"shard-00000\.c4\.part-00000\.jsonl.*2 asked for now"):
        run_chunked(out, items, 2, squares, desc="smaller batch")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing lost, nothing mixed in
    run_chunked(out, items, 4, squares, desc="old batch size")  # the old size resumes
    assert [r["item"] for r in read_jsonl(out)] == items


def test_a_damaged_chunk_is_recomputed(tmp_path):
    items = list(range(12))
    out = tmp_path / "shard-00001.jsonl"
    want = run_chunked(tmp_path / "want.jsonl", items, 4, squares, desc="want")
    with pytest.raises(KeyboardInterrupt):
        run_chunked(out, items, 4, dies_at(2), desc="cut")
    part = part_path(out, 4, 1)
    part.write_bytes(part.read_bytes()[:-7])  # a torn write the atomic rename should never allow
    assert run_chunked(out, items, 4, squares, desc="resumed").sha256 == want.sha256
