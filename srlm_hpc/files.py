"""Files other stages read: written atomically (temp file, fsync, rename), checked before use.

A reader on a shared filesystem (NFS, Lustre) sees either the old file or the whole new
one, never a torn write: the data goes to a temp file in the same directory, is fsynced,
renamed over the target, and the directory is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import zstandard

from .faults import commit_point


class CorruptFileError(ValueError):
    """A file that does not match what was recorded, or a line that is not valid JSON."""


@dataclass(frozen=True)
class FileInfo:
    path: str
    records: int
    bytes: int
    sha256: str


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read without changing it (os.umask sets it, and threads race on that)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """What open() would give a new file: 0666 less the umask (mkstemp's 0600 would lock a
    shared group directory's readers out)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temp file beside `path` (a unique name: two writers never share one); on clean
    exit fsync it and rename it over `path`, with the permissions the umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        commit_point()
        os.replace(tmp, path)
        commit_point(after=True)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the finished directory `tmp` at `dest`. The previous `dest` becomes `dest.old` first
    and is removed last, so a crash leaves the old or the new one whole (a reader that finds
    no `dest` falls back to `dest.old`)."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        commit_point()
        dest.rename(old)
        commit_point(after=True)  # neither at dest now: readers fall back to dest.old
    commit_point()
    tmp.rename(dest)
    commit_point(after=True)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_replaced_dir(dest: Path) -> str | None:
    """Finish a `replace_dir` that a kill cut short, as its owner's next attempt starts: with
    `dest` in place, `dest.old` is stale and goes; with `dest` missing (killed between the two
    renames), `dest.old` is the last whole one and moves back. What was done, or None."""
    old = dest.with_name(dest.name + ".old")
    if not old.is_dir():
        return None
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        return f"removed {old.name}"
    old.rename(dest)
    fsync_dir(dest.parent)
    return f"restored {dest.name} from {old.name}"


def temp_dir_beside(dest: Path, suffix: str = ".tmp") -> Path:
    """A new, uniquely named, hidden folder beside `dest` to build it in: two writers (a
    duplicate task, a requeued one whose old process lives) never share one. It gets the mode
    mkdir would give (0777 less the umask), not mkdtemp's 0700, which renamed into place would
    lock the group's other users out of a model or checkpoint."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _short_host() -> str:
    return socket.gethostname().split(".")[0]  # no dots: the tag stays one field of the name


def writer_tag() -> str:
    """`<host>-<pid>` in a temp file's name: whose it is, so one left by a killed process can
    be told from one a live process is writing (sweep_dead_writers_temps)."""
    return f"{_short_host()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_writers_temps(folder: Path, max_age_s: float = 3600) -> list[str]:
    """Remove the `.<name>.<host>-<pid>.*.tmp` files in `folder` whose writer is gone: a process
    of this host that no longer runs, or any writer's after `max_age_s` (no write of these
    small files takes an hour). Safe beside live writers of other shards and of submit,
    unlike `sweep_temps`: a heartbeat or manifest write cut by a SIGKILL leaves these."""
    removed = []
    if not folder.is_dir():
        return removed
    host, now = _short_host(), time.time()
    for p in folder.glob(".*.tmp"):
        tag = p.name[:-len(".tmp")].split(".")[-2] if p.name.count(".") >= 3 else ""
        who, _, pid = tag.rpartition("-")
        try:
            dead = who == host and pid.isdigit() and not _pid_alive(int(pid))
            if p.is_file() and (dead or now - p.stat().st_mtime > max_age_s):
                p.unlink()
                removed.append(p.name)
        except FileNotFoundError:
            continue
    return removed


def sweep_temps(folder: Path, names: tuple[str, ...]) -> list[str]:
    """Remove the temp files and folders a killed writer left in `folder`: `.<name>.*.tmp` for
    each name (and the old fixed `<name>.tmp` and `.<name>.tmp`). Only the owner of the shard those names belong
    to calls this, so no live writer's temp is removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for p in [*folder.glob(f".{name}.*.tmp"), folder / f"{name}.tmp", folder / f".{name}.tmp"]:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink(missing_ok=True)
            else:
                continue
            removed.append(p.name)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{path}: not valid JSON ({e})") from e


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_info(path: str | Path, records: int) -> FileInfo:
    path = Path(path)
    return FileInfo(str(path), records, path.stat().st_size, sha256_file(path))


