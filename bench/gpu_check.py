"""One command that proves the GPU path the first time a GPU is lent, and records everything.

    make gpu-check                         # = python bench/gpu_check.py (a CUDA machine, <= 9 min)
    python bench/gpu_check.py --dry        # CPU: every part that needs no CUDA, small sizes
    python bench/gpu_check.py --parts build,correctness,timing   # a subset

Parts, in order, each in its own subprocess with its own time budget (a CUDA fault or a hang
costs one part, not the run; the budgets add up to 530 s, under the 9 minutes a lent GPU is
given):
  build        the log-prob op compiled for the device's arch (srlm_hpc.kernels.build)
  tests        tests/kernels/ selected with -k cuda (the CUDA-parametrised tests)
  correctness  cases the CPU cannot reach: V in {1, 7, 4095, 4097, 32001, 128257} x
               {bf16, fp16, fp32} x misaligned starts, in-place and out-of-place gradients
               against float64; > 65,535 rows; element offsets past 2^31; a side stream;
               CUDA graph capture and replay; NaN-poisoned ignored rows; every output element
               written (the caching allocator poisoned first)
  timing       forward and forward+backward at B=4 T=2048 V=128256 bf16, 73% of rows active,
               beside the anchors in the same run: naive fp32, TRL's selective_log_softmax,
               Liger's cross-entropy, the single-pass Triton kernel of
               ../shared/bench/logp_anchors.py (imported from there when present, never copied),
               and a device-to-device copy for the bandwidth ceiling; extra memory for each
  dpo          one DPO step of SmolLM2-135M, bf16 autocast, ours (the dpo stage's
               response_logps + dpo_loss, the op with in-place backward) against
               trl.DPOTrainer on the same pairs: tokens/s and peak memory
  pipeline     stage=all iter=1 on the tests' tiny random Llama with engine=hf, and with
               engine=vllm when vllm imports
A part that cannot run (no Triton, no vLLM, ...) is recorded as skipped with the reason.
Results: bench/results/gpu_check-<gpu>-cuda.json: GPU name, driver, torch and CUDA versions,
the command, load average before and after, every part, and a `headline` with the numbers the
issue's targets are about (H100: forward <= 0.6 ms, forward+backward in place <= 2.0 ms; any
GPU: <= 0.91x and <= 1.11x the Triton kernel's times; extra memory <= 16 MiB).

--dry runs the same parts on the CPU at small sizes (CUDA-only cases are recorded as skipped)
and writes to a temporary folder, never bench/results: it proves the plumbing (CI runs it,
tests/kernels/test_gpu_check.py). Without --dry and without CUDA it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import _common  # noqa: E402  (bench/_common.py: what every benchmark records)

PARTS = ["build", "tests", "correctness", "timing", "dpo", "pipeline"]
# Seconds per part on a GPU (sum 530 < 540 = 9 min). The build compiles one arch (~1-2 min on
# 16 cores); the DPO step and the pipeline are mostly model loading, TRL's setup and (vLLM)
# engine start-up. --budget-scale stretches them all (e.g. 3 for vLLM's whole pipeline).
BUDGET_S = {"build": 120, "tests": 75, "correctness": 40, "timing": 60, "dpo": 85, "pipeline": 150}
DRY_BUDGET_S = 900  # per part on 2 CPU cores; dry mode has no 9-minute promise
IGNORE = -100
ANCHORS = ROOT.parent / "shared" / "bench" / "logp_anchors.py"  # ../shared/bench from the repo root
TIMING = {"cuda": dict(B=4, T=2048, V=128256, dtype="bfloat16", active=0.73, iters=20, warmup=3),
          "cpu": dict(B=2, T=64, V=1024, dtype="float32", active=0.73, iters=5, warmup=1)}
TARGETS = {"h100_fwd_ms": 0.6, "h100_fb_inplace_ms": 2.0, "fwd_vs_triton": 0.91, "fb_vs_triton": 1.11,
           "extra_mem_mib": 16.0}


class Skip(Exception):
    """A part or case that cannot run here; the message is the recorded reason."""


# ============================================================================ orchestration
def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def gpu_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
            "machine": platform.machine()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                    sm_count=p.multi_processor_count, memory_bytes=p.total_memory,
                    gpu_count=torch.cuda.device_count())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info["driver"] = None
    return info


def run_part(part: str, timeout: float, work: Path, dry: bool) -> dict:
    """One part in a fresh process (own session, so a timeout kills its children too)."""
    result = work / f"{part}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", part, "--work", str(work),
           "--worker-budget", str(timeout)]
    cmd += ["--dry"] if dry else []
    t0 = time.monotonic()
    with open(work / f"{part}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = round(time.monotonic() - t0, 1)
    tail = (work / f"{part}.log").read_text(errors="replace")[-3000:]
    if rc is None:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s (its budget)",
                "seconds": seconds, "log_tail": tail}
    if not result.exists():
        return {"status": "failed", "reason": f"worker exited {rc} without a result", "seconds": seconds,
                "log_tail": tail}
    out = json.loads(result.read_text())
    out["seconds"] = seconds
    if out["status"] == "failed":
        out["log_tail"] = tail
    return out


def headline(parts: dict, info: dict) -> dict:
    """The few numbers the issue's targets are about, with a verdict for each."""
    h: dict = {"parts": {k: v["status"] for k, v in parts.items()}}
    t = parts.get("timing", {})
    ours = t.get("methods", {})
    fwd = ours.get("srlm op", {}).get("fwd_ms")
    fb = ours.get("srlm op inplace-bwd", {}).get("fwd+bwd_ms")
    tri = ours.get("triton single-pass (anchor)", {})
    h.update(fwd_ms=fwd, fwd_bwd_inplace_ms=fb, triton_fwd_ms=tri.get("fwd_ms"),
             triton_fwd_bwd_inplace_ms=tri.get("fwd+bwd_ms"), copy_GBps=t.get("copy_GBps"),
             extra_mem_fwd_MiB=ours.get("srlm op", {}).get("fwd_extra_MiB"),
             extra_mem_fwd_bwd_inplace_MiB=ours.get("srlm op inplace-bwd", {}).get("fwd+bwd_extra_MiB"))
    verdict = {}
    if fwd and tri.get("fwd_ms"):
        h["fwd_vs_triton"] = round(fwd / tri["fwd_ms"], 3)
        verdict["fwd_vs_triton<=0.91"] = h["fwd_vs_triton"] <= TARGETS["fwd_vs_triton"]
    if fb and tri.get("fwd+bwd_ms"):
        h["fwd_bwd_vs_triton"] = round(fb / tri["fwd+bwd_ms"], 3)
        verdict["fwd_bwd_vs_triton<=1.11"] = h["fwd_bwd_vs_triton"] <= TARGETS["fb_vs_triton"]
    if "H100" in str(info.get("gpu", "")):
        if fwd:
            verdict["h100_fwd<=0.6ms"] = fwd <= TARGETS["h100_fwd_ms"]
        if fb:
            verdict["h100_fwd_bwd_inplace<=2.0ms"] = fb <= TARGETS["h100_fb_inplace_ms"]
    for key in ("extra_mem_fwd_MiB", "extra_mem_fwd_bwd_inplace_MiB"):
        if h.get(key) is not None:
            verdict[f"{key}<=16"] = h[key] <= TARGETS["extra_mem_mib"]
    h["targets_met"] = verdict
    c = parts.get("correctness", {})
    if "cases" in c:
        ran = [x for x in c["cases"] if x["status"] != "skipped"]
        h["correctness"] = f"{sum(x['status'] == 'passed' for x in ran)}/{len(ran)} passed, " \
                           f"{len(c['cases']) - len(ran)} skipped"
    if "summary" in parts.get("tests", {}):
        h["cuda_tests"] = parts["tests"]["summary"]
    d = parts.get("dpo", {})
    trl = d.get("trl") or {}
    for name, suffix in (("ours", ""), ("ours_unshared", "_unshared")):  # ours = the stage's default, shared
        ours = d.get(name) or {}
        if ours.get("tokens_per_s") and trl.get("tokens_per_s"):
            h[f"dpo_tokens_per_s_ours{suffix}_over_trl"] = round(ours["tokens_per_s"] / trl["tokens_per_s"], 3)
        if ours.get("peak_MiB") and trl.get("peak_MiB"):
            h[f"dpo_peak_mem_ours{suffix}_over_trl"] = round(ours["peak_MiB"] / trl["peak_MiB"], 3)
    return h


