"""Benchmark sequence log-probs for DPO: srlm_hpc op vs naive PyTorch, TRL, torch.compile, Liger.

    python bench/logprobs.py                  # CPU config from the issue (fp32 B=2 T=512 V=49152)
    python bench/logprobs.py --device cuda    # GPU config (bf16 B=4 T=2048 V=128256)

Three scenarios per method, 73% of label positions active (the rest ignore_index):
  fwd       reference-model forward, under torch.no_grad()
  fwd+bwd   policy forward + backward of logp.sum() w.r.t. the logits
  dpo       policy fwd+bwd plus a reference fwd on a second logits tensor (one DPO step's
            log-prob work; chosen and rejected are simply rows of the batch)
Reported per method: median wall time, speed vs naive, and % of memory bandwidth =
(bytes that must move / time) / measured copy bandwidth. Bytes that must move: every
active row read once per pass; backward also writes the whole [B,T,V] gradient. Copy
bandwidth is measured in the same run as 2 * bytes / time of a 512 MiB tensor copy_().

Extra peak memory ("mem"): memory above the inputs at the scenario's peak, outputs
(including the [B,T,V] gradient) included. CUDA: torch.cuda.max_memory_allocated
delta. CPU: each method runs in a fresh subprocess; after a full-size warm-up
(library loads, torch.compile), the kernel's peak-RSS counter is reset by writing 5
to /proc/self/clear_refs, the scenario runs once, and VmHWM - VmRSS(before) is
reported. Tensors this large are mmap'd by glibc and unmapped on free, so RSS
follows tensor memory closely; small allocator slack (< 1 MiB) is noise.
Results go to bench/results/logprobs-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import ROOT, LoadGuard, cpu_model, reset_rss_peak, run_stamp, status_kib, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))
IGNORE = -100
CONFIGS = {
    "cpu": dict(dtype="float32", B=2, T=512, V=49152, active=0.73),
    "cuda": dict(dtype="bfloat16", B=4, T=2048, V=128256, active=0.73),
}
SCENARIOS = ["fwd", "fwd+bwd", "dpo"]


# ----------------------------------------------------------------------------- methods
def naive(logits, labels):
    """What most DPO code does: fp32 log_softmax over V, gather, mask, sum."""
    active = labels != IGNORE
    logp = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * active).sum(-1)


def trl_reimpl(logits, index):
    """TRL's published selective_log_softmax (PyTorch path): per-row loop to cap memory."""
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return selected - lse
    rows = [F.log_softmax(r, -1).gather(-1, i.unsqueeze(-1)).squeeze(-1) for r, i in zip(logits, index)]
    return torch.stack(rows)


def make_methods(device: str) -> dict:
    from srlm_hpc.kernels import sequence_logprobs

    methods = {"naive fp32": naive,
               "srlm op": lambda x, y: sequence_logprobs(x, y, IGNORE),
               "srlm op inplace-bwd": lambda x, y: sequence_logprobs(x, y, IGNORE, inplace_backward=True)}
    try:
        from trl.trainer.utils import selective_log_softmax
        trl_name, trl_fn = "trl selective_log_softmax", selective_log_softmax
    except Exception:  # not installed or its dependencies are missing
        trl_name, trl_fn = "trl-algorithm (reimpl)", trl_reimpl
    methods[trl_name] = lambda x, y: (trl_fn(x, y.clamp(min=0)).float() * (y != IGNORE)).sum(-1)
    methods["torch.compile(naive)"] = torch.compile(naive)
    if device == "cuda":
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss

            ce = LigerCrossEntropyLoss(reduction="none", ignore_index=IGNORE)
            methods["liger CE (reduction=none)"] = lambda x, y: -ce(
                x.flatten(0, 1), y.flatten()).view(y.shape).float().sum(-1)
        except Exception:
            pass
    return methods


# ----------------------------------------------------------------------------- inputs
def make_inputs(cfg: dict, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, T, V = cfg["B"], cfg["T"], cfg["V"]
    dtype = getattr(torch, cfg["dtype"])
    logits = (torch.randn(B, T, V, generator=g) * 2).to(dtype).to(device)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) >= cfg["active"]] = IGNORE
    return logits, labels.to(device)


class Case:
    """Inputs for one method; `leaf` is the policy logits (requires grad), `ref` the reference's."""

    def __init__(self, cfg, device):
        base, self.labels = make_inputs(cfg, device, seed=0)
        self.base = base
        self.leaf = base.clone().requires_grad_()
        self.ref, _ = make_inputs(cfg, device, seed=1)

    def run(self, fn, scenario, inplace: bool, ready=None):
        """Time one scenario; `ready()` is called just before the clock starts (memory baseline)."""
        x = self.leaf
        if scenario in ("fwd+bwd", "dpo"):
            self.leaf.grad = None
            if inplace:
                # In-place backward needs a computed tensor that nothing else reads, like
                # lm_head's output: a clone, made before the clock (and the memory baseline).
                # The op refuses the leaf itself and any view of it.
                x = self.leaf.clone()
        sync(self.base.device.type)
        if ready is not None:
            ready()
        t0 = time.perf_counter()
        if scenario in ("fwd", "dpo"):
            with torch.no_grad():
                ref_logp = fn(self.ref if scenario == "dpo" else self.base, self.labels)
        if scenario in ("fwd+bwd", "dpo"):
            fn(x, self.labels).sum().backward()
        sync(self.base.device.type)
        return time.perf_counter() - t0


