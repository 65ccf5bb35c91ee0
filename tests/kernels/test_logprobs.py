"""Correctness of srlm_hpc.kernels.sequence_logprobs against a float64 reference.

    python -m pytest tests/kernels/test_logprobs.py -q

Inputs are fresh random tensors (seeded per test, results never hard-coded).

Tolerances, and why. Errors are normwise: max|ours - ref64| / max|ref64|, where ref64
is the PyTorch reference run in float64 on the *same* (already rounded) inputs.
* Forward, every dtype: 1e-5. The kernel reads bf16/fp16 exactly and accumulates
  in fp32, so a bf16 input costs nothing extra. PyTorch's own fp32 path
  (logsumexp + gather) measures ~1e-7 here; we also assert we are within
  max(2x that, 1e-6), i.e. a few fp32 ulps of what PyTorch itself achieves.
* Gradient: 1e-5 for fp32. A bf16/fp16 gradient is rounded to its dtype, which
  alone costs up to the unit roundoff: 2^-8 = 3.9e-3 (bf16), 2^-11 = 4.9e-4 (fp16);
  measured 2.0e-3 for bf16 at V=7, so a flat 2e-3 would be flaky. The bounds are
  4e-3 / 1e-3, and the tighter check is against PyTorch's own fp32 autograd rounded
  to the same dtype (within max(2x that, 2e-6)).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import warnings
import zlib

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
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-8, torch.float16: 1e-3}


@pytest.fixture(autouse=True)
def _seed(request):
    # Seed from the test id: different per test, reproducible per test.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_inputs(B, T, V, dtype, device, frac_ignored=0.3, scale=3.0):
    logits = (torch.randn(B, T, V, device=device) * scale).to(dtype)
    labels = torch.randint(0, V, (B, T), device=device)
    labels[torch.rand(B, T, device=device) < frac_ignored] = IGNORE
    return logits, labels


def rel_err(ours, ref):
    ref = ref.double()
    return ((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def ref64(logits, labels):
    """float64 value and gradient of the reference on the same inputs."""
    x = logits.detach().double().requires_grad_()
    out = sequence_logprobs_reference(x, labels, IGNORE)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), grad


def ours_with_grad(logits, labels, **kw):
    x = logits.detach().clone().requires_grad_()
    out = sequence_logprobs(x, labels, IGNORE, **kw)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), grad


def check_against_reference(logits, labels):
    ours, g_ours = ours_with_grad(logits, labels)
    ref, g_ref = ref64(logits, labels)
    dtype = logits.dtype
    assert ours.dtype == torch.float32 and g_ours.dtype == dtype
    # PyTorch's own fp32 path on the same inputs sets the accuracy bar.
    x32 = logits.detach().float().requires_grad_()
    naive = sequence_logprobs_reference(x32, labels, IGNORE)
    (g_naive,) = torch.autograd.grad(naive.sum(), x32)
    fwd, fwd_naive = rel_err(ours, ref), rel_err(naive.detach(), ref)
    assert fwd <= FWD_TOL, f"forward rel err {fwd:.2e} (PyTorch fp32: {fwd_naive:.2e})"
    assert fwd <= max(2 * fwd_naive, 1e-6), f"forward {fwd:.2e} vs PyTorch fp32 {fwd_naive:.2e}"
    grad, grad_naive = rel_err(g_ours, g_ref), rel_err(g_naive.to(dtype), g_ref)
    assert grad <= GRAD_TOL[dtype], f"grad rel err {grad:.2e} (PyTorch: {grad_naive:.2e})"
    assert grad <= max(2 * grad_naive, 2e-6), f"grad {grad:.2e} vs PyTorch {grad_naive:.2e}"
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
    check_against_reference(logits, labels)


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


@pytest.mark.skipif(shutil.which("nvcc") is None and build.find_nvcc() is None,
                    reason="nvcc not on PATH and no CUDA_HOME: cannot compile CUDA sources")
def test_cuda_sources_compile(tmp_path):
    checked = build.cuda_compile_only(str(tmp_path))
    assert checked[0] == "logprobs_cuda.cu (torch-free)"
    assert (tmp_path / "logprobs_cuda.o").stat().st_size > 0


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
    env = {**__import__("os").environ, "SRLM_HPC_KERNEL_CACHE": str(tmp_path),
           "SRLM_HPC_KERNELS_CUDA": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert len({o for o, _ in outs}) == 1
    (key_dir,) = tmp_path.iterdir()
    assert (key_dir / "ready").exists() and not (key_dir / "lock").exists()
