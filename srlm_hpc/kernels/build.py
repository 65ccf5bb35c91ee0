"""JIT build of the srlm_hpc C++/CUDA kernels, cached per source + toolchain.

    python -m srlm_hpc.kernels.build                      # build (or find) the extension now
    python -m srlm_hpc.kernels.build --cuda-compile-only  # CI: nvcc -c the CUDA sources, no GPU

The first call of an op compiles csrc/ with torch.utils.cpp_extension.load (ninja;
about 30 s for CPU only on 2 cores, more with CUDA) into

    $SRLM_HPC_KERNEL_CACHE or ${XDG_CACHE_HOME:-~/.cache}/srlm_hpc/kernels/<key>/

where <key> hashes the sources, flags, torch/CUDA/Python versions and the CUDA arch
list, so a changed source or a new torch never loads a stale .so. Later processes
find the `ready` marker there and load the .so directly (no ninja call).

Concurrency (many Slurm tasks, shared file system): torch's FileBaton makes the
first process create `<key>/lock` with O_CREAT|O_EXCL and build; the others poll
until it is removed, then load the finished .so. A build killed mid-way (e.g. a
Slurm time limit) would leave the lock behind forever, so a lock older than
$SRLM_HPC_KERNEL_LOCK_TIMEOUT seconds (default 1200) is removed with a warning.

CUDA is built when torch is a CUDA build and nvcc is found (CUDA_HOME, PATH or
/usr/local/cuda), whether or not a GPU is visible: login nodes have none. Set
SRLM_HPC_KERNELS_CUDA=0 to build the CPU part only. Without a visible GPU and
without TORCH_CUDA_ARCH_LIST, code is built for sm_80 and sm_90 plus PTX.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# The repository root holds csrc/; this file is srlm_hpc/kernels/build.py.
CSRC = Path(os.environ.get("SRLM_HPC_CSRC", Path(__file__).resolve().parents[2] / "csrc"))
CPU_SOURCES = ["logprobs.cpp", "cpu/logprobs_cpu.cpp"]
CUDA_SOURCES = ["cuda/logprobs_cuda.cu", "cuda/logprobs_cuda_binding.cpp"]
HEADERS = ["logprobs.h", "cuda/logprobs_cuda.cuh"]

# -O3 and OpenMP only: no -march=native, cluster nodes differ. The CPU kernel
# picks AVX-512 / AVX2 / SSE2 code at load time (GCC target_clones). -fopenmp is
# needed for at::parallel_for to actually run in parallel inside an extension.
# -fno-trapping-math lets GCC if-convert the float clamps in fast_exp: without it
# the AVX2 and SSE2 clones stay scalar (measured: 0 ymm instructions); the code
# never reads FP exception flags, so nothing else changes.
CFLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]
LDFLAGS = ["-fopenmp"]
CUDA_CFLAGS = ["-O3", "-lineinfo", "-DSRLM_HPC_WITH_TORCH"]
DEFAULT_ARCHS = "8.0;9.0+PTX"  # A100, H100; PTX JIT-compiles for anything newer
# Same half/bf16 macros torch passes to nvcc, so the compile-only check sees what the build sees.
TORCH_NVCC_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]


def cache_root() -> Path:
    if "SRLM_HPC_KERNEL_CACHE" in os.environ:
        return Path(os.environ["SRLM_HPC_KERNEL_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "srlm_hpc" / "kernels"


def find_nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def want_cuda() -> bool:
    import torch

    if os.environ.get("SRLM_HPC_KERNELS_CUDA", "1") == "0":
        return False
    return torch.version.cuda is not None and find_nvcc() is not None


def cuda_arch_list() -> str:
    import torch

    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps) + "+PTX"
    return DEFAULT_ARCHS


def build_key(with_cuda: bool, archs: str) -> str:
    import torch

    h = hashlib.sha256()
    for rel in CPU_SOURCES + CUDA_SOURCES + HEADERS:
        h.update(rel.encode() + b"\0" + (CSRC / rel).read_bytes() + b"\0")
    meta = [torch.__version__, str(torch.version.cuda), sys.version.split()[0], platform.machine(),
            str(with_cuda), archs if with_cuda else "", *CFLAGS, *LDFLAGS, *CUDA_CFLAGS]
    h.update("\0".join(meta).encode())
    return h.hexdigest()[:16]


def _break_stale_lock(lock: Path) -> None:
    timeout = float(os.environ.get("SRLM_HPC_KERNEL_LOCK_TIMEOUT", "1200"))
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > timeout:
        warnings.warn(f"srlm_hpc.kernels: removing build lock {lock} left {age:.0f} s ago "
                      f"(> SRLM_HPC_KERNEL_LOCK_TIMEOUT={timeout:.0f}); a build was probably killed",
                      stacklevel=3)
        lock.unlink(missing_ok=True)


def load_extension(verbose: bool = False) -> str:
    """Build (first time) and load the kernels into torch.ops.srlm_hpc; return the .so path."""
    import torch
    from torch.utils.cpp_extension import load

    with_cuda = want_cuda()
    archs = cuda_arch_list() if with_cuda else ""
    key = build_key(with_cuda, archs)
    name = f"srlm_hpc_kernels_{key}"
    build_dir = cache_root() / key
    so_path = build_dir / f"{name}.so"
    ready = build_dir / "ready"
    if ready.exists() and so_path.exists():
        torch.ops.load_library(str(so_path))
        return str(so_path)

    build_dir.mkdir(parents=True, exist_ok=True)
    _break_stale_lock(build_dir / "lock")
    sources = [str(CSRC / s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else [])]
    old_archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # torch's default fails with no visible GPU
    try:
        load(name=name, sources=sources, extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
             extra_cuda_cflags=CUDA_CFLAGS, build_directory=str(build_dir), with_cuda=with_cuda,
             is_python_module=False, verbose=verbose)
    finally:
        if with_cuda:
            if old_archs is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = old_archs
    ready.touch()
    return str(so_path)


def cuda_include_dir(nvcc: str) -> str:
    """The directory holding cuda_runtime_api.h (nvcc may be a wrapper outside CUDA_HOME)."""
    from torch.utils.cpp_extension import CUDA_HOME

    for root in [CUDA_HOME, str(Path(nvcc).resolve().parents[1]), "/usr/local/cuda"]:
        if root and (Path(root) / "include" / "cuda_runtime_api.h").exists():
            return str(Path(root) / "include")
    raise RuntimeError(f"cuda_runtime_api.h not found next to {nvcc}; set CUDA_HOME")


def _run(cmd: list[str]) -> str:
    """Run a compiler, echo its command and output; return the output (stdout + stderr)."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.stdout:
        print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout)
    return proc.stdout


