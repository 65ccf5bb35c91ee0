// Torch binding of the CUDA kernels in logprobs_cuda.cu: argument checks,
// output allocation, device guard and current stream, then the raw-pointer
// launchers (which run C10_CUDA_KERNEL_LAUNCH_CHECK after every launch).
#include <ATen/ATen.h>
// c10/cuda headers only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS and
// cuSPARSE headers), so an nvcc-only toolkit can syntax-check this file.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../logprobs.h"
#include "logprobs_cuda.cuh"

namespace srlm_hpc {
namespace {

cuda::Dtype kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::Dtype::kFloat32;
    case at::kDouble: return cuda::Dtype::kFloat64;
    case at::kHalf: return cuda::Dtype::kFloat16;
    case at::kBFloat16: return cuda::Dtype::kBFloat16;
    default: TORCH_CHECK(false, "sequence_logprobs: unsupported logits dtype ", t);
  }
}

cuda::RowsArgs rows_args(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index) {
  TORCH_CHECK(logits.size(0) * logits.size(1) <= 0x7fffffffLL,
              "sequence_logprobs: logits has B*T = ", logits.size(0) * logits.size(1),
              " rows; the CUDA kernel supports at most 2^31 - 1");
  TORCH_CHECK(logits.size(2) <= 0x7fffffffLL, "sequence_logprobs: V = ", logits.size(2),
              " is above the CUDA kernel's 2^31 - 1");
  return cuda::RowsArgs{kernel_dtype(logits.scalar_type()),
                        logits.const_data_ptr(),
                        logits.size(0), logits.size(1), logits.size(2),
                        logits.stride(0), logits.stride(1),
                        labels.const_data_ptr<int64_t>(),
                        labels.stride(0), labels.stride(1),
                        ignore_index};
}

// Costs one device-to-host sync (tens of us against a 0.6 ms forward) and several
// small kernels, so it runs only with SRLM_HPC_CHECK_LABELS=1 (logprobs.h), and
// never during CUDA-graph capture, where a sync is illegal. Without it the
// kernels return NaN for a row with a bad label instead of reading out of bounds.
void check_labels_cuda(const at::Tensor& labels, int64_t V, int64_t ignore_index) {
  if (!label_check_requested()) return;
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return;
  const at::Tensor bad = labels.ne(ignore_index).logical_and(labels.lt(0).logical_or(labels.ge(V)));
  if (bad.any().item<bool>()) check_label_range(labels.cpu(), V, ignore_index);  // throws, naming labels[b, t]
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                                int64_t ignore_index, bool /*inplace_backward*/) {
  check_inputs(logits, labels);
  const c10::cuda::CUDAGuard guard(logits.device());
  check_labels_cuda(labels, logits.size(2), ignore_index);
  const auto acc = acc_dtype(logits);
  at::Tensor lse = at::empty({logits.size(0), logits.size(1)}, logits.options().dtype(acc));
  at::Tensor logp = at::empty({logits.size(0)}, logits.options().dtype(acc));
  at::Tensor tok = at::empty({logits.size(0), logits.size(1)}, logits.options().dtype(acc));
  C10_CUDA_CHECK(cuda::forward(rows_args(logits, labels, ignore_index), lse.data_ptr(),
                               tok.data_ptr(), logp.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return {logp, lse};
}

void backward_into_cuda(const at::Tensor& grad_logp, const at::Tensor& logits,
                        const at::Tensor& labels, const at::Tensor& lse_in, int64_t ignore_index,
                        const at::Tensor& out) {
  check_backward_inputs(grad_logp, logits, labels, lse_in);
  const c10::cuda::CUDAGuard guard(logits.device());
  // No label check: the forward made lse NaN for a bad label, so its row's gradient is
  // NaN, and the kernel compares the label without using it as an index.
  const auto acc = acc_dtype(logits);
  const at::Tensor grad = grad_logp.to(acc);
  const at::Tensor lse = lse_in.to(acc).contiguous();
  C10_CUDA_CHECK(cuda::backward(rows_args(logits, labels, ignore_index), grad.const_data_ptr(),
                                grad.stride(0), lse.const_data_ptr(), out.data_ptr(),
                                out.stride(0), out.stride(1), c10::cuda::getCurrentCUDAStream()));
}

at::Tensor backward_cuda(const at::Tensor& grad_logp, const at::Tensor& logits,
                         const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index) {
  at::Tensor out = at::empty(logits.sizes(), logits.options());  // contiguous
  backward_into_cuda(grad_logp, logits, labels, lse, ignore_index, out);
  return out;
}

void backward_inplace_cuda(const at::Tensor& grad_logp, const at::Tensor& logits,
                           const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index) {
  check_inplace_target(logits);
  backward_into_cuda(grad_logp, logits, labels, lse, ignore_index, logits);
}

}  // namespace
}  // namespace srlm_hpc

TORCH_LIBRARY_IMPL(srlm_hpc, CUDA, m) {
  m.impl("sequence_logprobs", &srlm_hpc::forward_cuda);
  m.impl("sequence_logprobs_backward", &srlm_hpc::backward_cuda);
  m.impl("sequence_logprobs_backward_", &srlm_hpc::backward_inplace_cuda);
}
