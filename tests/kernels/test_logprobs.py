"""Correctness of srlm_hpc.kernels.sequence_logprobs against a float64 reference.

    python -m pytest tests/kernels/test_logprobs.py -q
    SRLM_TEST_SEED=<seed> python -m pytest ...    # the inputs of a failed run (it prints the line)
    SRLM_REQUIRE_NVCC=1 python -m pytest ...      # CI: no nvcc (or no torch CUDA headers) fails

Inputs are fresh random tensors every run (tests/kernels/conftest.py seeds each test).

Tolerances, and why. Errors are normwise, max|ours - ref64| / max|ref64|, where ref64 is the
PyTorch reference in float64 on the *same* (already rounded) inputs. Numbers: 60 to 300 seeds
per case on this machine's CPU, with the shapes and scales used below.
* Forward (always a float32 output): 1e-5 for every input dtype, and within max(2x, 1e-6) of
  PyTorch's own fp32 path (logsumexp + gather). The kernel reads bf16/fp16 exactly and sums in
  fp32: measured <= 7.5e-8 (PyTorch fp32: <= 1.6e-7), far inside the issue's 2e-3 for bf16,
  which PyTorch's bf16 log_softmax itself misses (8e-4 to 3.5e-3).
* Gradient, fp32 inputs: 1e-5 at logits ~ 3, and within max(2x, 2e-6) of PyTorch's fp32
  autograd. At logits ~ 1e4 the fp32 lse is off by up to 2^-9 (half the fp32 ulp at 3e4 to 6e4)
  and softmax inherits it: 12 of 300 seeds measured above 1e-5 (worst 8.5e-4), ours/PyTorch
  fp32 <= 1.00 on all 300, so that case's bound is 2^-9 plus the 2x-PyTorch one.
* Gradient, bf16/fp16 inputs. It is returned in the logits' dtype, so merely rounding the
  exact gradient costs up to half an ulp: 2^-9 on an entry in [0.5, 1) for bf16, i.e. up to
  2^-8 = 3.9e-3 normwise. Measured for ref64 itself rounded to bf16: 1.95e-3 at 2x7x7 and above
  2e-3 in 8% of draws of a single V=7 row. No kernel returning bf16 can promise the issue's
  2e-3 here, so the check is per element:
      |ours - ref64| <= half_ulp(ref64, dtype) + budget * max|ref64|,
  i.e. ours is ref64 correctly rounded, up to what fp32 math costs. The budget is
  max(2x PyTorch's fp32 autograd error on the same inputs, 1e-6 = 16 fp32 ulps of the largest
  entry, for inputs where PyTorch happens to be near exact): about 1e-6 at logits ~ 3, but
  8.7e-4 at logits ~ 1e4 with tied maxima (bf16/fp16 inputs tie often), where the fp32 lse
  alone is off by up to 2^-9 (half the fp32 ulp at 3e4) and softmax inherits it.
  Measured: ours beyond half an ulp by <= 0.5x the budget; at logits ~ 3 ours equals ref64
  correctly rounded on all but <= 0.1% of entries. And, the extension-cpp rule, no worse
  than max(2x, budget) of PyTorch's own bf16/fp16 path (log_softmax in the dtype, its
  backward): up to 5.3e-3 (bf16) / 6.6e-4 (fp16); ours/PyTorch measured <= 1.00.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from srlm_hpc.kernels import build
from srlm_hpc.kernels import logprobs as lp_mod
from srlm_hpc.kernels import sequence_logprobs, sequence_logprobs_reference

IGNORE = -100
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="no CUDA device: CUDA kernels are only compiled here")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
FWD_TOL = 1e-5
GRAD_TOL_FP32 = 1e-5


def make_inputs(B, T, V, dtype, device, frac_ignored=0.3, scale=3.0):
    logits = (torch.randn(B, T, V, device=device) * scale).to(dtype)
    labels = torch.randint(0, V, (B, T), device=device)
    labels[torch.rand(B, T, device=device) < frac_ignored] = IGNORE
    return logits, labels


def rel_err(ours, ref):
    ref = ref.double()
    return ((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def half_ulp(x, dtype):
    """Half the spacing of `dtype` at each x (float64): what rounding x to dtype may cost."""
    fi = torch.finfo(dtype)
    digits = round(-math.log2(fi.eps)) + 1  # significant bits: bf16 8, fp16 11
    emin = round(math.log2(fi.smallest_normal))  # below 2^emin the spacing is fixed
    _, e = torch.frexp(x)  # |x| = m * 2^e with m in [0.5, 1); frexp(0) gives e = 0
    exp = torch.where(x == 0, emin, e - 1).clamp_min(emin)
    return torch.ldexp(torch.ones_like(x), exp - digits)


def with_grad(f, logits, labels):
    x = logits.detach().clone().requires_grad_()
    out = f(x, labels)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), grad


def ref64(logits, labels):
    """float64 value and gradient of the reference on the same inputs."""
    return with_grad(lambda x, y: sequence_logprobs_reference(x, y, IGNORE), logits.double(), labels)


def ours_with_grad(logits, labels, **kw):
    return with_grad(lambda x, y: sequence_logprobs(x, y, IGNORE, **kw), logits, labels)


def pytorch_in_dtype(x, labels):
    """PyTorch's plain path without upcasting: log_softmax in the logits' dtype, then gather."""
    active = labels != IGNORE
    lp = torch.log_softmax(x, -1).gather(-1, torch.where(active, labels, 0).unsqueeze(-1))
    return torch.where(active, lp.squeeze(-1), 0).float().sum(-1)


def check_against_reference(logits, labels, vs_pytorch_in_dtype=True, grad_tol_fp32=GRAD_TOL_FP32):
    ours, g_ours = ours_with_grad(logits, labels)
    ref, g_ref = ref64(logits, labels)
    dtype = logits.dtype
    assert ours.dtype == torch.float32 and g_ours.dtype == dtype
    # PyTorch's own fp32 path on the same inputs sets the fp32 accuracy bar.
    naive, g_naive = with_grad(lambda x, y: sequence_logprobs_reference(x, y, IGNORE),
                               logits.float(), labels)
    fwd, fwd_naive = rel_err(ours, ref), rel_err(naive, ref)
    assert fwd <= FWD_TOL, f"forward rel err {fwd:.2e} (PyTorch fp32: {fwd_naive:.2e})"
    assert fwd <= max(2 * fwd_naive, 1e-6), f"forward {fwd:.2e} vs PyTorch fp32 {fwd_naive:.2e}"
    grad, grad_naive = rel_err(g_ours, g_ref), rel_err(g_naive, g_ref)
    if dtype == torch.float32:
        assert grad <= grad_tol_fp32, f"grad rel err {grad:.2e} (PyTorch fp32: {grad_naive:.2e})"
        assert grad <= max(2 * grad_naive, 2e-6), f"grad {grad:.2e} vs PyTorch fp32 {grad_naive:.2e}"
    else:  # see the module docstring: correctly rounded up to the fp32 budget
        budget = max(2 * grad_naive, 1e-6)
        beyond = (g_ours.double() - g_ref).abs() - half_ulp(g_ref, dtype)
        beyond /= g_ref.abs().max().clamp_min(1e-300)
        i = tuple(torch.unravel_index(beyond.argmax(), beyond.shape))
        assert beyond[i] <= budget, (
            f"grad{list(map(int, i))} = {g_ours[i].item():.6e}, float64 {g_ref[i].item():.6e}: "
            f"{beyond[i].item():.2e} * max|grad| beyond half a {dtype} ulp (budget {budget:.2e} "
            f"= max(2x PyTorch fp32 {grad_naive:.2e}, 1e-6)); normwise {grad:.2e}")
        if vs_pytorch_in_dtype:
            _, g_plain = with_grad(pytorch_in_dtype, logits, labels)
            grad_plain = rel_err(g_plain, g_ref)
            assert grad <= max(2 * grad_plain, budget), (
                f"grad {grad:.2e} vs PyTorch's {dtype} log_softmax {grad_plain:.2e} "
                f"(fp32 budget {budget:.2e})")
    # Ignored rows: gradient exactly zero.
    assert (g_ours[labels == IGNORE] == 0).all()


SHAPES = [(3, 5, 1), (2, 7, 7), (5, 9, 33), (3, 11, 4097), (2, 3, 32000), (1, 3, 128256),
          (1, 2, 151936)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_reference(shape, dtype, device):
    check_against_reference(*make_inputs(*shape, dtype, device))


@pytest.mark.parametrize("device", DEVICES)
def test_all_ignored_sequences_are_zero(device):
    logits, labels = make_inputs(3, 6, 50, torch.float32, device)
    labels[1] = IGNORE
    out, grad = ours_with_grad(logits, labels)
    assert out[1].item() == 0.0 and (grad[1] == 0).all()
    labels[:] = IGNORE
    out, grad = ours_with_grad(logits, labels)
    assert (out == 0).all() and (grad == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_non_contiguous_inputs(dtype, device):
    V = 1001
    # A slice along V: row stride 1037, rows start at odd offsets (no 16-byte alignment).
    big, labels = make_inputs(2, 5, V + 36, dtype, device)
    check_against_reference(big[:, :, 3:3 + V], labels.clamp(max=V - 1))
    # Transposed batch: logits strides (V, B*V, 1) and non-contiguous labels.
    base, lab_tb = make_inputs(5, 3, V, dtype, device)
    check_against_reference(base.transpose(0, 1), lab_tb.t())
    # Stride != 1 over V is copied once by the wrapper.
    wide, labels = make_inputs(2, 4, 2 * V, dtype, device)
    check_against_reference(wide[:, :, ::2], labels.clamp(max=V - 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_large_logits_do_not_overflow(dtype, device):
    logits, labels = make_inputs(2, 6, 3000, dtype, device, scale=1e4)
    logits[0, 0, :] = 1e4  # a row of identical huge values: lse = 1e4 + log(V)
    labels[0, 0] = 5
    out, grad = ours_with_grad(logits, labels)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    # Not against PyTorch's bf16 path here: with tied maxima the exact gradient entries are
    # 0.5, which that path hits exactly, while our fp32 lse (ulp 2^-8 at 3e4) may put them one
    # bf16 ulp lower (measured 6.5e-4 normwise). The per-element check and its fp32 budget
    # (PyTorch fp32 measures 8.7e-4 here) still hold.
    check_against_reference(logits, labels, vs_pytorch_in_dtype=False, grad_tol_fp32=2 ** -9)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    logits, labels = make_inputs(2, 4, 9, torch.float64, device)
    labels[0, 1] = IGNORE
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sequence_logprobs(x, labels, IGNORE), (logits,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype, device):
    assert lp_mod.extension_available()
    ops = torch.ops.srlm_hpc
    logits, labels = make_inputs(2, 5, 37, dtype, device)
    for inplace in (False, True):
        torch.library.opcheck(ops.sequence_logprobs.default,
                              (logits.clone().requires_grad_(), labels, IGNORE, inplace))
    _, lse = ops.sequence_logprobs(logits, labels, IGNORE, False)
    g = torch.randn(2, device=device)
    torch.library.opcheck(ops.sequence_logprobs_backward.default, (g, logits, labels, lse, IGNORE))
    torch.library.opcheck(ops.sequence_logprobs_backward_.default,
                          (g, logits.clone(), labels, lse, IGNORE))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_inplace_backward_matches_out_of_place(dtype, device):
    logits0, labels = make_inputs(3, 7, 515, dtype, device)
    grads = []
    for inplace in (False, True):
        leaf = logits0.clone().requires_grad_()
        logits = leaf * 1  # a computed (non-leaf) tensor, like lm_head's output
        out = sequence_logprobs(logits, labels, IGNORE, inplace_backward=inplace)
        (out * torch.arange(1, 4, device=device)).sum().backward()  # unequal grad_out per b
        grads.append(leaf.grad)
        if inplace:  # the logits buffer now holds the gradient
            assert torch.equal(logits.detach(), leaf.grad)
    assert torch.equal(grads[0], grads[1])
    with pytest.raises(ValueError, match="inplace_backward"):
        sequence_logprobs(logits0.clone().requires_grad_(), labels, IGNORE, inplace_backward=True)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_label_names_labels(device):
    logits, labels = make_inputs(2, 4, 10, torch.float32, device)
    labels[1, 2] = 10
    with pytest.raises(RuntimeError, match=r"labels\[1, 2\] = 10 is out of range \[0, V=10\)"):
        sequence_logprobs(logits, labels)
    labels[1, 2] = -1
    with pytest.raises(RuntimeError, match=r"labels\[1, 2\] = -1"):
        sequence_logprobs(logits, labels)
    with pytest.raises(RuntimeError, match="labels must be int64"):
        sequence_logprobs(logits, labels.int())
    with pytest.raises(RuntimeError, match=r"labels must be \[B, T\]"):
        sequence_logprobs(logits, labels[:, :3])


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_and_compiles(device):
    logits, labels = make_inputs(4, 16, 333, torch.float32, device)
    a, ga = ours_with_grad(logits, labels)
    b, gb = ours_with_grad(logits, labels)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    x = logits.clone().requires_grad_()
    f = torch.compile(lambda x: sequence_logprobs(x, labels, IGNORE), fullgraph=True)
    f(x).sum().backward()
    assert torch.allclose(f(x).detach(), a, rtol=1e-6, atol=0) and torch.equal(x.grad, ga)


def test_fallback_warns_once_and_matches(monkeypatch):
    logits, labels = make_inputs(2, 6, 77, torch.float32, "cpu")
    expected = sequence_logprobs(logits, labels)  # real kernel (loads it if needed)

    def fail():
        raise RuntimeError("simulated: no C++ compiler")

    monkeypatch.setattr(build, "load_extension", fail)
    monkeypatch.setattr(lp_mod, "_state", {"tried": False, "ok": False, "reason": None})
    with pytest.warns(RuntimeWarning, match="simulated: no C\\+\\+ compiler.*falls back"):
        got = sequence_logprobs(logits, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        again = sequence_logprobs(logits, labels)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert torch.equal(got, again)


CUDA_CHECKS = ["logprobs_cuda.cu (torch-free)", "logprobs_cuda.cu (-DSRLM_HPC_WITH_TORCH)",
               "logprobs_cuda_binding.cpp (syntax only)"]


def _cuda_check_unavailable(reason):
    """Skip, or fail under SRLM_REQUIRE_NVCC=1 (CI has nvcc: a kernel that does not compile must not land)."""
    if os.environ.get("SRLM_REQUIRE_NVCC", "").strip().lower() in {"1", "true", "yes", "on"}:
        pytest.fail(f"CUDA compile check required (SRLM_REQUIRE_NVCC=1) but {reason}", pytrace=False)
    pytest.skip(reason)


def test_ptxas_check_refuses_spills_and_excess_registers():
    text = """ptxas info    : Compiling entry function '_ZN8srlm_hpc15lse_rows_kernelIfLi256EE' for 'sm_90'