def sync(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- measurements
def copy_bandwidth(device: str) -> float:
    src = torch.empty(128 * 2**20, dtype=torch.float32, device=device).fill_(1.0)  # 512 MiB
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def bytes_moved(cfg: dict, scenario: str) -> float:
    elem = torch.finfo(getattr(torch, cfg["dtype"])).bits // 8
    full = cfg["B"] * cfg["T"] * cfg["V"] * elem
    read_active = cfg["active"] * full
    fwd_bwd = 2 * read_active + full  # fwd read, bwd read, gradient write
    return {"fwd": read_active, "fwd+bwd": fwd_bwd, "dpo": fwd_bwd + read_active}[scenario]


def measure_memory(cfg: dict, device: str, name: str) -> dict:
    """Extra peak bytes per scenario for one method (run in a fresh process on CPU)."""
    methods = make_methods(device)
    fn, inplace = methods[name], "inplace" in name
    case = Case(cfg, device)
    out = {}
    for scenario in SCENARIOS:
        case.run(fn, scenario, inplace)  # warm-up at full size: loads, compiles, caches
        case.leaf.grad = None
        base = {}

        def ready():
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base["bytes"] = torch.cuda.memory_allocated()
            else:
                base["bytes"] = reset_rss_peak()

        case.run(fn, scenario, inplace, ready)
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else status_kib("VmHWM") * 1024
        out[scenario] = peak - base["bytes"]
        case.leaf.grad = None
    return out


def memory_in_subprocess(cfg, device, name) -> dict:
    if device == "cuda":
        return measure_memory(cfg, device, name)
    cmd = [sys.executable, __file__, "--device", device, "--memory-worker", name,
           "--config", json.dumps(cfg)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=None, help="timed runs per scenario (median)")
    p.add_argument("--config", help="JSON overriding the device's config")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help="results JSON (default bench/results/logprobs-<device>.json)")
    args = p.parse_args()
    cfg = dict(CONFIGS[args.device], **(json.loads(args.config) if args.config else {}))
    if args.memory_worker:
        print(json.dumps(measure_memory(cfg, args.device, args.memory_worker)))
        return
    repeats = args.repeats or (10 if args.device == "cpu" else 30)

    guard = LoadGuard.start()  # other jobs on the machine skew CPU timings: refused when busy
    load_start = os.getloadavg()
    methods = make_methods(args.device)
    case = Case(cfg, args.device)
    with torch.no_grad():
        expected = naive(case.base, case.labels)
    bw = copy_bandwidth(args.device)
    results = {}
    for name, fn in methods.items():
        inplace = "inplace" in name
        with torch.no_grad():
            got = fn(case.base, case.labels)
        err = ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
        row = {"max_rel_diff_vs_naive": err}
        for scenario in SCENARIOS:
            if inplace and scenario == "fwd":
                continue  # identical to "srlm op"
            for _ in range(2):
                case.run(fn, scenario, inplace)
            times = [case.run(fn, scenario, inplace) for _ in range(repeats)]
            t = statistics.median(times)
            row[scenario] = {"median_s": t, "min_s": min(times),
                             "pct_copy_bw": 100 * bytes_moved(cfg, scenario) / t / bw}
        case.leaf.grad = None
        row["extra_peak_bytes"] = memory_in_subprocess(cfg, args.device, name)
        results[name] = row
        print(f"done: {name}", file=sys.stderr, flush=True)

    base = results["naive fp32"]
    head = f"{'method':30s}" + "".join(f"{s:>30s}" for s in SCENARIOS)
    load = os.getloadavg()
    lines = [f"config {cfg}; copy bandwidth {bw / 1e9:.1f} GB/s; {repeats} runs, median; "
             f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (start {load_start[0]:.1f})",
             "cell = time ms (speed-up vs naive, % copy bw) | extra peak MiB", head]
    for name, row in results.items():
        cells = []
        for s in SCENARIOS:
            if s not in row:
                cells.append(f"{'(same as srlm op)':>30s}")
                continue
            t = row[s]["median_s"]
            mem = row["extra_peak_bytes"][s] / 2**20
            cells.append(f"{t * 1e3:8.1f} ({base[s]['median_s'] / t:4.1f}x,{row[s]['pct_copy_bw']:3.0f}%)"
                         f" |{mem:6.0f}".rjust(30))
        lines.append(f"{name:30s}" + "".join(cells))
    table = "\n".join(lines)
    print(table)

    out = Path(args.out or ROOT / "bench" / "results" / f"logprobs-{args.device}.json")
    trl = next(n for n in results if n.startswith("trl"))
    ours = results["srlm op"]
    # time ratios, theirs / ours (> 1: ours faster), and ours' extra peak memory / theirs
    headline = {f"{s}_speedup_vs_{ref}": round(results[name][s]["median_s"] / ours[s]["median_s"], 3)
                for s in ("fwd+bwd", "dpo") for ref, name in (("naive", "naive fp32"), ("trl", trl))}
    headline.update({f"dpo_extra_peak_memory_vs_{ref}": round(ours["extra_peak_bytes"]["dpo"] /
                                                             max(results[name]["extra_peak_bytes"]["dpo"], 1), 3)
                     for ref, name in (("naive", "naive fp32"), ("trl", trl))})
    if not write_result(out, {
        **run_stamp(), "device": device_name(args.device), "torch": torch.__version__,
        "config": cfg, "repeats": repeats, "load_average_start_end": [load_start[0], load[0]], "copy_bandwidth_Bps": bw,
        "memory_method": ("torch.cuda.max_memory_allocated delta" if args.device == "cuda" else
                          "fresh subprocess per method; VmHWM - VmRSS after resetting the peak via "
                          "/proc/self/clear_refs, following a full-size warm-up"),
        "bytes_model": "active rows read once per pass; backward writes the full [B,T,V] gradient",
        "results": results, "table": table}, guard, headline=headline):
        sys.exit(3)

if __name__ == "__main__":
    main()