# Registers per thread the kernels may use: __launch_bounds__ in logprobs_cuda.cu asks for
# 1024 resident threads per SM, i.e. 65536 / 1024 = 64, and 512 (128) for float64 kernels,
# whose mangled names carry the template argument `d` (e.g. lse_rows_kernelIdLi256E).
MAX_REGISTERS = 64
MAX_REGISTERS_FP64 = 128


def register_limit(kernel: str) -> int:
    return MAX_REGISTERS_FP64 if "_kernelId" in kernel else MAX_REGISTERS


def parse_ptxas(text: str) -> list[dict]:
    """`nvcc -Xptxas -v` output -> one dict per (kernel, arch): registers, spill bytes, stack."""
    import re

    rows, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'", line)
        if m:
            cur = {"kernel": m.group(1), "arch": m.group(2)}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
    return rows


def check_ptxas(rows: list[dict]) -> None:
    """Raise if a kernel spills or uses more registers than its launch bounds allow."""
    if not rows:
        raise RuntimeError("nvcc -Xptxas -v reported no kernels: cannot check registers and spills")
    bad = [r for r in rows if r.get("spill_stores", 0) or r.get("spill_loads", 0)
           or "registers" not in r or r["registers"] > register_limit(r["kernel"])]
    if bad:
        lines = [f"{r['kernel']} ({r['arch']}): {r.get('registers')} registers "
                 f"(limit {register_limit(r['kernel'])}), "
                 f"{r.get('spill_stores')} B spill stores, {r.get('spill_loads')} B spill loads" for r in bad]
        raise RuntimeError("CUDA kernels over budget (registers above the launch bounds, or spills): "
                           + "; ".join(lines))


