"""bench/orchestration.py at 20 shards (the load guard off): the result file has the headline
issue 15 names, planning finds nothing to run upstream and every shard downstream, and a
downstream shard's input check read its one upstream shard's 32 records."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_run_writes_the_headline_and_plans_what_is_left(tmp_path):
    out = tmp_path / "orchestration.json"
    env = {**os.environ, "SRLM_BENCH_MAX_LOAD_PER_CORE": "1e9"}  # any load is quiet enough: the shape is tested
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "orchestration.py"), "--shards", "20", "--shard-mb",
                           "0.01", "--repeats", "1", "--dir", str(tmp_path / "runs"), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert list(data)[0] == "headline"
    assert {"status_20_s", "plan_20_s", "verify_one_shard_20_s", "verify_one_shard_2_s", "verify_first_shard_20_s",
            "before_status_verify_20_s", "before_plan_full_rehash_20_s", "before_verify_one_shard_full_rehash_20_s",
            "load_avg_start", "load_avg_end"} <= set(data["headline"])
    assert all(v >= 0 for v in data["headline"].values())
    assert data["plan"]["responses_to_run"] == 0 and data["plan"]["judge_to_run"] == 20
    assert data["status_counts"]["responses"]["done"] == 20 and data["status_counts"]["judge"]["pending"] == 20
    assert data["verify_one_shard"]["records"] == 32 and data["verify_one_shard"]["inputs_recorded"] == 1
    assert data["setup"]["bytes_written"] > 20 * 9000  # every byte written (10 kB a shard): hashing is real
    assert "orchestration.py --shards 20" in data["command"] and not (tmp_path / "runs").exists()