def file_stamp(path: str | Path) -> list[int]:
    """[size, mtime_ns, inode]: while these are unchanged the bytes are taken as unchanged."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify_file(path: str | Path, size: int, sha256: str, stamp: list[int] | None = None) -> None:
    """Raise CorruptFileError unless `path` has exactly the recorded size and hash. Given the
    `stamp` recorded with the hash, a file whose size, mtime and inode are all unchanged is
    not hashed again (a 70B model folder takes minutes to hash)."""
    path = Path(path)
    try:
        now = file_stamp(path)
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: missing (expected {size} bytes, sha256 {sha256[:12]}...)") from None
    actual = now[0]
    if actual != size:
        raise CorruptFileError(f"{path}: {actual} bytes, expected {size} (truncated or rewritten)")
    if stamp is not None and list(stamp) == now:
        return
    digest = sha256_file(path)
    if digest != sha256:
        raise CorruptFileError(f"{path}: sha256 {digest[:12]}... does not match recorded {sha256[:12]}...")


# ---- a stage's output: one file, or a file standing for several ------------------------------
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def output_parts(path: str | Path) -> list[dict]:
    """Every other file the output at `path` consists of, each with size, sha256 and stamp:
    all files of a model folder (weights shards, config, tokenizer) when `path` is its weights
    file; the files an index lists (the pairs stage's index.json) when it lists some."""
    path = Path(path)
    if path.name in MODEL_FILES and (path.parent / "config.json").exists():
        files = sorted(p for p in path.parent.rglob("*") if p.is_file() and p != path
                       and not any(c.startswith(".") for c in p.relative_to(path.parent).parts))
        return [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p), "stamp": file_stamp(p)}
                for p in files]
    if path.suffix == ".json":
        with contextlib.suppress(ValueError, OSError, TypeError, KeyError, AttributeError):
            index = json.loads(path.read_text())
            listed = index.get("files")
            if isinstance(listed, list) and listed and all({"path", "bytes", "sha256"} <= set(f) for f in listed):
                parts = [{"path": str(path.parent / f["path"]), "bytes": f["bytes"], "sha256": f["sha256"],
                          "stamp": file_stamp(path.parent / f["path"])} for f in listed]
                side = index.get("stats")  # a file beside the index that it names (the pairs' stats.json)
                if isinstance(side, str) and (path.parent / side).is_file():
                    p = path.parent / side
                    parts.append({"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p),
                                  "stamp": file_stamp(p)})
                return parts
    return []


def describe_output(info: FileInfo) -> dict:
    """What the manifest records of a shard's output: the FileInfo, its stamp, its parts and a
    digest over all of them (what a downstream shard records as the input it read)."""
    out = asdict(info)
    out["stamp"] = file_stamp(info.path)
    out["parts"] = output_parts(info.path)
    out["digest"] = output_digest(out)
    return out


def output_digest(output: dict) -> str:
    parts = output.get("parts") or []
    if not parts:
        return output["sha256"]
    h = hashlib.sha256(output["sha256"].encode())
    for p in sorted(parts, key=lambda p: p["path"]):
        h.update(f"\0{os.path.basename(p['path'])}\0{p['sha256']}".encode())
    return h.hexdigest()


def output_info(output: dict) -> FileInfo:
    return FileInfo(output["path"], output["records"], output["bytes"], output["sha256"])


def verify_output(output: dict, full: bool = False) -> None:
    """Raise CorruptFileError unless the output file and every part still match. `full`:
    hash everything, even files whose stamp is unchanged."""
    verify_file(output["path"], output["bytes"], output["sha256"], None if full else output.get("stamp"))
    for p in output.get("parts") or []:
        verify_file(p["path"], p["bytes"], p["sha256"], None if full else p.get("stamp"))


def encode_jsonl(records: Iterable[dict]) -> tuple[bytes, int]:
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records]
    return ("".join(line + "\n" for line in lines)).encode(), len(lines)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> FileInfo:
    """JSON Lines, one sorted-key object per line, written atomically. zstd when path ends .zst."""
    data, n = encode_jsonl(records)
    if str(path).endswith(".zst"):
        data = zstandard.ZstdCompressor(level=3).compress(data)
    atomic_write_bytes(path, data)
    return file_info(path, n)


def _zstd_blocks(raw: io.BufferedIOBase, path: Path) -> Iterator[bytes]:
    """Decompressed bytes of every frame; a frame cut short is an error, not a quiet EOF
    (zstandard's stream_reader returns fewer bytes without complaint)."""
    dctx = zstandard.ZstdDecompressor()
    obj, fed = dctx.decompressobj(), False
    while chunk := raw.read(1 << 20):
        while chunk:
            fed = True
            yield obj.decompress(chunk)
            if obj.eof:  # a frame ended; what follows belongs to the next one
                chunk, obj, fed = obj.unused_data, dctx.decompressobj(), False
            else:
                chunk = b""
    if fed and not obj.eof:
        raise CorruptFileError(f"{path}: zstd frame cut short (truncated file)")


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        blocks = _zstd_blocks(raw, path) if path.suffix == ".zst" else iter(lambda: raw.read(1 << 20), b"")
        rest = b""
        try:
            for block in blocks:
                parts = (rest + block).split(b"\n")
                rest = parts.pop()
                yield from parts
        except zstandard.ZstdError as e:
            raise CorruptFileError(f"{path}: corrupt zstd stream ({e})") from e
        if rest:
            yield rest


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Records of a JSON Lines file (.zst transparently); errors name the file and line."""
    path = Path(path)
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptFileError(f"{path}:{lineno}: not a JSON object ({e})") from e
        if not isinstance(obj, dict):
            raise CorruptFileError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))
