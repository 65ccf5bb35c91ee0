import json
import subprocess

import pytest

from srlm_hpc.files import CorruptFileError, atomic_open, iter_jsonl, read_jsonl, verify_file, write_jsonl


def test_jsonl_round_trip_plain_and_zstd(tmp_path):
    recs = [{"a": i, "text": "caf\u00e9 \u201cquoted\u201d"} for i in range(5)]
    for name in ("x.jsonl", "x.jsonl.zst"):
        info = write_jsonl(tmp_path / name, recs)
        assert read_jsonl(tmp_path / name) == recs and info.records == 5
        verify_file(info.path, info.bytes, info.sha256)
    out = subprocess.run(["zstd", "-dc", str(tmp_path / "x.jsonl.zst")], capture_output=True, check=True).stdout
    assert [json.loads(line) for line in out.decode().splitlines()] == recs


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_bad_line_is_named(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(CorruptFileError, match=r"s\.jsonl:2: not a JSON object"):
        list(iter_jsonl(p))


def test_verify_catches_truncation_and_rewrite(tmp_path):
    info = write_jsonl(tmp_path / "s.jsonl", [{"a": 1}, {"a": 2}])
    (tmp_path / "s.jsonl").write_bytes((tmp_path / "s.jsonl").read_bytes()[:-3])
    with pytest.raises(CorruptFileError, match="truncated"):
        verify_file(info.path, info.bytes, info.sha256)
    (tmp_path / "s.jsonl").write_text('{"a": 1}\n{"a": 3}\n')
    with pytest.raises(CorruptFileError, match="does not match"):
        verify_file(info.path, info.bytes, info.sha256)


def test_corrupt_zstd_is_a_clear_error(tmp_path):
    write_jsonl(tmp_path / "s.jsonl.zst", [{"a": i} for i in range(100)])
    data = (tmp_path / "s.jsonl.zst").read_bytes()
    (tmp_path / "s.jsonl.zst").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="s.jsonl.zst"):
        list(iter_jsonl(tmp_path / "s.jsonl.zst"))
