// Raw-pointer launchers for the CUDA sequence_logprobs kernels.
//
// This header and logprobs_cuda.cu include no torch header, so the kernels
// compile with nothing but nvcc (the CI compile-only check,
// `python -m srlm_hpc.kernels.build --cuda-compile-only`, runs on machines whose
// CPU torch wheel lacks c10/cuda/impl/cuda_cmake_macros.h). The torch binding
// lives in logprobs_cuda_binding.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace srlm_hpc {
namespace cuda {

enum class Dtype { kFloat32, kFloat64, kFloat16, kBFloat16 };

// [B, T, V] logits with element strides (s_b, s_t, 1); [B, T] int64 labels.
// Accumulator / output dtype: double for kFloat64, float otherwise.
struct RowsArgs {
  Dtype dtype;
  const void* logits;
  int64_t B, T, V;
  int64_t s_b, s_t;
  const int64_t* labels;
  int64_t l_b, l_t;
  int64_t ignore_index;
};

// lse: [B*T] contiguous acc, tok: [B*T] contiguous acc scratch (x[y] - lse per
// row), logp: [B] contiguous acc. Out-of-range labels (not ignore_index) make
// lse and logp NaN and are never used as an index; the binding checks labels on
// the host only when SRLM_HPC_CHECK_LABELS=1 (a device-to-host sync), and never
// during CUDA-graph capture. V and B*T must be below 2^31.
cudaError_t forward(const RowsArgs& a, void* lse, void* tok, void* logp, cudaStream_t stream);

// grad_logits[b,t,:] = grad_logp[b] * (onehot(label) - exp(logits - lse)) on
// active rows, 0 on ignored rows. `out` has strides (o_b, o_t, 1) and may be
// a.logits itself (in-place). grad_logp: [B] acc with stride g_s; lse: [B*T] acc.
cudaError_t backward(const RowsArgs& a, const void* grad_logp, int64_t g_s, const void* lse,
                     void* out, int64_t o_b, int64_t o_t, cudaStream_t stream);

}  // namespace cuda
}  // namespace srlm_hpc