ptxas info    : Function properties for _ZN8srlm_hpc15lse_rows_kernelIfLi256EE
    8 bytes stack frame, 8 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers
ptxas info    : Compiling entry function '_ZN8srlm_hpc15lse_rows_kernelIdLi256EE' for 'sm_90'
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 100 registers, used 1 barriers
"""
    rows = build.parse_ptxas(text)
    assert [(r["registers"], r["spill_stores"], r["spill_loads"]) for r in rows] == [(64, 8, 16), (100, 0, 0)]
    with pytest.raises(RuntimeError, match=r"IfLi256EE \(sm_90\): 64 registers \(limit 64\), 8 B spill"):
        build.check_ptxas(rows)
    build.check_ptxas(rows[1:])  # float64 kernels may use 128
    rows[1]["registers"] = 130
    with pytest.raises(RuntimeError, match="limit 128"):
        build.check_ptxas(rows[1:])


def test_cuda_sources_compile(tmp_path):
    from torch.utils.cpp_extension import include_paths

    if build.find_nvcc() is None:
        _cuda_check_unavailable("nvcc not on PATH and no CUDA_HOME: cannot compile the CUDA sources")
    # cuda_compile_only runs the two torch checks only when torch ships ATen/cuda headers.
    torch_cuda_headers = any((Path(p) / "ATen" / "cuda" / "CUDAContext.h").exists()
                             for p in include_paths())
    checked = build.cuda_compile_only(str(tmp_path))
    assert checked == (CUDA_CHECKS if torch_cuda_headers else CUDA_CHECKS[:1])
    assert (tmp_path / "logprobs_cuda.o").stat().st_size > 0
    # ptxas -v: every kernel of every arch reported, none spilling, registers within the
    # launch bounds (cuda_compile_only raises otherwise; this checks the report is real).
    report = json.loads((tmp_path / "ptxas.json").read_text())
    archs = {f"sm_{a.replace('+PTX', '').replace('.', '')}" for a in build.DEFAULT_ARCHS.split(";")}
    for arch in archs:
        names = [r["kernel"] for r in report if r["arch"] == arch]
        for kernel in ("lse_rows_kernel", "sum_rows_kernel", "grad_rows_kernel"):
            assert any(kernel in n for n in names), f"{kernel} missing from ptxas -v for {arch}"
    assert all(r["spill_stores"] == 0 and r["spill_loads"] == 0 for r in report)
    assert all(r["registers"] <= build.register_limit(r["kernel"]) for r in report)
    if not torch_cuda_headers:
        _cuda_check_unavailable(f"torch {torch.__version__} has no ATen/cuda headers: only "
                                "the torch-free compile ran, not the binding checks")
    assert (tmp_path / "logprobs_cuda_torch.o").stat().st_size > 0


def test_concurrent_builds_share_one_cache(tmp_path):
    """Three processes build into one empty cache dir at once: one compiles, all load it."""
    script = textwrap.dedent("""
        import torch
        from srlm_hpc.kernels import sequence_logprobs
        from srlm_hpc.kernels.logprobs import extension_available
        assert extension_available()
        torch.manual_seed(0)
        x = torch.randn(2, 3, 50); y = torch.randint(0, 50, (2, 3))
        print(repr(sequence_logprobs(x, y).tolist()))
    """)
    env = {**os.environ, "SRLM_HPC_KERNEL_CACHE": str(tmp_path),
           "SRLM_HPC_KERNELS_CUDA": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert len({o for o, _ in outs}) == 1
    (key_dir,) = tmp_path.iterdir()
    assert (key_dir / "ready").exists() and not (key_dir / "lock").exists()


# ----------------------------------------------------------------------------- issue 14
def zloss(x):
    return torch.logsumexp(x.float(), -1).pow(2).mean()


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_backward_raises_when_another_backward_reads_the_logits_later(device):
    """A z-loss computed before the op backpropagates after it: it would read the gradient."""
    h = torch.randn(2, 5, 8, device=device, requires_grad=True)
    W = torch.randn(8, 37, device=device, requires_grad=True)
    labels = torch.randint(0, 37, (2, 5), device=device)
    logits = h @ W
    z = zloss(logits)
    logp = sequence_logprobs(logits, labels, IGNORE, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (logp.sum() + z).backward()


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_backward_with_a_zloss_that_runs_first_is_right(device):
    """The z-loss computed after the op backpropagates first: no raise, and the same gradient."""
    h0 = torch.randn(2, 5, 8, device=device)
    W = torch.randn(8, 37, device=device)
    labels = torch.randint(0, 37, (2, 5), device=device)
    grads = []
    for f in (lambda x: sequence_logprobs(x, labels, IGNORE, inplace_backward=True),
              lambda x: sequence_logprobs_reference(x, labels, IGNORE)):
        h = h0.clone().requires_grad_()
        logits = h @ W
        logp = f(logits)
        (logp.sum() + zloss(logits)).backward()
        grads.append(h.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_refuses_a_view_of_a_leaf_and_aliased_elements(device):
    logits, labels = make_inputs(2, 5, 37, torch.float32, device)
    leaf = logits.clone().requires_grad_()
    with pytest.raises(ValueError, match="view of a leaf tensor"):
        sequence_logprobs(leaf.view_as(leaf), labels, IGNORE, inplace_backward=True)
    with pytest.raises(ValueError, match="view of a leaf tensor"):
        sequence_logprobs(leaf.detach().requires_grad_()[:, :], labels, IGNORE, inplace_backward=True)
    computed = leaf * 1
    # Every sequence is the same memory (stride 0 over B): one gradient per element is impossible.
    with pytest.raises(ValueError, match="do not share memory"):
        sequence_logprobs(computed[:1].expand(2, 5, 37), labels, IGNORE, inplace_backward=True)
    # Rows 10 elements apart with V = 37: neighbouring rows overlap.
    flat = (leaf * 1).reshape(-1)
    overlapping = flat.as_strided((2, 4, 37), (40, 10, 1))
    with pytest.raises(ValueError, match="do not share memory"):
        sequence_logprobs(overlapping, labels[:, :4], IGNORE, inplace_backward=True)
    # Out of place, the same inputs are fine (nothing is written over them).
    out = sequence_logprobs(computed[:1].expand(2, 5, 37), labels, IGNORE)
    assert out.shape == (2,)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_op_called_directly_refuses_overlap(device):
    assert lp_mod.extension_available()
    logits, labels = make_inputs(1, 5, 37, torch.float32, device)
    _, lse = torch.ops.srlm_hpc.sequence_logprobs(logits, labels, IGNORE, False)
    expanded = logits.expand(3, 5, 37)
    with pytest.raises(RuntimeError, match="share memory"):
        torch.ops.srlm_hpc.sequence_logprobs_backward_(torch.ones(3, device=device), expanded,
                                                       labels.expand(3, 5), lse.expand(3, 5), IGNORE)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_on_a_slice_warns_that_it_saves_nothing(device):
    logits, labels = make_inputs(2, 6, 37, torch.float32, device)
    full = logits.clone().requires_grad_() * 1
    with pytest.warns(UserWarning, match="saves no memory"):
        sequence_logprobs(full[:, :-1], labels[:, :-1], IGNORE, inplace_backward=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a view of the whole tensor (as dpo_loss passes) does save
        sequence_logprobs(full[:, None].squeeze(1), labels, IGNORE, inplace_backward=True)


@pytest.mark.parametrize("device", DEVICES)
def test_direct_inplace_op_bumps_the_version(device):
    assert lp_mod.extension_available()
    logits, labels = make_inputs(2, 5, 37, torch.float32, device)
    _, lse = torch.ops.srlm_hpc.sequence_logprobs(logits, labels, IGNORE, False)
    before = logits._version
    torch.ops.srlm_hpc.sequence_logprobs_backward_(torch.ones(2, device=device), logits, labels, lse, IGNORE)
    assert logits._version > before


@pytest.mark.parametrize("device", DEVICES)
def test_label_check_in_debug_mode_names_the_label(device, monkeypatch):
    logits, labels = make_inputs(2, 4, 10, torch.float32, device)
    labels[1, 2] = 10
    monkeypatch.setenv("SRLM_HPC_CHECK_LABELS", "1")
    with pytest.raises(RuntimeError, match=r"labels\[1, 2\] = 10 is out of range \[0, V=10\)"):
        sequence_logprobs(logits, labels)
    labels[1, 2] = -7
    with pytest.raises(RuntimeError, match=r"labels\[1, 2\] = -7"):
        sequence_logprobs(logits, labels)


@requires_cuda
def test_cuda_without_debug_flag_bad_label_gives_nan_for_its_sequence_only(monkeypatch):
    monkeypatch.delenv("SRLM_HPC_CHECK_LABELS", raising=False)
    logits, labels = make_inputs(3, 4, 10, torch.float32, "cuda")
    labels[1, 2] = 10
    x = logits.clone().requires_grad_()
    out = sequence_logprobs(x, labels)
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    out.sum().backward()
    assert torch.isfinite(x.grad[[0, 2]]).all() and torch.isnan(x.grad[1, 2]).all()


NONFINITE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def nonfinite_rows(V, dtype, device):
    """Rows (label) chosen to hit each non-finite rule, with V large enough for several packs."""
    x = (torch.randn(8, V, device=device) * 3).to(dtype)
    y = torch.randint(0, V, (8,), device=device)
    inf, nan = float("inf"), float("nan")
    x[0, 5] = inf                       # +inf, label elsewhere: lse +inf, logp -inf
    x[1, 5] = inf; y[1] = 5             # label on the +inf: inf - inf = NaN
    x[2, 17] = nan                      # NaN among finite values
    x[3, :] = -inf; x[3, 9] = nan; x[3, 10] = 0.5; y[3] = 10   # NaN in a pack of -inf
    x[4, :] = -inf; x[4, V - 1] = nan; x[4, 0] = 0.5; y[4] = 0  # NaN alone at the tail
    x[5, 3] = inf; x[5, 4] = nan        # NaN and +inf: NaN
    x[6, ::3] = -inf; y[6] = 1          # many -inf: their gradient is exactly 0
    x[7, :] = -inf; x[7, 2] = 1.0; y[7] = 2  # one finite value: logp 0
    return x[:, None], y[:, None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", NONFINITE_DTYPES, ids=["fp32", "bf16", "fp16", "fp64"])
@pytest.mark.parametrize("V", [37, 4100])
def test_non_finite_logits_match_pytorch(V, dtype, device):
    x, y = nonfinite_rows(V, dtype, device)
    ours, g_ours = ours_with_grad(x, y)
    ref, g_ref = with_grad(lambda a, b: sequence_logprobs_reference(a, b, IGNORE),
                           x.to(torch.float64), y)
    for r in range(x.shape[0]):  # the same NaN / +-inf pattern, and close finite values
        o, e = ours[r].double(), ref[r]
        assert torch.isnan(o) == torch.isnan(e) and (torch.isinf(o) == torch.isinf(e)), (r, o, e)
        if torch.isfinite(e):
            assert abs(o - e) <= 1e-5 * max(1.0, abs(e)), (r, o.item(), e.item())
        if torch.isinf(e):
            assert o == e, (r, o.item(), e.item())
    g_o, g_r = g_ours.double(), g_ref
    assert torch.equal(torch.isnan(g_o), torch.isnan(g_r))
    fin = torch.isfinite(g_r)
    # -inf logits off the label: exactly zero, as in PyTorch (the old exp clamp gave 1.6e-38 * g)
    zero = (x.double() == -float("inf")) & fin
    assert (g_o[zero] == 0).all()
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    assert ((g_o[fin] - g_r[fin]).abs() <= tol).all()


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_subnormals_and_small_values_are_read_exactly(device):
    """Every fp16 value with |x| < 2^-10, subnormals included, in one row: the exp sum
    moves by ~1e-5 relative, which the forward's 1e-6 check sees if any is misread."""
    bits = torch.arange(0, 0x1400, dtype=torch.int32)  # +0 ... 2^-10 - ulp (0x0000-0x13FF)
    pos = bits.to(torch.int16).view(torch.float16)
    row = torch.cat([pos, -pos, pos * 0 + 1]).to(device)  # -0 included; one 1.0 as the label
    x = row[None, None, :].contiguous()
    y = torch.tensor([[row.numel() - 1]], device=device)
    ours, g_ours = ours_with_grad(x, y)
    ref, g_ref = ref64(x, y)
    assert abs(ours.double().item() - ref.item()) <= 1e-6 * abs(ref.item())
    assert rel_err(g_ours, g_ref) <= 2 ** -10  # fp16 output: rounding alone