def orchestrate(args) -> int:
    import torch

    if not args.dry and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
              "run it on a GPU node, or pass --dry for the CPU plumbing check", file=sys.stderr)
        return 2
    parts = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts else PARTS
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"gpu_check: unknown part(s) {unknown}; choose from {PARTS}", file=sys.stderr)
        return 2
    info = gpu_info()
    work = Path(tempfile.mkdtemp(prefix="srlm_gpu_check_"))
    out_dir = Path(args.out_dir) if args.out_dir else (work / "results" if args.dry else ROOT / "bench" / "results")
    started = time.monotonic()
    total = sum(BUDGET_S[p] for p in parts) * args.budget_scale
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "git": _common.git_rev(), "dry": args.dry, **info, "load_average_before": load_avg(),
              "budget_s": None if args.dry else total, "parts": {}}
    print(f"gpu_check: {info.get('gpu', 'CPU (dry)')}, torch {info['torch']}, CUDA {info['cuda']}; "
          f"parts {parts}; work {work}", flush=True)
    prep = None
    if "dpo" in parts and not args.dry and not (smollm_dir() / "config.json").exists():
        (work / "prepare_model.running").touch()
        prep = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--prepare-model", "--work", str(work)],
                                cwd=ROOT, stdout=open(work / "prepare_model.log", "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        record["smollm_converted_in_background"] = True
    for part in parts:
        left = total - (time.monotonic() - started)
        budget = DRY_BUDGET_S if args.dry else min(BUDGET_S[part] * args.budget_scale, left)
        if budget < 10:
            record["parts"][part] = {"status": "skipped", "reason": f"time budget spent ({total} s in all)"}
        else:
            record["parts"][part] = run_part(part, budget, work, args.dry)
        r = record["parts"][part]
        print(f"  {part:12s} {r['status']:8s} {r.get('seconds', 0):6.1f} s  {r.get('reason', '')}", flush=True)
    if prep is not None and prep.poll() is None:  # the DPO part was skipped or gave up: stop it
        os.killpg(prep.pid, signal.SIGKILL)
        prep.wait()
    record["elapsed_s"] = round(time.monotonic() - started, 1)
    record["load_average_after"] = load_avg()
    record["headline"] = headline(record["parts"], info)
    record = {"headline": record.pop("headline"), **record}
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", str(info.get("gpu", "cpu-dry")).lower()).strip("-")
    out = out_dir / f"gpu_check-{slug}-{'cpu-dry' if args.dry else 'cuda'}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["headline"], indent=2))
    print(f"wrote {out}")
    failed = [p for p, r in record["parts"].items() if r["status"] == "failed"]
    if failed:
        print(f"gpu_check: failed parts: {failed} (details and log tails in {out})", file=sys.stderr)
    return 1 if failed else 0


# ============================================================================ worker parts
class Ctx:
    def __init__(self, dry: bool, work: Path, budget: float):
        import torch

        self.dry = dry
        self.work = work
        self.deadline = time.monotonic() + budget  # the orchestrator kills the part at this time
        self.device = "cpu" if dry else "cuda"
        self.torch = torch

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def part_build(ctx: Ctx) -> dict:
    from srlm_hpc.kernels import build

    t0 = time.perf_counter()
    with_cuda = build.want_cuda()
    if not ctx.dry and not with_cuda:
        return {"status": "failed", "reason": "torch has CUDA but nvcc was not found (set CUDA_HOME): the "
                                              "op would fall back to the PyTorch reference"}
    so = build.load_extension()
    return {"status": "passed", "so": so, "with_cuda": with_cuda,
            "archs": build.cuda_arch_list() if with_cuda else None, "build_s": round(time.perf_counter() - t0, 1)}


def part_tests(ctx: Ctx) -> dict:
    import xml.etree.ElementTree as ET

    junit = ctx.work / "junit.xml"
    # Dry: one CPU test, to prove the command and its report parse; on a GPU: every CUDA case.
    # The compile-only check is left out: the build part compiled the real thing, CI runs it,
    # and its two-arch nvcc run alone would take most of this part's budget.
    select = "test_all_ignored_sequences_are_zero and cpu" if ctx.dry else "cuda and not sources_compile"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "kernels"), "-q", "-rs", "-p", "no:cacheprovider",
           "-k", select, f"--junitxml={junit}"]
    env = {**os.environ, "SRLM_REQUIRE_NVCC": "1"} if not ctx.dry else dict(os.environ)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    if not junit.exists():
        return {"status": "failed", "reason": f"pytest exited {proc.returncode} without a report"}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    ok = proc.returncode == 0 and counts["tests"] > 0
    summary = f"{counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']} passed, " \
              f"{counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped of {counts['tests']}"
    return {"status": "passed" if ok else "failed", "summary": summary, "select": select, **counts,
            "command": " ".join(["python", *cmd[1:]]),
            **({} if ok else {"reason": f"pytest exited {proc.returncode}: {summary}"})}


