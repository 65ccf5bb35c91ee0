"""What a data-stage shard reads, how it is seeded, and how it resumes inside itself.

- A shard's output depends only on its inputs, the run seed and its index: every random
  choice is seeded from `shard_seed(seed, iter, stage, shard, chunk)`.
- Shard i of a downstream stage reads records [i*S, (i+1)*S) of the upstream stage, taken
  in upstream shard order from upstream outputs verified against the manifest.
- Long shards work in chunks: each finished chunk is written atomically as
  `shard-00003.c8-1f2e3d4c5b.part-00002.jsonl` (8: items per chunk; 1f2e3d4c5b: what the
  chunks belong to, below); a shard killed mid-way resumes at the first missing chunk and
  never emits a record twice. The shard's final file is the concatenation, written last;
  then the parts are removed.
- A part belongs to the chunk size, the config that shapes the stage, the models and the
  upstream outputs the shard read (`parts_key`). Parts of another key are removed and
  redone, never mixed in: an upstream shard regenerated since (not bit-reproducible on
  GPU), or a stage restarted afresh with new values, would otherwise resume on records
  made from other inputs, and chunk boundaries of another size would repeat records.
- Generation chunks (one generate call each, independent of one another) are fed to the
  engine together (`run_chunked_generation`, Engine.generate_chunks): it never drains
  between chunks, and each part is written as soon as its chunk is done; same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from . import progress
from .config import Config
from .files import CorruptFileError, FileInfo, iter_jsonl, output_digest, output_info, read_jsonl, write_jsonl
from .manifest import StageManifest, current_reads, note_read, read_label


class UpstreamNotReadyError(RuntimeError):
    pass


def shard_seed(seed: int, iteration: int, stage: str, shard: int, chunk: int = 0) -> int:
    digest = hashlib.sha256(f"{seed}/{iteration}/{stage}/{shard}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # fits a signed 64-bit seed


def shard_output(cfg: Config, stage: str, shard: int) -> Path:
    return cfg.stage_dir(stage) / f"shard-{shard:05d}.jsonl"


def verified_upstream(cfg: Config, stage: str) -> list[tuple[int, FileInfo, str]]:
    """(shard, output, digest) of every shard of `stage` in shard order, each verified; error,
    naming the first problem, if any is not done."""
    man = StageManifest(cfg.manifest_root, cfg.run.iter, stage)
    plan = man.plan()
    if plan is None:
        raise UpstreamNotReadyError(f"stage {stage} of iter {cfg.run.iter} has not been planned yet: run it first")
    out, missing, why = [], [], ""
    for st in man.states(plan["n_shards"]):
        problem = man.output_problem(st)
        if problem is None:
            out.append((st.shard, output_info(st.output), output_digest(st.output)))
        else:
            missing.append(st.shard)
            why = why or (f" (shard {st.shard}: {problem})" if st.state == "done" else "")
    if missing:
        raise UpstreamNotReadyError(
            f"stage {stage} of iter {cfg.run.iter}: shard(s) {_ranges(missing)} of {plan['n_shards']} are not done"
            f"{why}: finish {stage} first (rerunning it redoes what is damaged or stale)")
    return out


def upstream_outputs(cfg: Config, stage: str) -> list[FileInfo]:
    """Outputs of every shard of `stage` in shard order, each verified; error if any is not done.
    All of them count as read by the shard running now (manifest.note_read)."""
    infos = []
    for shard, info, digest in verified_upstream(cfg, stage):
        note_read(cfg.run.iter, stage, shard, digest)
        infos.append(info)
    return infos


def upstream_range(cfg: Config, stage: str, start: int, stop: int) -> list[dict]:
    """Records [start, stop) of `stage`'s output, counted across its shards in order; only the
    shards holding them are verified and count as read (the others' record counts come from
    the manifest's index: the check costs what the shard reads, not the stage's size)."""
    man = StageManifest(cfg.manifest_root, cfg.run.iter, stage)
    plan = man.plan()
    if plan is None:
        raise UpstreamNotReadyError(f"stage {stage} of iter {cfg.run.iter} has not been planned yet: run it first")
    counts = man.record_counts(plan["n_shards"])
    missing = [i for i, n in enumerate(counts) if n is None]
    if missing:
        raise UpstreamNotReadyError(
            f"stage {stage} of iter {cfg.run.iter}: shard(s) {_ranges(missing)} of {plan['n_shards']} are not done"
            f": finish {stage} first (rerunning it redoes what is damaged or stale)")
    out, offset = [], 0
    for shard, n in enumerate(counts):
        lo, hi = offset, offset + n
        offset = hi
        if hi <= start or lo >= stop:
            continue
        st = man.get(shard)
        problem = man.output_problem(st)
        if problem is None and st.output["records"] != n:
            problem = f"{st.output['records']} records, {n} when its stage's record counts were read"
        if problem is not None:
            raise UpstreamNotReadyError(
                f"stage {stage} of iter {cfg.run.iter}: shard(s) {shard} of {plan['n_shards']} are not done (shard "
                f"{shard}: {problem}): finish {stage} first (rerunning it redoes what is damaged or stale)")
        note_read(cfg.run.iter, stage, shard, output_digest(st.output))
        for j, rec in enumerate(iter_jsonl(st.output["path"])):
            if start <= lo + j < stop:
                out.append(rec)
    return out


def run_chunked(out_path: Path, items: Sequence, chunk_size: int, process: Callable[[list, int], list[dict]],
                desc: str, on_resume: Callable[[list[dict]], None] | None = None) -> FileInfo:
    """Process `items` in chunks, each chunk's records saved before the next starts.

    `process(chunk_items, chunk_index)` returns the chunk's output records and must depend
    only on its arguments and on earlier chunks (seed it from the chunk index). A chunk
    found on disk is not recomputed: its records go to `on_resume` so state that later
    chunks depend on is rebuilt as an uninterrupted run would have it."""
    key = parts_key(chunk_size)
    remove_stale_parts(out_path, key)
    n_chunks = max(1, -(-len(items) // chunk_size))
    records: list[dict] = []
    t0, produced = time.time(), 0
    bar = tqdm(range(n_chunks), desc=desc, unit="chunk")
    for c in bar:
        part = part_path(out_path, key, c)
        saved = saved_part(part)
        if saved is not None:
            records += saved
            if on_resume:
                on_resume(saved)
            continue
        chunk_records = process(list(items[c * chunk_size:(c + 1) * chunk_size]), c)
        write_jsonl(part, chunk_records)
        records += chunk_records
        produced += len(chunk_records)
        progress.update(c + 1, n_chunks, "chunk")  # for status, through the heartbeat (progress.py)
        bar.set_postfix(records=len(records), per_s=f"{produced / max(1e-9, time.time() - t0):.2f}")
    return write_whole(out_path, key, n_chunks, records)


def run_chunked_generation(out_path: Path, items: Sequence, chunk_size: int, engine,
                           request: Callable[[list, int], tuple[list, object]],
                           to_records: Callable[[list, int, list], list[dict]], desc: str) -> FileInfo:
    """`run_chunked` for chunks that are one generate call each and independent of one another,
    with the engine fed continuously: the missing chunks' calls go to `engine.generate_chunks`
    as one stream, and each chunk's part is written as soon as its completions are done.

    `request(chunk_items, c)` gives the chunk's (conversations, params); `to_records(chunk_items,
    c, completions)` its output records. The parts and the final file are those of
    `run_chunked(..., process=lambda items, c: to_records(items, c, engine.generate(*request(items,
    c))))`, byte for byte: the same calls, fed together. A kill loses only the chunks not yet
    written (the engine finishes them roughly in order), and a rerun generates only those."""
    key = parts_key(chunk_size)
    remove_stale_parts(out_path, key)
    n_chunks = max(1, -(-len(items) // chunk_size))
    chunks = [list(items[c * chunk_size:(c + 1) * chunk_size]) for c in range(n_chunks)]
    done = {c: saved for c in range(n_chunks) if (saved := saved_part(part_path(out_path, key, c))) is not None}
    todo = [c for c in range(n_chunks) if c not in done]
    t0, produced = time.time(), 0
    bar = tqdm(total=n_chunks, initial=len(done), desc=desc, unit="chunk")
    stream = engine.generate_chunks(request(chunks[c], c) for c in todo)
    try:
        for k, completions in stream:
            c = todo[k]
            done[c] = to_records(chunks[c], c, completions)
            write_jsonl(part_path(out_path, key, c), done[c])
            produced += len(done[c])
            progress.update(len(done), n_chunks, "chunk")  # for status, through the heartbeat (progress.py)
            bar.update(1)
            bar.set_postfix(records=sum(map(len, done.values())), per_s=f"{produced / max(1e-9, time.time() - t0):.2f}")
    finally:
        stream.close()  # a failed write or record: the engine drops the chunks still in flight
        bar.close()
    return write_whole(out_path, key, n_chunks, [rec for c in range(n_chunks) for rec in done[c]])


def write_whole(out_path: Path, key: str, n_chunks: int, records: list[dict]) -> FileInfo:
    """The shard's output, the chunks' records in order, written last; then its parts go."""
    info = write_jsonl(out_path, records)
    for c in range(n_chunks):
        part_path(out_path, key, c).unlink(missing_ok=True)
    return info


def saved_part(part: Path) -> list[dict] | None:
    """A finished chunk's records, None when it is missing (or damaged: then it is removed, to redo)."""
    if not part.exists():
        return None
    try:
        return read_jsonl(part)
    except CorruptFileError:
        part.unlink()  # written atomically, so only a disk fault gets here: redo it
        return None


_identity, _with_reads = "", True  # what this shard's parts belong to: set by runner.run_shard


@contextlib.contextmanager
def parts_belong_to(identity: str, with_reads: bool = True):
    """While inside, chunk parts are keyed by `identity` (the shard's shaping-config
    fingerprint and the digests of the models it reads) and by its upstream reads. A cache
    shared across iterations (eval's, keyed by its folder) passes with_reads=False."""
    global _identity, _with_reads
    outer, (_identity, _with_reads) = (_identity, _with_reads), (identity, with_reads)
    try:
        yield
    finally:
        _identity, _with_reads = outer


def parts_key(chunk_size: int) -> str:
    """`c<size>-<10 hex>`: the chunk size, and a digest of the identity and of every upstream
    output the shard has read so far (a stage reads its inputs before its first chunk)."""
    reads = sorted(map(read_label, current_reads())) if _with_reads else []
    digest = hashlib.sha256(json.dumps([chunk_size, _identity, reads]).encode()).hexdigest()
    return f"c{chunk_size}-{digest[:10]}"


def part_path(out_path: Path, key: str, chunk: int) -> Path:
    return out_path.with_name(f"{out_path.stem}.{key}.part-{chunk:05d}.jsonl")


def remove_stale_parts(out_path: Path, key: str) -> list[str]:
    """Remove this shard's parts that belong to another key (see the module's docstring)."""
    mine = f"{out_path.stem}.{key}.part-"
    stale = sorted(p for p in out_path.parent.glob(f"{out_path.stem}.c*.part-*.jsonl") if not p.name.startswith(mine))
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        print(f"{out_path.parent}: removed {len(stale)} finished chunk(s) of {out_path.name} made with another "
              f"chunk size, config or input ({stale[0].name}, ...); they are redone", flush=True)
    return [p.name for p in stale]


def _ranges(ids: list[int]) -> str:
    if len(ids) <= 8:
        return ", ".join(map(str, ids))
    return ", ".join(map(str, ids[:8])) + f", ... ({len(ids)} in all)"
