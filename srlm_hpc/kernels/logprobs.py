"""Per-sequence log-probabilities for DPO, without a [B, T, V] log-softmax.

    python -m pytest tests/kernels/test_logprobs.py     # correctness
    python bench/logprobs.py                             # speed and memory vs naive / TRL

    logp[b] = sum_t [labels[b,t] != ignore_index] * (logits[b,t,labels[b,t]] - logsumexp(logits[b,t,:]))

`sequence_logprobs` calls the `srlm_hpc::sequence_logprobs` torch op (C++ for CPU,
CUDA for GPU; schema in csrc/logprobs.cpp). Forward streams each active row once
and keeps only lse[b, t] (B*T floats) for backward; for the DPO shape B=4, T=2048,
V=128256 in bf16 that is 32 KiB instead of the 4 GiB fp32 log-softmax the naive
`logits.float().log_softmax(-1).gather(...)` keeps alive.

The autograd formula and the fake (meta) kernels are registered here with
torch.library, so the op works under torch.compile and torch.library.opcheck.
They are registered when the extension is first loaded, i.e. on the first call,
never at import. If the extension cannot be built (no compiler, read-only cache,
...), every call falls back to `sequence_logprobs_reference` after one
RuntimeWarning that says why.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

from srlm_hpc.kernels.reference import sequence_logprobs_reference

_OP = "srlm_hpc::sequence_logprobs"
_lock = threading.Lock()
_state: dict = {"tried": False, "ok": False, "reason": None}


def _acc_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _fake_forward(logits, labels, ignore_index=-100, inplace_backward=False):
    B, T = logits.shape[0], logits.shape[1]
    acc = _acc_dtype(logits)
    return logits.new_empty((B,), dtype=acc), logits.new_empty((B, T), dtype=acc)


def _fake_backward(grad_logp, logits, labels, lse, ignore_index):
    return logits.new_empty(logits.shape)  # contiguous, logits dtype


def _fake_backward_inplace(grad_logp, logits, labels, lse, ignore_index):
    return None


def _setup_context(ctx, inputs, output):
    logits, labels, ignore_index, inplace_backward = inputs
    _, lse = output
    ctx.save_for_backward(logits, labels, lse)
    ctx.ignore_index = ignore_index
    ctx.inplace_backward = inplace_backward
    # lse is saved state, not a result: it has no gradient.
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_logp, _grad_lse):
    logits, labels, lse = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None
    ops = torch.ops.srlm_hpc
    if ctx.inplace_backward:
        # Overwrites the saved logits with their gradient: no new [B,T,V] buffer. The op's
        # ADInplaceOrView kernel (csrc/logprobs.cpp) bumps their version, so if anything
        # else saved these logits for a backward that runs after this one (a z-loss
        # computed before this op), autograd raises instead of using the gradient as input.
        ops.sequence_logprobs_backward_(grad_logp, logits, labels, lse, ctx.ignore_index)
        grad = logits
    else:
        grad = ops.sequence_logprobs_backward(grad_logp, logits, labels, lse, ctx.ignore_index)
    return grad, None, None, None


def _register_python_parts() -> None:
    torch.library.register_fake(_OP)(_fake_forward)
    torch.library.register_fake(_OP + "_backward")(_fake_backward)
    torch.library.register_fake(_OP + "_backward_")(_fake_backward_inplace)
    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


def extension_available() -> bool:
    """Build/load the extension if not done yet; False (after one warning) if it cannot be."""
    if _state["tried"]:
        return _state["ok"]
    with _lock:
        if not _state["tried"]:
            try:
                if os.environ.get("SRLM_HPC_DISABLE_KERNELS") == "1":
                    raise RuntimeError("disabled by SRLM_HPC_DISABLE_KERNELS=1")
                from srlm_hpc.kernels import build  # not at import: `python -m ...build` imports us

                build.load_extension()
                _register_python_parts()
                _state["ok"] = True
            except Exception as exc:  # any build/load failure means: use the reference
                first_line = (str(exc).strip().splitlines() or [""])[0][:300]
                _state["reason"] = f"{type(exc).__name__}: {first_line}"
                warnings.warn(
                    f"srlm_hpc.kernels: C++/CUDA extension unavailable ({_state['reason']}); "
                    "sequence_logprobs falls back to the pure PyTorch reference "
                    "(slower, materialises [B, T, V] in fp32).", RuntimeWarning, stacklevel=3)
            _state["tried"] = True
    return _state["ok"]


def may_overlap(t: torch.Tensor) -> bool:
    """True unless the strides prove no two elements share memory (csrc/logprobs.h has the
    same test): an expanded tensor (stride 0) or an as_strided alias fails it."""
    span = 1  # largest offset reached by the smaller-stride dims, plus one
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride < span:
            return True
        span += stride * (size - 1)
    return False


def check_inplace_target(logits: torch.Tensor) -> None:
    """Refuse (ValueError) logits the in-place backward must not overwrite; warn when it saves nothing."""
    base = logits._base if logits._base is not None else logits  # a view's _base is never a view
    if base.is_leaf:
        what = "a leaf tensor" if base is logits else f"a view of a leaf tensor (shape {tuple(base.shape)})"
        raise ValueError(f"inplace_backward=True would overwrite logits, {what} that requires grad; "
                         "use it only for computed logits (e.g. lm_head output)")
    if may_overlap(logits):
        raise ValueError(f"inplace_backward=True needs logits whose elements do not share memory; got "
                         f"shape {tuple(logits.shape)} with strides {logits.stride()} (expanded or "
                         "overlapping): pass inplace_backward=False or logits.contiguous()")
    if logits.numel() < base.numel():
        warnings.warn(f"sequence_logprobs: inplace_backward=True on a part ({tuple(logits.shape)}) of a "
                      f"larger tensor ({tuple(base.shape)}) saves no memory: the view's backward "
                      "allocates a zero gradient of the whole tensor anyway. Slice the hidden states "
                      "before the LM head instead, or pass inplace_backward=False.", UserWarning,
                      stacklevel=3)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                      inplace_backward: bool = False) -> torch.Tensor:
    """Sum over t of log p(labels[b,t] | logits[b,t]) for each sequence b.

    logits: [B, T, V] float32/bfloat16/float16 (float64 accepted, for gradcheck), any
        strides with stride 1 over V; other layouts are copied once with .contiguous().
    labels: [B, T] int64, already aligned with logits (the caller shifts by one);
        entries equal to ignore_index are skipped and their logits never read.
    inplace_backward: backward writes the gradient into `logits` itself instead of a
        new [B, T, V] buffer (for bf16 B=4 T=2048 V=128256: saves 2 GiB). Only set
        it when nothing reads these logits after backward; their values are gone, and
        autograd raises if another backward that saved them runs after this one.
        Refused (ValueError) for a leaf or a view of one and for logits whose elements
        share memory; warns on a slice of a larger tensor, where it saves nothing.
        Ignored by the pure PyTorch fallback.
    Labels out of [0, V) that are not ignore_index: the CPU raises RuntimeError naming
        labels[b, t]; CUDA, to avoid a device-to-host sync, returns NaN for that sequence
        unless SRLM_HPC_CHECK_LABELS=1 is set, which makes it raise the same error.
    Returns [B] float32 (float64 for float64 logits), differentiable w.r.t. logits.
    """
    if logits.dim() == 3 and logits.shape[-1] > 1 and logits.stride(-1) != 1:
        # The kernels read rows with unit stride (16-byte loads on GPU); a layout like
        # logits.transpose(1, 2).contiguous().transpose(1, 2) is copied once here (and the
        # copy is what an in-place backward overwrites).
        logits = logits.contiguous()
    if inplace_backward and logits.requires_grad:
        check_inplace_target(logits)
    if not extension_available():
        return sequence_logprobs_reference(logits, labels, ignore_index)
    logp, _ = torch.ops.srlm_hpc.sequence_logprobs(logits, labels, ignore_index, inplace_backward)
    return logp