def cuda_compile_only(out_dir: str | None = None) -> list[str]:
    """Compile the CUDA sources without a GPU and without a CUDA torch; return what was checked.

    1. nvcc -c logprobs_cuda.cu with no torch headers (always possible with nvcc alone).
    2. If torch ships ATen/CUDA headers: the same file with -DSRLM_HPC_WITH_TORCH and a
       syntax-only compile of the torch binding. CPU wheels lack the generated
       c10/cuda/impl/cuda_cmake_macros.h; a one-line stand-in is written to a temp dir.
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    from torch.utils.cpp_extension import include_paths

    out = Path(out_dir or tempfile.mkdtemp(prefix="srlm_cuda_check_"))
    out.mkdir(parents=True, exist_ok=True)
    arch_flags = []
    for arch in DEFAULT_ARCHS.split(";"):
        num = arch.replace("+PTX", "").replace(".", "")
        arch_flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    cu = str(CSRC / "cuda" / "logprobs_cuda.cu")
    # -Xptxas -v: registers and spills of every kernel, per arch, into ptxas.json; a spill
    # (local-memory traffic in a bandwidth-bound loop) or a register count above the launch
    # bounds fails the check.
    text = _run([nvcc, "-std=c++17", "-O3", "-Xptxas", "-v", *TORCH_NVCC_DEFINES, *arch_flags, "-c", cu,
                 "-o", str(out / "logprobs_cuda.o")])
    report = parse_ptxas(text)
    (out / "ptxas.json").write_text(json.dumps(report, indent=1) + "\n")
    check_ptxas(report)
    checked = ["logprobs_cuda.cu (torch-free)"]

    torch_inc = include_paths()
    if not any((Path(p) / "ATen" / "cuda" / "CUDAContext.h").exists() for p in torch_inc):
        print("torch has no ATen/cuda headers: skipping the binding check", flush=True)
        return checked
    shim = out / "shim"
    macros = shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not any((Path(p) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists() for p in torch_inc):
        macros.parent.mkdir(parents=True, exist_ok=True)
        macros.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cuda_inc = cuda_include_dir(nvcc)
    incs = [f"-I{p}" for p in [*torch_inc, str(shim), cuda_inc]]
    _run([nvcc, "-std=c++20", "-O3", *TORCH_NVCC_DEFINES, "--expt-relaxed-constexpr",
          "-DSRLM_HPC_WITH_TORCH", *incs, arch_flags[-1], "-c", cu,
          "-o", str(out / "logprobs_cuda_torch.o")])
    checked.append("logprobs_cuda.cu (-DSRLM_HPC_WITH_TORCH)")
    cxx = os.environ.get("CXX", "c++")
    import sysconfig
    _run([cxx, "-std=c++20", "-fsyntax-only", *incs, f"-I{sysconfig.get_paths()['include']}",
          str(CSRC / "cuda" / "logprobs_cuda_binding.cpp")])
    checked.append("logprobs_cuda_binding.cpp (syntax only)")
    return checked


def main(argv: list[str] | None = None) -> int:
    from ..cli import EXIT_CODES

    p = argparse.ArgumentParser(description=__doc__, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuda-compile-only", action="store_true",
                   help="nvcc -c the CUDA sources (no GPU, no CUDA torch needed) and exit")
    p.add_argument("--out-dir", help="where --cuda-compile-only writes objects (default: temp dir)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.cuda_compile_only:
        for item in cuda_compile_only(args.out_dir):
            print("compiled OK:", item)
        return 0
    t0 = time.perf_counter()
    so = load_extension(verbose=args.verbose)
    print(f"loaded {so} (cuda={want_cuda()}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