# ---------------------------------------------------------------------------- correctness
def _ref64(x, labels):
    """float64 value and gradient of the PyTorch reference on the same (rounded) inputs."""
    from srlm_hpc.kernels import sequence_logprobs_reference

    torch = sys.modules["torch"]
    x64 = x.detach().to(torch.float64).requires_grad_()
    out = sequence_logprobs_reference(x64, labels, IGNORE)
    (g,) = torch.autograd.grad(out.sum(), x64)
    return out.detach(), g


def _ours(x, labels, inplace):
    from srlm_hpc.kernels import sequence_logprobs

    torch = sys.modules["torch"]
    leaf = x.detach().clone().requires_grad_()
    inp = leaf.clone() if inplace else leaf  # in place needs a computed tensor, as lm_head's output
    out = sequence_logprobs(inp, labels, IGNORE, inplace_backward=inplace)
    (g,) = torch.autograd.grad(out.sum(), leaf)
    return out.detach(), g


def _compare(x, labels, inplace) -> dict:
    """Value within 1e-5 relative of float64; gradient within one ulp of the logits' dtype plus
    1e-5 of its largest entry, element by element (a bf16 gradient cannot be closer than
    rounding); ignored rows exactly zero."""
    torch = sys.modules["torch"]
    ours, g = _ours(x, labels, inplace)
    ref, g_ref = _ref64(x, labels)
    fwd = ((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    eps = torch.finfo(x.dtype).eps
    bound = eps * g_ref.abs() + 1e-5 * g_ref.abs().max() + 1e-30
    excess = ((g.double() - g_ref).abs() / bound).max().item()
    ignored_zero = bool((g[labels == IGNORE] == 0).all())
    ok = fwd <= 1e-5 and excess <= 1.0 and ignored_zero and bool(torch.isfinite(g).all())
    return {"ok": ok, "fwd_rel_err": fwd, "grad_err_over_bound": excess, "ignored_rows_zero": ignored_zero}


def _misaligned(B, T, V, dtype, device, offset, gen):
    torch = sys.modules["torch"]
    buf = (torch.randn(B * T * V + offset, generator=gen) * 3).to(dtype).to(device)
    return buf[offset:].view(B, T, V)  # the whole tensor, so every row, starts `offset` elements in


def _labels(B, T, V, device, gen, active=0.7):
    torch = sys.modules["torch"]
    y = torch.randint(0, V, (B, T), generator=gen)
    y[torch.rand(B, T, generator=gen) >= active] = IGNORE
    return y.to(device)


def case_sweep(ctx: Ctx) -> list[dict]:
    torch = ctx.torch
    gen = torch.Generator().manual_seed(0)
    rows = []
    for V in (1, 7, 4095, 4097, 32001, 128257):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for offset in (0, 1, 3):
                x = _misaligned(2, 3, V, dtype, ctx.device, offset, gen)
                y = _labels(2, 3, V, ctx.device, gen)
                for inplace in (False, True):
                    r = _compare(x, y, inplace)
                    rows.append({"V": V, "dtype": str(dtype).split(".")[1], "offset": offset, "inplace": inplace,
                                 **r})
    bad = [r for r in rows if not r["ok"]]
    return [{"case": "V x dtype x misaligned start x in/out-of-place vs float64", "status":
             "failed" if bad else "passed", "checked": len(rows), "failures": bad[:10],
             "worst_grad_err_over_bound": max(r["grad_err_over_bound"] for r in rows),
             "worst_fwd_rel_err": max(r["fwd_rel_err"] for r in rows)}]


def case_many_rows(ctx: Ctx) -> list[dict]:
    torch = ctx.torch
    gen = torch.Generator().manual_seed(1)
    x = _misaligned(2, 35000, 40, torch.bfloat16, ctx.device, 0, gen)  # 70,000 rows > 65,535
    y = _labels(2, 35000, 40, ctx.device, gen)
    r = _compare(x, y, inplace=True)
    return [{"case": "70,000 rows (> 65,535)", "status": "passed" if r["ok"] else "failed", **r}]


def case_big_offsets(ctx: Ctx) -> list[dict]:
    if ctx.dry:
        raise Skip("needs 2 x 4.3 GiB of bf16 logits; dry mode runs small sizes")
    torch = ctx.torch
    from srlm_hpc.kernels import sequence_logprobs

    V = 128256
    T = (2**31) // V + 3  # the last rows start past element 2^31
    x = torch.empty(1, T, V, dtype=torch.bfloat16, device="cuda").normal_(0, 3)
    y = torch.full((1, T), IGNORE, dtype=torch.long, device="cuda")
    rows = [0, 1, T - 2, T - 1]
    y[0, rows] = torch.randint(0, V, (len(rows),), device="cuda")
    leaf = x.requires_grad_()
    inp = leaf.clone()
    out = sequence_logprobs(inp, y, IGNORE, inplace_backward=True)
    out.sum().backward()
    ref, g_ref = _ref64(x[:, rows], y[:, rows])
    fwd = abs(out.double().item() - ref.item()) / abs(ref.item())
    g = leaf.grad[:, rows].double()
    gerr = ((g - g_ref).abs() / (torch.finfo(torch.bfloat16).eps * g_ref.abs() + 1e-5)).max().item()
    zero = bool((leaf.grad[0, T - 3] == 0).all() and (leaf.grad[0, 2] == 0).all())
    ok = fwd <= 1e-5 and gerr <= 1.0 and zero
    return [{"case": "element offsets past 2^31 (in-place)", "status": "passed" if ok else "failed",
             "last_row_offset": (T - 1) * V, "fwd_rel_err": fwd, "grad_err_over_bound": gerr,
             "ignored_rows_zero": zero}]


def case_side_stream(ctx: Ctx) -> list[dict]:
    if ctx.dry:
        raise Skip("needs CUDA streams")
    torch = ctx.torch
    from srlm_hpc.kernels import sequence_logprobs

    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # inputs made, used and differentiated on the side stream only
        x = torch.randn(4, 512, 32001, device="cuda").mul_(3).to(torch.bfloat16)
        y = torch.randint(0, 32001, (4, 512), device="cuda")
        leaf = x.requires_grad_()
        out = sequence_logprobs(leaf.clone(), y, IGNORE, inplace_backward=True)
        out.sum().backward()
    s.synchronize()
    ref_out, ref_g = _ours(x.detach(), y, inplace=False)  # default stream
    ok = torch.equal(out.detach(), ref_out) and torch.equal(leaf.grad, ref_g)
    return [{"case": "side stream (bitwise equal to the default stream)", "status": "passed" if ok else "failed"}]


def case_graph(ctx: Ctx) -> list[dict]:
    if ctx.dry:
        raise Skip("needs CUDA graphs")
    torch = ctx.torch
    ops = torch.ops.srlm_hpc
    from srlm_hpc.kernels.logprobs import extension_available

    assert extension_available()
    x = torch.randn(2, 256, 32001, device="cuda").to(torch.bfloat16)
    y = torch.randint(0, 32001, (2, 256), device="cuda")
    gl = torch.randn(2, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up off the capture stream, as torch.cuda.graphs asks
        ops.sequence_logprobs(x, y, IGNORE, False)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        logp, lse = ops.sequence_logprobs(x, y, IGNORE, False)
        grad = ops.sequence_logprobs_backward(gl, x, y, lse, IGNORE)
    x.copy_(torch.randn_like(x, dtype=torch.float32).to(torch.bfloat16))  # new data, same buffers
    y.copy_(torch.randint(0, 32001, y.shape, device="cuda"))
    y[0, :7] = IGNORE
    g.replay()
    torch.cuda.synchronize()
    e_logp, e_lse = ops.sequence_logprobs(x, y, IGNORE, False)
    e_grad = ops.sequence_logprobs_backward(gl, x, y, e_lse, IGNORE)
    ok = torch.equal(logp, e_logp) and torch.equal(grad, e_grad)
    return [{"case": "CUDA graph capture and replay on new data (bitwise equal to eager)",
             "status": "passed" if ok else "failed"}]


def case_nan_ignored(ctx: Ctx) -> list[dict]:
    torch = ctx.torch
    gen = torch.Generator().manual_seed(2)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        x = _misaligned(3, 17, 4097, dtype, ctx.device, 1, gen)
        y = _labels(3, 17, 4097, ctx.device, gen, active=0.5)
        poisoned = x.clone()
        poisoned[y == IGNORE] = float("nan")
        for inplace in (False, True):
            out, g = _ours(poisoned, y, inplace)
            clean, g_clean = _ours(x, y, inplace)
            ok = torch.equal(out, clean) and torch.equal(g, g_clean) and bool(torch.isfinite(g).all())
            rows.append({"dtype": str(dtype).split(".")[1], "inplace": inplace, "ok": ok})
    bad = [r for r in rows if not r["ok"]]
    return [{"case": "NaN-poisoned ignored rows do not leak (equal to unpoisoned)",
             "status": "failed" if bad else "passed", "checked": rows}]


def case_all_written(ctx: Ctx) -> list[dict]:
    if ctx.dry:
        raise Skip("the CPU allocator does not hand freed blocks back, so poisoning proves nothing there")
    torch = ctx.torch
    ops = torch.ops.srlm_hpc
    B, T, V = 4, 512, 32001
    x = torch.randn(B, T, V, device="cuda").to(torch.bfloat16)
    y = torch.randint(0, V, (B, T), device="cuda")
    y[:, ::3] = IGNORE
    for nbytes in (B * T * V * 2, B * T * 4, B * 4):  # grad, lse/tok, logp sizes: fill and free
        torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(0xFF)  # 0xFF.. is NaN in every float
    logp, lse = ops.sequence_logprobs(x, y, IGNORE, False)
    for nbytes in (B * T * V * 2,):
        torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(0xFF)
    grad = ops.sequence_logprobs_backward(torch.ones(B, device="cuda"), x, y, lse, IGNORE)
    ok = all(bool(torch.isfinite(t).all()) for t in (logp, lse, grad))
    return [{"case": "every output element written (allocator poisoned with NaN first)",
             "status": "passed" if ok else "failed"}]


CASES = [case_sweep, case_many_rows, case_big_offsets, case_side_stream, case_graph, case_nan_ignored,
         case_all_written]


def part_correctness(ctx: Ctx) -> dict:
    from srlm_hpc.kernels.logprobs import extension_available

    if not extension_available():
        return {"status": "failed", "reason": "the extension did not load (see the build part)"}
    cases = []
    for fn in CASES:
        name = fn.__name__.removeprefix("case_")
        t0 = time.perf_counter()
        try:
            rows = fn(ctx)
        except Skip as e:
            rows = [{"case": name, "status": "skipped", "reason": str(e)}]
        except Exception as e:  # a crash is a failed case, recorded, and the rest still run
            rows = [{"case": name, "status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}]
        for r in rows:
            r["seconds"] = round(time.perf_counter() - t0, 2)
        cases += rows
        print(f"{name}: {[r['status'] for r in rows]}", flush=True)
        if ctx.device == "cuda":
            ctx.torch.cuda.empty_cache()
    failed = [c["case"] for c in cases if c["status"] == "failed"]
    return {"status": "failed" if failed else "passed", "cases": cases,
            **({"reason": f"failed: {failed}"} if failed else {})}


# ---------------------------------------------------------------------------- timing
def _anchors():
    """The single-pass Triton kernel from ../shared/bench (a measuring stick: imported, never copied)."""
    if not ANCHORS.exists():
        raise Skip(f"{ANCHORS} not present")
    sys.path.insert(0, str(ANCHORS.parent))
    try:
        import logp_anchors
    except Exception as e:
        raise Skip(f"logp_anchors does not import: {type(e).__name__}: {str(e)[:200]}") from e
    return logp_anchors


def timing_methods(ctx: Ctx) -> dict:
    """name -> (fn(x, labels, maskf) -> [B] float32, needs a private writable input for fwd+bwd) or a Skip reason."""
    torch = ctx.torch
    from srlm_hpc.kernels import sequence_logprobs

    def naive(x, y, m):
        lp = x.float().log_softmax(-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * m).sum(-1)

    methods: dict = {"naive fp32": (naive, False),
                     "srlm op": (lambda x, y, m: sequence_logprobs(x, y, IGNORE), False),
                     "srlm op inplace-bwd": (lambda x, y, m: sequence_logprobs(x, y, IGNORE,
                                                                               inplace_backward=True), True)}
    try:
        from trl.trainer.utils import selective_log_softmax

        methods["trl selective_log_softmax"] = (
            lambda x, y, m: (selective_log_softmax(x, y.clamp(min=0)).float() * m).sum(-1), False)
    except Exception as e:
        methods["trl selective_log_softmax"] = f"trl does not import: {type(e).__name__}: {str(e)[:200]}"
    if ctx.device != "cuda":
        methods["liger cross-entropy"] = "Liger's kernels are Triton: CUDA only"
        methods["triton single-pass (anchor)"] = "Triton: CUDA only"
        return methods
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss

        ce = LigerCrossEntropyLoss(reduction="none", ignore_index=IGNORE)

        def liger(x, y, m):
            b, t, v = x.shape
            return -ce(x.reshape(b * t, v), torch.where(m > 0, y, IGNORE).reshape(-1)).view(b, t).float().sum(-1)

        # Liger writes the gradient into its input during the forward: it gets a private copy.
        methods["liger cross-entropy"] = (liger, True)
    except Exception as e:
        methods["liger cross-entropy"] = f"liger_kernel does not import: {type(e).__name__}: {str(e)[:200]}"
    try:
        anchors = _anchors()
        methods["triton single-pass (anchor)"] = (
            lambda x, y, m: anchors.triton_seq_logp(x, y.clamp(min=0), m, skip=True, inplace=x.requires_grad), True)
    except Skip as e:
        methods["triton single-pass (anchor)"] = str(e)
    return methods


def _time(ctx: Ctx, fn, prepare, iters: int, warmup: int) -> tuple[float, float, float | None]:
    """(median ms, min ms, extra peak MiB over what `prepare` made) of fn(prepare())."""
    torch = ctx.torch
    times = []
    extra = None
    for i in range(warmup + iters):
        args = prepare()
        ctx.sync()
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            extra = (torch.cuda.max_memory_allocated() - before) / 2**20
        else:
            t0 = time.perf_counter()
            fn(*args)
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
        del args
    return statistics.median(times), min(times), extra


def part_timing(ctx: Ctx) -> dict:
    torch = ctx.torch
    cfg = TIMING[ctx.device]
    B, T, V = cfg["B"], cfg["T"], cfg["V"]
    dtype = getattr(torch, cfg["dtype"])
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(B, T, V, generator=gen) * 2).to(dtype).to(ctx.device)
    y = torch.randint(0, V, (B, T), generator=gen)
    y[torch.rand(B, T, generator=gen) >= cfg["active"]] = IGNORE
    y = y.to(ctx.device)
    m = (y != IGNORE).float()
    # Copy bandwidth: read + write of a 512 MiB (CPU: 64 MiB) buffer, best of 5.
    n = (128 if ctx.device == "cuda" else 16) * 2**20
    src = torch.ones(n, device=ctx.device)
    dst = torch.empty_like(src)
    copy_ms, _, _ = _time(ctx, lambda: dst.copy_(src), lambda: (), 5, 1)
    copy_Bps = 2 * n * 4 / (copy_ms / 1e3)
    del src, dst
    out = {"config": cfg, "copy_GBps": round(copy_Bps / 1e9, 1), "methods": {}}
    with torch.no_grad():  # float64 per-sequence values, once (8 GiB transient at the GPU size)
        ref = (x.double().log_softmax(-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * m).sum(-1)
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    active_bytes = cfg["active"] * x.numel() * x.element_size()
    out["floor_ms"] = {"fwd": round(active_bytes / copy_Bps * 1e3, 3),
                       "fwd+bwd": round((2 * active_bytes + x.numel() * x.element_size()) / copy_Bps * 1e3, 3)}
    for name, spec in timing_methods(ctx).items():
        if isinstance(spec, str):
            out["methods"][name] = {"status": "skipped", "reason": spec}
            continue
        fn, private = spec
        row = {"status": "passed"}
        try:
            with torch.no_grad():
                got = fn(x.clone() if private else x, y, m)
            row["max_rel_diff_vs_float64"] = ((got.double() - ref).abs().max() / ref.abs().max()).item()

            def fwd(a):
                with torch.no_grad():
                    fn(a, y, m)

            ms, mn, mem = _time(ctx, fwd, lambda: (x.clone() if private else x,), cfg["iters"], cfg["warmup"])
            row.update(fwd_ms=round(ms, 4), fwd_min_ms=round(mn, 4), fwd_extra_MiB=mem)
            leaf = x.detach().clone().requires_grad_()

            def prep():
                leaf.grad = None
                # A private writable input: a computed tensor, as lm_head's output would be.
                return (leaf.clone() if private else leaf,)

            ms, mn, mem = _time(ctx, lambda a: fn(a, y, m).sum().backward(), prep, cfg["iters"], cfg["warmup"])
            row.update(**{"fwd+bwd_ms": round(ms, 4), "fwd+bwd_min_ms": round(mn, 4), "fwd+bwd_extra_MiB": mem})
            del leaf
        except Exception as e:
            row = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
        out["methods"][name] = row
        print(name, row, flush=True)
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
    failed = [k for k, v in out["methods"].items() if v["status"] == "failed" and k.startswith("srlm")]
    out["status"] = "failed" if failed else "passed"
    if failed:
        out["reason"] = f"our op failed: {failed}"
    if ctx.dry:
        out["note"] = "CPU, small sizes: proves the plumbing, not the speed; memory is CUDA-only"
    return out


# ---------------------------------------------------------------------------- DPO step
def _tiny_llama(dest: Path) -> Path:
    """The tests' 2-layer random Llama with SmolLM2's real tokenizer (tests/conftest.py)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from srlm_hpc.models import embedded_gguf

    if (dest / "config.json").exists():
        return dest
    folder, gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def smollm_dir() -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    import dpo_step

    return dpo_step.MODEL_DIR  # bench/_data/M0, git-ignored, shared with bench/dpo_step.py


def prepare_model(work: Path) -> int:
    """SmolLM2's GGUF -> HF conversion (CPU, ~30 s the first time), started by the orchestrator
    beside the build so the DPO part's budget is not spent on it."""
    from srlm_hpc.models import convert_default_model

    try:
        convert_default_model(smollm_dir())
    finally:
        (work / "prepare_model.running").unlink(missing_ok=True)
    return 0


def _dpo_model(ctx: Ctx) -> Path:
    if ctx.dry:
        return _tiny_llama(ctx.work / "tiny_llama")  # small sizes: the tests' model, not SmolLM2
    from srlm_hpc.models import convert_default_model

    marker = ctx.work / "prepare_model.running"
    while marker.exists() and time.monotonic() < ctx.deadline - 60:
        time.sleep(1)  # the background conversion is still writing
    return convert_default_model(smollm_dir())  # a no-op once it is there


def _peak_mib(ctx: Ctx):
    return ctx.torch.cuda.max_memory_allocated() / 2**20 if ctx.device == "cuda" else None


def dpo_ours(ctx: Ctx, model_dir, tok, encoded, plan, mb, bf16, share_prompt: bool) -> dict:
    """Our DPO step as the stage runs it (stages/pair_scoring.pair_logps): the log-prob op, and
    with share_prompt the prompt run once per pair under a tree mask (on CUDA, SDPA with that
    mask cannot take the flash kernel: whether sharing still wins there is what this measures)."""
    torch = ctx.torch
    from srlm_hpc.models import load_model
    from srlm_hpc.stages.pair_scoring import pair_logps
    from srlm_hpc.training.dpo_loss import dpo_loss

    policy = load_model(model_dir, device=ctx.device, dropout=0.0).train()
    ref = load_model(model_dir, device=ctx.device).eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=0.0)
    if ctx.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for idx_all in plan:
        ctx.sync()
        t0 = time.perf_counter()
        for i in range(0, len(idx_all), mb):
            idx = idx_all[i:i + mb]
            with torch.autocast(ctx.device, dtype=torch.bfloat16, enabled=bf16):
                lp, _ = pair_logps(policy, encoded, idx, tok.pad_token_id, ctx.device, share_prompt)
                with torch.no_grad():
                    r, _ = pair_logps(ref, encoded, idx, tok.pad_token_id, ctx.device, share_prompt)
            n = len(idx)
            losses, _, _ = dpo_loss(lp[:n], lp[n:], r[:n], r[n:], 0.1)
            (losses.sum() / len(idx_all)).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.sync()
        times.append(time.perf_counter() - t0)
    return {"step_s": times, "peak_MiB": _peak_mib(ctx), "share_prompt": share_prompt}


def dpo_trl(ctx: Ctx, model_dir, tok, pairs, encoded, plan, mb, bf16) -> dict:
    torch = ctx.torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from srlm_hpc.models import load_model

    policy = load_model(model_dir, device=ctx.device, dropout=0.0)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True,
                                       tokenize=False) for p in pairs]
    ds = Dataset.from_dict({"prompt": prompts, "chosen": [p.chosen for p in pairs],
                            "rejected": [p.rejected for p in pairs]})
    marks = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            ctx.sync()
            marks.append(("begin", time.perf_counter()))

        def on_step_end(self, *a, **k):
            ctx.sync()
            marks.append(("end", time.perf_counter()))

    batch = len(plan[0])
    with tempfile.TemporaryDirectory() as d:
        cfg = DPOConfig(output_dir=d, per_device_train_batch_size=mb, gradient_accumulation_steps=batch // mb,
                        max_steps=len(plan), learning_rate=1e-6, warmup_steps=0, weight_decay=0.0,
                        adam_beta1=0.9, adam_beta2=0.95, optim="adamw_torch", max_grad_norm=1.0, beta=0.1,
                        loss_type=["sigmoid"], max_length=512, gradient_checkpointing=False, bf16=bf16,
                        use_cpu=ctx.device == "cpu", seed=0, data_seed=0, train_sampling_strategy="sequential",
                        dataloader_num_workers=0, report_to="none", save_strategy="no", logging_strategy="no",
                        eval_strategy="no", disable_tqdm=True)
        trainer = DPOTrainer(model=policy, args=cfg, train_dataset=ds, processing_class=tok)
        # Same tokens as ours? (TRL's prompt + completion ids against encode_pairs', as bench/dpo_step.py)
        mism = sum(list(r["prompt_ids"]) + list(r[k]) != encoded[i][j][0] for i, r in enumerate(trainer.train_dataset)
                   for j, k in ((0, "chosen_ids"), (1, "rejected_ids")))
        trainer.add_callback(StepTimer())
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    begins = [t for k, t in marks if k == "begin"]
    ends = [t for k, t in marks if k == "end"]
    return {"step_s": [e - b for b, e in zip(begins, ends)], "peak_MiB": _peak_mib(ctx), "token_mismatches": mism}


def part_dpo(ctx: Ctx) -> dict:
    torch = ctx.torch
    try:
        import trl  # noqa: F401
    except Exception as e:
        return {"status": "skipped", "reason": f"trl does not import: {type(e).__name__}: {str(e)[:200]}"}
    sys.path.insert(0, str(ROOT / "bench"))
    import dpo_step

    from srlm_hpc.models import load_tokenizer
    from srlm_hpc.stages.dpo import encode_pairs

    model_dir = _dpo_model(ctx)
    tok = load_tokenizer(model_dir)
    batch, mb, steps = (2, 2, 2) if ctx.dry else (8, 4, 3)  # the first step is warm-up, not timed
    short = dict(prompt_range=(10, 30), response_range=(10, 30)) if ctx.dry else {}
    pairs = dpo_step.make_pairs(tok, batch * steps, seed=0, **short)
    encoded = encode_pairs(tok, pairs, 512)
    plan = [list(range(s * batch, (s + 1) * batch)) for s in range(steps)]
    bf16 = ctx.device == "cuda"
    out = {"model": "tiny random Llama (dry)" if ctx.dry else "SmolLM2-135M-Instruct", "bf16_autocast": bf16,
           "pairs_per_step": batch, "micro_batch": mb, "timed_steps": steps - 1,
           "reference": "a second model, forward every step, on both sides (TRL's default)"}
    real = sum(dpo_step.batch_tokens(encoded, idx, mb)[0] for idx in plan[1:])
    for name, fn in (("ours", lambda: dpo_ours(ctx, model_dir, tok, encoded, plan, mb, bf16, share_prompt=True)),
                     ("ours_unshared", lambda: dpo_ours(ctx, model_dir, tok, encoded, plan, mb, bf16, False)),
                     ("trl", lambda: dpo_trl(ctx, model_dir, tok, pairs, encoded, plan, mb, bf16))):
        try:
            r = fn()
            timed = r["step_s"][1:]
            r.update(tokens=real, tokens_per_s=real / sum(timed) if timed else None)
            out[name] = r
        except Exception as e:
            out[name] = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
        print(name, out[name], flush=True)
    bad = [k for k in ("ours", "ours_unshared", "trl") if out[k].get("status") == "failed"]
    out["status"] = "failed" if bad else "passed"
    if bad:
        out["reason"] = f"failed: {bad}"
    return out


# ---------------------------------------------------------------------------- pipeline
def part_pipeline(ctx: Ctx) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.stages.test_pipeline_e2e import e2e_args  # the CI end-to-end config, not a copy

    model = _tiny_llama(ctx.work / "tiny_llama")
    engines = {"hf": None}
    try:
        import vllm  # noqa: F401

        engines["vllm"] = None if not ctx.dry else "dry mode runs the HF engine only (vLLM on CPU is slow)"
    except Exception as e:
        engines["vllm"] = f"vllm does not import: {type(e).__name__}: {str(e)[:200]}"
    out = {"status": "passed", "engines": {}}
    for engine, skip in engines.items():
        if skip:
            out["engines"][engine] = {"status": "skipped", "reason": skip}
            continue
        work = ctx.work / f"pipeline_{engine}"
        args = [a for a in e2e_args(work, model) if not a.startswith("engine=")] + [f"engine={engine}"]
        cmd = [sys.executable, "-m", "srlm_hpc.submit", "stage=all", "iter=1", "executor=local", *args]
        left = ctx.deadline - time.monotonic() - 5
        if left < 20:
            out["engines"][engine] = {"status": "skipped", "reason": "no time left in this part's budget; "
                                      "rerun: python bench/gpu_check.py --parts pipeline --budget-scale 4"}
            continue
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            out["engines"][engine] = {
                "status": "skipped", "seconds": round(time.perf_counter() - t0, 1),
                "reason": f"not finished in the {left:.0f} s left of the budget (engine start-ups); rerun: "
                          "python bench/gpu_check.py --parts pipeline --budget-scale 4"}
            continue
        r = {"status": "passed" if proc.returncode == 0 else "failed", "seconds": round(time.perf_counter() - t0, 1),
             "device": ctx.device}
        if proc.returncode != 0:
            r["reason"] = f"submit exited {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}"
            out["status"] = "failed"
            out["reason"] = f"engine={engine} failed"
        out["engines"][engine] = r
        print(engine, r, flush=True)
    return out


WORKERS = {"build": part_build, "tests": part_tests, "correctness": part_correctness, "timing": part_timing,
           "dpo": part_dpo, "pipeline": part_pipeline}


def worker(part: str, work: Path, dry: bool, budget: float) -> int:
    sys.path.insert(0, str(ROOT))
    ctx = Ctx(dry, work, budget)
    try:
        res = WORKERS[part](ctx)
    except Skip as e:
        res = {"status": "skipped", "reason": str(e)}
    (work / f"{part}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU, small sizes, results to a temporary folder")
    p.add_argument("--parts", help=f"comma list of {PARTS} (default: all)")
    p.add_argument("--out-dir", help="where the results JSON goes (default bench/results; --dry: a temp dir)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every part's time budget (default 1: 530 s in all)")
    p.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--worker-budget", type=float, default=DRY_BUDGET_S, help=argparse.SUPPRESS)
    p.add_argument("--prepare-model", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare_model:
        sys.path.insert(0, str(ROOT))
        return prepare_model(Path(args.work))
    if args.worker:
        return worker(args.worker, Path(args.work), args.dry, args.worker_budget)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
