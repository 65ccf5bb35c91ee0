"""The pairs merger: judged shards in, bounded zstd JSON Lines files out, resumable at any kill.

    python -m srlm_hpc.submit stage=merge iter=2        (the `pairs` stage, stages/pairs.py)

Judge shards are streamed in shard order, each checked against the judge manifest: size
before reading, sha256 (hashed a shard ahead in a thread) at its end. Pairs go to
`pairs/pairs-<NNNNN>.jsonl.zst`, at most `pairs.records_per_file` each, one zstd frame per
file, first as `.pairs-<NNNNN>.jsonl.zst.<token>.tmp` (a name of this merge's own), renamed only once the file is full AND every
shard it drew from has been verified to the end: a bad shard never reaches a finished file.

Resume state, `pairs/merge_state.json`, rewritten atomically after each shard that finished
a file (the progress is durable file by file):
    params    what the output bytes depend on: iter, tie_break, allow_truncated, min_valid,
              records_per_file, zstd level, single- or multi-threaded zstd
    shards    judge shards read so far: shard, path, bytes, sha256, lines
    files     finished files: name, records, bytes, sha256, raw_bytes, sources (shard and
              line range), and `start`, the position (shard, line) and running stats at
              which the file began
    next      where the open file begins, with the stats up to there
    complete  true once stats.json and index.json are written
A rerun deletes stray temp files, checks every finished file (size, sha256) and that every
shard read still has the sha256 it had, rewinds to the first file that fails either check
(a changed `params` rewinds to the start), and continues at `next`: the open file is rebuilt
from its first record with the same compressor settings, so the bytes equal those of an
uninterrupted merge. A rerun after completion only checks the files.

A shard that is missing, truncated, has another hash, a line that is not JSON or a record
that lacks a field or has one of the wrong type is refused: the error names the shard and
line, the judge manifest marks the shard failed (so `submit stage=judge` regenerates it),
finished files are kept. Nothing else blames a judge shard: an I/O error while reading one
(NFS EIO, ESTALE: transient) and an error of the pairing rules themselves fail the merge
alone, and a rerun retries it.

One merger per iteration, across nodes: `pairs/.merge.lock`, created O_EXCL (locks.py);
`flock` is refused on Lustre mounted `noflock` and node-local under `localflock` or NFS
`nolock`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
import zstandard

from . import pair_rules
from .config import Config, env_threads
from .faults import commit_point
from .files import CorruptFileError, FileInfo, atomic_write_json, fsync_dir, read_json, sha256_file, verify_file
from .locks import LockBusyError, file_lock
from .manifest import StageManifest, note_read
from .schema import Response, ResponseSet, SchemaError
from .shards import UpstreamNotReadyError, _ranges

STATE_VERSION = 1
UPSTREAM = "judge"
READ_CHUNK = 4 << 20  # judge shard bytes per read; hashed and split into lines
WRITE_CHUNK = 1 << 20  # encoded pairs handed to zstd per call: fewer Python -> C crossings


class ShardRejectedError(CorruptFileError):
    """A judge shard the merge refused; the judge manifest now marks it failed."""


@dataclass(frozen=True)
class Source:
    shard: int
    path: Path
    bytes: int
    sha256: str


def judge_sources(cfg: Config) -> list[Source]:
    """Every judge shard's recorded output, in shard order; error if any is not done.
    Cheap (no hashing): the merge hashes each shard as it streams it."""
    man = StageManifest(cfg.manifest_root, cfg.run.iter, UPSTREAM)
    plan = man.plan()
    if plan is None:
        raise UpstreamNotReadyError(f"stage judge of iter {cfg.run.iter} has not been planned yet: run it first")
    out, missing = [], []
    for st in man.states(plan["n_shards"]):
        if st.state == "done" and st.output:
            out.append(Source(st.shard, Path(st.output["path"]), st.output["bytes"], st.output["sha256"]))
            note_read(cfg.run.iter, UPSTREAM, st.shard, st.output.get("digest") or st.output["sha256"])
        else:
            missing.append(st.shard)
    if missing:
        raise UpstreamNotReadyError(
            f"stage judge of iter {cfg.run.iter}: shard(s) {_ranges(missing)} of {plan['n_shards']} are not done: "
            f"run `python -m srlm_hpc.submit stage=judge iter={cfg.run.iter}` first")
    return out


def _copy(stats: dict) -> dict:
    return orjson.loads(orjson.dumps(stats))


# ---- one output file -----------------------------------------------------------------------
class _Sink:
    """Where zstd writes: the temp file, hashed and counted on the way."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.sha, self.bytes = hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class _OutFile:
    def __init__(self, out_dir: Path, number: int, level: int, threads: int, shard: int, line: int, stats: dict,
                 token: str = ""):
        self.name = f"pairs-{number:05d}.jsonl.zst"
        token = token or uuid.uuid4().hex[:12]
        self.final, self.tmp = out_dir / self.name, out_dir / f".{self.name}.{token}.tmp"
        self.start = {"shard": shard, "line": line, "stats": _copy(stats)}
        self.sources: list[list[int]] = []  # [shard, first line, end line) the file drew on
        self.records = self.raw = 0
        self._sink = _Sink(self.tmp)
        # one frame, no content size (unknown while streaming), a checksum zstd -d verifies
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        self._zw = cctx.stream_writer(self._sink, closefd=False)
        self._buf: list[bytes] = []
        self._buflen = 0

    def add(self, line: bytes) -> None:
        self._buf.append(line)
        self._buflen += len(line)
        self.records += 1
        if self._buflen >= WRITE_CHUNK:
            self._drain()

    def _drain(self) -> None:
        if self._buf:
            data = b"".join(self._buf)
            self._zw.write(data)
            self.raw += len(data)
            self._buf, self._buflen = [], 0

    def finish(self) -> None:
        self._drain()
        self._zw.close()  # ends the frame; closefd=False leaves the file to us
        self._sink.f.flush()
        os.fsync(self._sink.f.fileno())
        self._sink.f.close()

    def discard(self) -> None:
        self._sink.f.close()
        self.tmp.unlink(missing_ok=True)

    def entry(self) -> dict:
        return {"name": self.name, "records": self.records, "bytes": self._sink.bytes,
                "sha256": self._sink.sha.hexdigest(), "raw_bytes": self.raw,
                "sources": [{"shard": s, "lines": [a, b]} for s, a, b in self.sources if b > a],
                "start": self.start}


