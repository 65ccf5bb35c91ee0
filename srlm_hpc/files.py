"""Files other stages read: written atomically (temp file, fsync, rename), checked before use.

A reader on a shared filesystem (NFS, Lustre) sees either the old file or the whole new
one, never a torn write: the data goes to a temp file in the same directory, is fsynced,
renamed over the target, and the directory is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import zstandard


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


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temp file beside `path`; on clean exit fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
        dest.rename(old)
    tmp.rename(dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


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


def verify_file(path: str | Path, size: int, sha256: str) -> None:
    """Raise CorruptFileError unless `path` has exactly the recorded size and hash."""
    path = Path(path)
    if not path.exists():
        raise CorruptFileError(f"{path}: missing (expected {size} bytes, sha256 {sha256[:12]}...)")
    actual = path.stat().st_size
    if actual != size:
        raise CorruptFileError(f"{path}: {actual} bytes, expected {size} (truncated or rewritten)")
    digest = sha256_file(path)
    if digest != sha256:
        raise CorruptFileError(f"{path}: sha256 {digest[:12]}... does not match recorded {sha256[:12]}...")


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
