"""bench/gpu_check.py: the one-shot GPU check. Here (no GPU) its dry mode runs end to end on
the CPU, and its refusal without CUDA is one line; the verdicts against the issue's targets
are checked on hand-made part results.

    python -m pytest tests/kernels/test_gpu_check.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def results_listing() -> dict:
    """The check's own files in bench/results (other benchmarks may write there meanwhile)."""
    d = ROOT / "bench" / "results"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("gpu_check*")} if d.exists() else {}


def run(*args, timeout=1800):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the real check would run")
def test_without_cuda_it_exits_2_with_one_line_and_writes_nothing():
    before = results_listing()
    proc = run()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--dry" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert results_listing() == before


def test_unknown_part_is_a_usage_error():
    proc = run("--dry", "--parts", "build,warp-drive")
    assert proc.returncode == 2 and "unknown part(s) ['warp-drive']" in proc.stderr


def test_a_part_past_its_budget_is_killed_and_recorded_failed(tmp_path):
    r = gpu_check.run_part("pipeline", 1.0, tmp_path, dry=True)
    assert r["status"] == "failed" and r["reason"].startswith("timed out after 1 s")
    assert r["seconds"] < 30


def fake_parts(fwd, fb, tri_fwd, tri_fb, mem_fwd=0.03, mem_fb=0.5):
    return {"timing": {"status": "passed", "copy_GBps": 3000.0, "methods": {
        "srlm op": {"fwd_ms": fwd, "fwd_extra_MiB": mem_fwd},
        "srlm op inplace-bwd": {"fwd+bwd_ms": fb, "fwd+bwd_extra_MiB": mem_fb},
        "triton single-pass (anchor)": {"fwd_ms": tri_fwd, "fwd+bwd_ms": tri_fb}}},
        "correctness": {"status": "passed", "cases": [{"status": "passed"}, {"status": "skipped"}]}}


def test_headline_verdicts_against_the_targets():
    h = gpu_check.headline(fake_parts(0.55, 1.9, 0.66, 1.80), {"gpu": "NVIDIA H100 80GB HBM3"})
    assert h["fwd_vs_triton"] == pytest.approx(0.833, abs=1e-3)
    assert h["targets_met"] == {"fwd_vs_triton<=0.91": True, "fwd_bwd_vs_triton<=1.11": True,
                                "h100_fwd<=0.6ms": True, "h100_fwd_bwd_inplace<=2.0ms": True,
                                "extra_mem_fwd_MiB<=16": True, "extra_mem_fwd_bwd_inplace_MiB<=16": True}
    assert h["correctness"] == "1/1 passed, 1 skipped"
    # Another GPU: only the ratios to the Triton kernel (measured in the same run) count.
    h = gpu_check.headline(fake_parts(0.70, 1.98, 0.70, 1.80, mem_fb=40.0), {"gpu": "NVIDIA H200"})
    assert h["targets_met"] == {"fwd_vs_triton<=0.91": False, "fwd_bwd_vs_triton<=1.11": True,
                                "extra_mem_fwd_MiB<=16": True, "extra_mem_fwd_bwd_inplace_MiB<=16": False}


def test_dry_mode_runs_every_cpu_part_end_to_end(tmp_path):
    """The CI run of the plumbing: all six parts on the CPU at small sizes, results in tmp_path."""
    before = results_listing()
    proc = run("--dry", "--out-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results_listing() == before  # nothing written into bench/results
    (out,) = tmp_path.glob("gpu_check-*-cpu-dry.json")
    rec = json.loads(out.read_text())
    assert list(rec)[0] == "headline" and rec["dry"] is True
    for key in ("torch", "cuda", "command", "load_average_before", "load_average_after", "git"):
        assert key in rec
    parts = rec["parts"]
    assert list(parts) == gpu_check.PARTS
    assert all(parts[p]["status"] == "passed" for p in gpu_check.PARTS), {p: parts[p].get("reason") for p in parts}
    assert parts["build"]["with_cuda"] is False and Path(parts["build"]["so"]).exists()
    assert parts["tests"]["summary"].startswith("1 passed, 0 failed") and parts["tests"]["tests"] == 1
    cases = {c["case"]: c for c in parts["correctness"]["cases"]}
    ran = [c for c in cases.values() if c["status"] == "passed"]
    assert len(ran) == 3 and not [c for c in cases.values() if c["status"] == "failed"]
    for name in ("side_stream", "graph", "all_written", "big_offsets"):  # CUDA/size only, with a reason
        assert cases[name]["status"] == "skipped" and cases[name]["reason"]
    sweep = next(c for c in ran if c["case"].startswith("V x dtype"))
    assert sweep["checked"] == 6 * 3 * 3 * 2
    methods = parts["timing"]["methods"]
    for name in ("naive fp32", "srlm op", "srlm op inplace-bwd"):
        assert methods[name]["fwd_ms"] > 0 and methods[name]["fwd+bwd_ms"] > 0
        assert methods[name]["max_rel_diff_vs_float64"] < 1e-5
    assert methods["triton single-pass (anchor)"]["status"] == "skipped"
    assert parts["dpo"]["ours"]["tokens_per_s"] > 0 and parts["dpo"]["trl"]["tokens_per_s"] > 0
    assert parts["dpo"]["trl"]["token_mismatches"] == 0  # both sides trained on the same tokens
    assert parts["pipeline"]["engines"]["hf"]["status"] == "passed"
    assert rec["headline"]["fwd_ms"] == methods["srlm op"]["fwd_ms"]
    assert rec["headline"]["parts"] == {p: "passed" for p in gpu_check.PARTS}