# ---- reading a judge shard --------------------------------------------------------------
def _shard_lines(src: Source, counter: list[int], digest: Future):
    """(index, line) of every line; raises at the end unless `digest` (the file's sha256,
    hashed ahead in another thread) matches the manifest's. `counter[0]` ends as the number
    of lines."""
    try:
        size = os.stat(src.path).st_size
    except FileNotFoundError as e:
        raise CorruptFileError(f"{src.path}: missing (the judge manifest records {src.bytes} bytes)") from e
    if size != src.bytes:
        raise CorruptFileError(f"{src.path}: {size} bytes, the judge manifest records {src.bytes} "
                               f"(truncated or rewritten)")
    rest, n = b"", 0
    dctx = zstandard.ZstdDecompressor().decompressobj() if src.path.suffix == ".zst" else None
    try:
        f = open(src.path, "rb")
    except FileNotFoundError as e:
        raise CorruptFileError(f"{src.path}: missing (the judge manifest records {src.bytes} bytes)") from e
    # Any other OSError (EIO, ESTALE on NFS) propagates as it is: most likely transient, and
    # not the shard's fault, so the shard is not rejected and a rerun of the merge retries.
    with f:
        while True:
            raw = f.read(READ_CHUNK)
            try:
                block = dctx.decompress(raw) if dctx is not None and raw else raw
            except zstandard.ZstdError as e:  # the bytes are bad: the shard's fault
                raise CorruptFileError(f"{src.path}: corrupt zstd data ({e})") from e
            if not raw:
                break
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield n, line
                n += 1
    if rest:
        yield n, rest
        n += 1
    sha = digest.result()
    if sha != src.sha256:
        raise CorruptFileError(f"{src.path}: sha256 {sha[:12]}... does not match the judge "
                               f"manifest's {src.sha256[:12]}... (changed since the judge wrote it)")
    counter[0] = n


