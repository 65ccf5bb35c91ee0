"""Hundreds of processes update their own shards at once: no update is lost, and a reader
listing the manifest meanwhile always sees whole, valid JSON."""

from __future__ import annotations

import json
import multiprocessing as mp

from srlm_hpc.files import write_jsonl
from srlm_hpc.manifest import StageManifest

N_SHARDS = 300


def work(args):
    root, shard = args
    man = StageManifest(root, 1, "judge")
    man.mark_running(shard)
    for _ in range(5):
        man.heartbeat(shard)
    info = write_jsonl(f"{root}/out/shard-{shard:05d}.jsonl", [{"shard": shard}])
    man.mark_done(shard, info)
    return shard


def test_hundreds_of_writers_lose_nothing(tmp_path):
    root = str(tmp_path / "m")
    man = StageManifest(root, 1, "judge")
    man.write_plan(N_SHARDS, {"shard_size": 1})
    ctx = mp.get_context("fork")
    with ctx.Pool(64) as pool:
        pending = pool.map_async(work, [(root, s) for s in range(N_SHARDS)], chunksize=1)
        reads = 0
        while not pending.ready():
            for p in man.dir.glob("shard-*.json"):  # readers never see a torn file
                json.loads(p.read_text())
                reads += 1
        assert sorted(pending.get()) == list(range(N_SHARDS))
    states = man.states()
    assert [s.state for s in states] == ["done"] * N_SHARDS
    assert all(s.attempt == 1 and man.verified_output(s) is not None for s in states)
    assert man.counts() == {"pending": 0, "running": 0, "done": N_SHARDS, "failed": 0}
    assert not list(man.dir.glob(".*.tmp"))  # no temp file left behind
    assert reads > 0
