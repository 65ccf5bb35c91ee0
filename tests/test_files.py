import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

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


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_written_files_and_folders_take_the_umask_not_mkstemps_0600(tmp_path, umask):
    """A shared group directory (umask 002) needs group-readable outputs: a file written
    atomically and a folder built beside its destination and renamed into place (a model, a
    checkpoint) get 0666/0777 less the umask. A fresh process: the umask is read once."""
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        os.umask({umask:#o})
        from srlm_hpc.files import atomic_write_json, replace_dir, temp_dir_beside
        out = Path(sys.argv[1])
        atomic_write_json(out / "a.json", {{"x": 1}})
        tmp = temp_dir_beside(out / "model")
        (tmp / "w").write_text("w")
        replace_dir(tmp, out / "model")
    """)
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=Path(__file__).parents[1])
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask


@pytest.mark.parametrize("killed", ["between the two renames", "before removing the old one"])
def test_a_replace_dir_cut_short_is_finished_by_the_next_attempt(tmp_path, killed):
    """replace_dir moves dest to dest.old, the new folder to dest, then removes dest.old; a
    kill between the steps leaves dest.old, which recover_replaced_dir resolves."""
    from srlm_hpc.files import recover_replaced_dir

    dest, old = tmp_path / "checkpoint", tmp_path / "checkpoint.old"
    old.mkdir()
    (old / "step").write_text("10")
    if killed == "before removing the old one":
        dest.mkdir()
        (dest / "step").write_text("20")
    want = "20" if dest.exists() else "10"  # the newest whole one
    assert recover_replaced_dir(dest) is not None
    assert (dest / "step").read_text() == want and not old.exists()
    assert recover_replaced_dir(dest) is None  # nothing left to do


def test_temps_of_killed_writers_are_swept_and_live_writers_temps_are_kept(tmp_path):
    """A SIGKILL during a heartbeat or manifest write leaves `.<name>.<host>-<pid>.*.tmp`; the
    sweep removes those of dead processes of this host (and any older than an hour), and
    never a temp a live process is still writing."""
    import os
    import signal
    import time

    from srlm_hpc.files import sweep_dead_writers_temps, writer_tag

    script = textwrap.dedent("""
        import os, signal, sys
        from srlm_hpc.files import atomic_open
        with atomic_open(sys.argv[1] + "/beat-00000.json", "w") as f:
            f.write("{}")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write, as by scancel or the OOM killer
    """)
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.glob(".beat-00000.json.*.tmp")]
    assert len(left) == 1
    mine = tmp_path / f".shard-00000.json.{writer_tag()}.abcd1234.tmp"  # this live process's
    mine.write_text("{}")
    other_host = tmp_path / ".plan.json.elsewhere-1.abcd1234.tmp"  # another node's: its pid means nothing here
    other_host.write_text("{}")
    stale = tmp_path / ".index.json.elsewhere-2.abcd1234.tmp"
    stale.write_text("{}")
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    assert sorted(sweep_dead_writers_temps(tmp_path)) == sorted([left[0], stale.name])
    assert mine.exists() and other_host.exists()