def _response_set(d, path: Path, lineno: int) -> ResponseSet:
    if type(d) is not dict:
        raise SchemaError(f"{path}:{lineno}: expected a JSON object, got {type(d).__name__}")
    try:  # fast path; the slow one below names a missing field, or accepts extra keys
        rs = ResponseSet(d["prompt_id"], d["prompt"], [Response(**r) for r in d["responses"]])
    except (KeyError, TypeError):
        rs = ResponseSet.from_dict(d, where=f"{path}:{lineno}")
    for i, r in enumerate(d["responses"]):  # optional in a ResponseSet, required once judged
        if "score" not in r or "judge_scores" not in r:
            lacks = ", ".join(k for k in ("judge_scores", "score") if k not in r)
            raise SchemaError(f"{path}:{lineno}: judged response responses[{i}] lacks field(s) {lacks}")
    return rs


# ---- the merge ------------------------------------------------------------------------------
@contextlib.contextmanager
def _lock(out_dir: Path):
    """One merger per iteration, on any node: a second one would rewrite the same files.
    The holder touches the lock every 30 s; one untouched for 10 min was left by a dead node."""
    try:
        with file_lock(out_dir / ".merge.lock", f"the merge of {out_dir}", stale_s=600, refresh_s=30) as held:
            yield held
    except LockBusyError as e:
        raise RuntimeError(f"{out_dir}: another merge of this iteration is running; {e}") from e


def resolved_threads(cfg: Config) -> int:
    return cfg.pairs.zstd_threads if cfg.pairs.zstd_threads >= 0 else env_threads()


def merge(cfg: Config, log=print) -> FileInfo:
    """Merge the judge shards of cfg.run.iter into pairs files; returns index.json's FileInfo.
    The pairing rules and the statistics are pair_rules.py's (build_pair, add_to_stats)."""
    out_dir = cfg.stage_dir("pairs")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir):
        return _Merge(cfg, out_dir, pair_rules, log).run()


