// Shared argument checks for the srlm_hpc::sequence_logprobs backends.
// Every message names the argument it is about, so a failure in a training
// script points at the caller's tensor, not at this file.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <vector>

namespace srlm_hpc {

// Float64 is accepted so torch.autograd.gradcheck can check the real kernel;
// its outputs are float64. Every other dtype accumulates and returns float32.
inline at::ScalarType acc_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_inputs(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 3, "sequence_logprobs: logits must be [B, T, V], got ",
              logits.dim(), " dims with shape ", logits.sizes());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == logits.size(0) &&
                  labels.size(1) == logits.size(1),
              "sequence_logprobs: labels must be [B, T] = ", logits.sizes().slice(0, 2),
              " to match logits, got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong,
              "sequence_logprobs: labels must be int64, got ", labels.scalar_type());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble,
              "sequence_logprobs: logits must be float32, bfloat16, float16 or float64, got ", dt);
  TORCH_CHECK(logits.size(2) >= 1, "sequence_logprobs: logits must have V >= 1, got V = ",
              logits.size(2));
  TORCH_CHECK(logits.size(2) == 1 || logits.stride(2) == 1,
              "sequence_logprobs: logits must have stride 1 over V (got stride ", logits.stride(2),
              "); call logits.contiguous() first");
  TORCH_CHECK(labels.device() == logits.device(), "sequence_logprobs: labels is on ",
              labels.device(), " but logits is on ", logits.device());
}

// SRLM_HPC_CHECK_LABELS=1 (any value but "" and "0"): the CUDA forward checks the label
// range on the host before launching, which costs a device-to-host sync, and raises naming
// labels[b, t]. By default it does not: an out-of-range label makes that row's lse and its
// sequence's logp NaN (the kernels never read outside the row). The CPU always checks:
// there it costs no sync.
inline bool label_check_requested() {
  const char* v = std::getenv("SRLM_HPC_CHECK_LABELS");
  return v != nullptr && v[0] != '\0' && !(v[0] == '0' && v[1] == '\0');
}

// Host-side label check: labels is [B, T] int64 on the CPU.
inline void check_label_range(const at::Tensor& labels_cpu, int64_t V, int64_t ignore_index) {
  const auto acc = labels_cpu.accessor<int64_t, 2>();
  for (int64_t b = 0; b < acc.size(0); ++b) {
    for (int64_t t = 0; t < acc.size(1); ++t) {
      const int64_t y = acc[b][t];
      TORCH_CHECK(y == ignore_index || (y >= 0 && y < V), "sequence_logprobs: labels[", b, ", ",
                  t, "] = ", y, " is out of range [0, V=", V,
                  ") and is not ignore_index=", ignore_index);
    }
  }
}

// Sufficient test that no two (b, t, v) elements share memory: with the dims of size > 1
// sorted by stride, each stride must pass the largest offset the smaller dims reach. An
// expanded tensor (stride 0) or rows closer than V apart (as_strided) fail it.
inline bool provably_non_overlapping(const at::Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t span = 1;  // largest offset reached so far, plus one
  for (const auto& [stride, size] : dims) {
    if (stride < span) return false;
    span += stride * (size - 1);
  }
  return true;
}

// The in-place backward writes one gradient per element: aliased elements would get
// whichever row wrote last.
inline void check_inplace_target(const at::Tensor& logits) {
  TORCH_CHECK(provably_non_overlapping(logits),
              "sequence_logprobs_backward_: logits (sizes ", logits.sizes(), ", strides ",
              logits.strides(), ") may have elements that share memory (expanded or overlapping "
              "strides), so the gradient cannot be written over them; use "
              "inplace_backward=False or pass logits.contiguous()");
}

inline void check_backward_inputs(const at::Tensor& grad_logp, const at::Tensor& logits,
                                  const at::Tensor& labels, const at::Tensor& lse) {
  check_inputs(logits, labels);
  TORCH_CHECK(grad_logp.dim() == 1 && grad_logp.size(0) == logits.size(0),
              "sequence_logprobs_backward: grad_logp must be [B] = [", logits.size(0), "], got ",
              grad_logp.sizes());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == logits.size(0) && lse.size(1) == logits.size(1),
              "sequence_logprobs_backward: lse must be [B, T] = ", logits.sizes().slice(0, 2),
              ", got ", lse.sizes());
  TORCH_CHECK(grad_logp.device() == logits.device() && lse.device() == logits.device(),
              "sequence_logprobs_backward: grad_logp and lse must be on ", logits.device());
}

}  // namespace srlm_hpc