class _Merge:
    def __init__(self, cfg: Config, out_dir: Path, rules, log):
        self.cfg, self.dir, self.rules, self.log = cfg, out_dir, rules, log
        self.state_path, self.index_path = out_dir / "merge_state.json", out_dir / "index.json"
        self.threads = resolved_threads(cfg)
        self.token = uuid.uuid4().hex[:12]  # this merge's temp names
        p = cfg.pairs
        self.params = {"version": STATE_VERSION, "iter": cfg.run.iter, "tie_break": p.tie_break,
                       "allow_truncated": p.allow_truncated,
                       "min_valid": p.min_valid, "records_per_file": p.records_per_file,
                       "zstd_level": p.zstd_level, "zstd_multithreaded": self.threads > 0}
        if p.records_per_file < 1:
            raise ValueError(f"pairs.records_per_file={p.records_per_file}: expected an integer >= 1")

    # -- state ---------------------------------------------------------------------------
    def fresh(self) -> dict:
        return {"params": self.params, "shards": [], "files": [], "complete": False,
                "next": {"shard": 0, "line": 0, "stats": self.rules.new_stats()}}

    def load_state(self, sources: list[Source]) -> dict:
        if not self.state_path.exists():
            return self.fresh()
        try:
            state = read_json(self.state_path)
        except CorruptFileError as e:  # written atomically; only a disk fault gets here
            self.log(f"[merge] {e}; starting over")
            return self.fresh()
        if state.get("params") != self.params:
            self.log(f"[merge] {self.state_path}: merge settings changed from {state.get('params')} to "
                     f"{self.params}; starting over")
            return self.fresh()
        rewind = len(state["files"])
        changed = [s["shard"] for s in state["shards"]
                   if s["shard"] >= len(sources) or sources[s["shard"]].sha256 != s["sha256"]]
        if changed:  # regenerated since it was read: rewind to the last file start before it
            k = min(changed)
            if not state["files"]:
                self.log(f"[merge] judge shard {k} changed since it was read; starting over")
                return self.fresh()
            rewind = max((i for i, f in enumerate(state["files"]) if (f["start"]["shard"], f["start"]["line"]) <= (k, 0)),
                         default=0)
            self.log(f"[merge] judge shard {k} changed since it was merged; redoing from pairs-{rewind:05d}")
        for i, f in enumerate(state["files"][:rewind]):
            try:
                verify_file(self.dir / f["name"], f["bytes"], f["sha256"])
            except CorruptFileError as e:
                self.log(f"[merge] {e}; redoing from {f['name']}")
                rewind = i
                break
        if rewind < len(state["files"]):
            nxt = state["files"][rewind]["start"]
            state["files"], state["next"], state["complete"] = state["files"][:rewind], nxt, False
            state["shards"] = [s for s in state["shards"]
                               if s["shard"] < nxt["shard"] or (s["shard"] == nxt["shard"] and nxt["line"] > 0)]
        return state

    def save(self, state: dict) -> None:
        atomic_write_json(self.state_path, state)

    # -- run -----------------------------------------------------------------------------
    def run(self) -> FileInfo:
        sources = judge_sources(self.cfg)
        state = self.load_state(sources)
        total = sum(f["records"] for f in state["files"])
        if state["complete"]:
            try:
                verify_file(self.index_path, state["index"]["bytes"], state["index"]["sha256"])
                return FileInfo(str(self.index_path), total, state["index"]["bytes"], state["index"]["sha256"])
            except CorruptFileError:
                state["complete"] = False  # the files are fine (checked above): write the index again
        self.index_path.unlink(missing_ok=True)  # an index must never list files being rewritten
        for tmp in self.dir.glob(".pairs-*.tmp"):
            tmp.unlink()
        nxt = state["next"]
        if nxt["shard"] < len(sources) and (state["files"] or nxt["shard"] or nxt["line"]):
            self.log(f"[merge] iter {self.cfg.run.iter}: {len(state['files'])} file(s) already merged; "
                     f"resuming at judge shard {nxt['shard']} line {nxt['line']} of {len(sources)} shards")
        stats = _copy(nxt["stats"])
        self.stream(state, sources, stats)
        return self.finalize(state, stats, sources)

    def new_file(self, state: dict, pending: list, shard: int, line: int, stats: dict) -> _OutFile:
        return _OutFile(self.dir, len(state["files"]) + len(pending), self.cfg.pairs.zstd_level, self.threads,
                        shard, line, stats, token=self.token)

    def stream(self, state: dict, sources: list[Source], stats: dict) -> None:
        it, p = self.cfg.run.iter, self.cfg.pairs
        start_shard, start_line = state["next"]["shard"], state["next"]["line"]
        pending: list[_OutFile] = []
        out = self.new_file(state, pending, start_shard, start_line, stats)
        dumps, opt, rpf = orjson.dumps, orjson.OPT_APPEND_NEWLINE, p.records_per_file
        build, add_to_stats = self.rules.build_pair, self.rules.add_to_stats
        # sha256 runs one shard ahead in a thread (hashlib lets go of the GIL): ~20 % of the
        # merge's CPU time when done inline (measured, bench/merge.py), and it warms the page cache
        hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-sha256")
        todo = sources[start_shard:]
        digests = [hasher.submit(sha256_file, src.path) for src in todo[:1]]
        try:
            for k, src in enumerate(todo):
                if k + 1 < len(todo):
                    digests.append(hasher.submit(sha256_file, todo[k + 1].path))
                skip = start_line if src.shard == start_shard else 0
                out.sources.append([src.shard, skip, skip])
                counter = [0]
                try:
                    for i, line in _shard_lines(src, counter, digests[k]):
                        if i < skip or not line or line.isspace():
                            continue
                        try:
                            d = orjson.loads(line)
                        except orjson.JSONDecodeError as e:
                            raise CorruptFileError(f"{src.path}:{i + 1}: not valid JSON ({e})") from e
                        rs = _response_set(d, src.path, i + 1)
                        try:  # a TypeError is a field of the wrong type: the record's schema, the
                            # shard's fault; any other error is the rules' own and rejects nothing
                            pair, why = build(rs, it, p.tie_break, p.min_valid, p.allow_truncated)
                            add_to_stats(stats, rs, pair, why)
                        except TypeError as e:
                            raise SchemaError(f"{src.path}:{i + 1}: bad judge record ({e})") from e
                        if pair is None:
                            continue
                        out.add(dumps(pair, option=opt))
                        if out.records == rpf:
                            out.sources[-1][2] = i + 1
                            out.finish()
                            pending.append(out)
                            out = self.new_file(state, pending, src.shard, i + 1, stats)
                            out.sources.append([src.shard, i + 1, i + 1])
                except (CorruptFileError, SchemaError) as e:  # the shard's fault; I/O and rule errors propagate
                    raise self.reject(src, e, state) from e
                n_lines = counter[0]
                out.sources[-1][2] = n_lines
                if (out.start["shard"], out.start["line"]) == (src.shard, n_lines):
                    out.start.update(shard=src.shard + 1, line=0)  # nothing of this shard is left to it
                if state["shards"] and state["shards"][-1]["shard"] == src.shard:
                    state["shards"].pop()  # read again on resume (from a line inside it)
                state["shards"].append({"shard": src.shard, "path": self.rel(src.path), "bytes": src.bytes,
                                        "sha256": src.sha256, "lines": n_lines})
                if pending:
                    self.commit(state, pending, out.start)
                    pending = []
            if out.records:
                out.finish()
                pending.append(out)
                out = None
            self.commit(state, pending, {"shard": len(sources), "line": 0, "stats": _copy(stats)})
        finally:
            hasher.shutdown(wait=True, cancel_futures=True)
            for f in pending + ([out] if out is not None else []):
                f.discard()

    def reject(self, src: Source, e: BaseException, state: dict) -> ShardRejectedError:
        err = ShardRejectedError(
            f"judge shard {src.shard} refused by the merge: {e}\n  It is now marked failed in the judge manifest: "
            f"regenerate it with `python -m srlm_hpc.submit stage=judge iter={self.cfg.run.iter}`, then rerun the "
            f"merge; it resumes after the {len(state['files'])} finished pairs file(s), which are kept.")
        StageManifest(self.cfg.manifest_root, self.cfg.run.iter, UPSTREAM).mark_failed(src.shard, err)
        return err

    def commit(self, state: dict, pending: list[_OutFile], nxt: dict) -> None:
        """Rename the finished files, then record them: a kill between the two only redoes them."""
        for f in pending:
            commit_point()
            os.replace(f.tmp, f.final)
            commit_point(after=True)
        if pending:
            fsync_dir(self.dir)
        state["files"] += [f.entry() for f in pending]
        pending.clear()
        state["next"] = nxt
        self.save(state)

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.cfg.iter_dir())

    def finalize(self, state: dict, stats: dict, sources: list[Source]) -> FileInfo:
        total = sum(f["records"] for f in state["files"])
        atomic_write_json(self.dir / "stats.json", self.rules.stats_report(stats, self.cfg.run.iter))
        keys = ("records", "bytes", "sha256", "raw_bytes", "sources")
        index = {"iter": self.cfg.run.iter, "records": total, "params": self.params,
                 "files": [{"path": f["name"], **{k: f[k] for k in keys}} for f in state["files"]],
                 "shards": state["shards"], "stats": "stats.json"}
        atomic_write_json(self.index_path, index)
        listed = {f["name"] for f in state["files"]}
        for stray in self.dir.glob("pairs-*.jsonl.zst"):  # left by an earlier merge with other settings
            if stray.name not in listed:
                stray.unlink()
        info = FileInfo(str(self.index_path), total, self.index_path.stat().st_size, sha256_file(self.index_path))
        state["complete"], state["index"] = True, {"bytes": info.bytes, "sha256": info.sha256}
        self.save(state)
        self.log(f"[merge] iter {self.cfg.run.iter}: {total} pairs in {len(state['files'])} file(s) "
                 f"from {len(sources)} judge shards")
        return info

