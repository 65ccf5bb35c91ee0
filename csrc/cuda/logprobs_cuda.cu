// CUDA kernels for srlm_hpc::sequence_logprobs on raw pointers (no torch
// headers unless SRLM_HPC_WITH_TORCH is defined, which only swaps in
// C10_CUDA_KERNEL_LAUNCH_CHECK). Standalone compile check:
//   nvcc -std=c++17 -c csrc/cuda/logprobs_cuda.cu -o /tmp/logprobs_cuda.o
// or `python -m srlm_hpc.kernels.build --cuda-compile-only`.
//
// Layout: one thread block per (b, t) row. The row is read once with 16-byte
// loads (8 bf16 / 4 fp32 per load) after a scalar head that reaches 16-byte
// alignment, then a scalar tail, so any V and any row stride work. Each thread
// keeps an online (max, sum) pair in fp32 and rescales its sum only when the
// max of a whole 16-byte pack exceeds its running max, so the steady state is
// one exp2 per element. For bf16 at V = 128256 a row is 250 KiB, read once.
// A second tiny kernel sums the B*T row values per sequence in a fixed tree
// order, so results are bitwise deterministic (no atomics).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "logprobs_cuda.cuh"

#ifdef SRLM_HPC_WITH_TORCH
#include <c10/cuda/CUDAException.h>
#define SRLM_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#else
#define SRLM_LAUNCH_CHECK()                          \
  do {                                               \
    const cudaError_t srlm_err_ = cudaGetLastError(); \
    if (srlm_err_ != cudaSuccess) return srlm_err_;   \
  } while (0)
#endif

namespace srlm_hpc {
namespace cuda {
namespace {

constexpr int kWarp = 32;

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(typename AccOf<T>::type x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// exp(x) as exp2(x * log2 e): exp2f is one MUFU.EX2 plus fix-ups, max 2 ulp.
__device__ __forceinline__ float acc_exp(float x) { return exp2f(x * 1.4426950408889634f); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -static_cast<A>(INFINITY);
}

// Online logsumexp state: the row so far is m + log(s).
template <typename A>
struct MaxSum {
  A m, s;
};

template <typename A>
__device__ __forceinline__ MaxSum<A> combine(MaxSum<A> a, MaxSum<A> b) {
  const A m = a.m > b.m ? a.m : b.m;
  if (m == neg_inf<A>()) return {m, A(0)};  // both empty; avoid exp(-inf - -inf) = NaN
  return {m, a.s * acc_exp(a.m - m) + b.s * acc_exp(b.m - m)};
}

template <typename A>
__device__ __forceinline__ void add_one(MaxSum<A>& st, A v) {
  if (v > st.m) {
    st.s = st.s * acc_exp(st.m - v) + A(1);
    st.m = v;
  } else if (v > neg_inf<A>()) {
    st.s += acc_exp(v - st.m);
  }
}

// Block-wide reduction; result valid in thread 0. kBlock is a multiple of 32.
template <int kBlock, typename A>
__device__ __forceinline__ MaxSum<A> block_reduce(MaxSum<A> st) {
  for (int off = kWarp / 2; off > 0; off /= 2) {
    MaxSum<A> o{__shfl_xor_sync(0xffffffffu, st.m, off), __shfl_xor_sync(0xffffffffu, st.s, off)};
    st = combine(st, o);
  }
  if (kBlock == kWarp) return st;
  __shared__ A sm[kBlock / kWarp], ss[kBlock / kWarp];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    sm[warp] = st.m;
    ss[warp] = st.s;
  }
  __syncthreads();
  if (warp == 0) {
    st = lane < kBlock / kWarp ? MaxSum<A>{sm[lane], ss[lane]} : MaxSum<A>{neg_inf<A>(), A(0)};
    for (int off = kWarp / 2; off > 0; off /= 2) {
      MaxSum<A> o{__shfl_xor_sync(0xffffffffu, st.m, off),
                  __shfl_xor_sync(0xffffffffu, st.s, off)};
      st = combine(st, o);
    }
  }
  return st;
}

// Elements before the first 16-byte boundary of the row (V if the row cannot
// be aligned at all, e.g. a pointer that is not even element-aligned).
template <typename T>
__device__ __forceinline__ int64_t head_len(const void* p, int64_t V) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  if (addr % sizeof(T) != 0) return V;
  const int64_t h = static_cast<int64_t>(((16 - addr % 16) % 16) / sizeof(T));
  return h < V ? h : V;
}

template <typename T>
__device__ __forceinline__ int64_t label_of(const RowsArgs& a, int64_t row, int64_t* b_out,
                                            int64_t* t_out) {
  const int64_t b = row / a.T, t = row - b * a.T;
  *b_out = b;
  *t_out = t;
  return a.labels[b * a.l_b + t * a.l_t];
}

template <typename T, int kBlock>
__global__ void __launch_bounds__(kBlock) lse_rows_kernel(RowsArgs a, typename AccOf<T>::type* lse) {
  using A = typename AccOf<T>::type;
  constexpr int N = 16 / sizeof(T);
  const int64_t row = blockIdx.x;
  int64_t b, t;
  const int64_t y = label_of<T>(a, row, &b, &t);
  if (y == a.ignore_index || y < 0 || y >= a.V) {  // ignored: never read; bad: NaN
    if (threadIdx.x == 0) lse[row] = y == a.ignore_index ? A(0) : A(NAN);
    return;
  }
  const T* x = static_cast<const T*>(a.logits) + b * a.s_b + t * a.s_t;
  const int64_t V = a.V;
  const int64_t head = head_len<T>(x, V);
  const int64_t npack = (V - head) / N;
  MaxSum<A> st{neg_inf<A>(), A(0)};
  for (int64_t i = threadIdx.x; i < head; i += kBlock) add_one(st, to_acc(x[i]));
  const uint4* packs = reinterpret_cast<const uint4*>(x + head);
  for (int64_t i = threadIdx.x; i < npack; i += kBlock) {
    const uint4 raw = __ldg(packs + i);
    const T* e = reinterpret_cast<const T*>(&raw);
    A v[N];
    A vmax = neg_inf<A>();
#pragma unroll
    for (int k = 0; k < N; ++k) {
      v[k] = to_acc(e[k]);
      vmax = v[k] > vmax ? v[k] : vmax;
    }
    if (vmax == neg_inf<A>()) continue;
    if (vmax > st.m) {  // exp(-inf) = 0 handles the first pack
      st.s *= acc_exp(st.m - vmax);
      st.m = vmax;
    }
#pragma unroll
    for (int k = 0; k < N; ++k) st.s += acc_exp(v[k] - st.m);
  }
  for (int64_t i = head + npack * N + threadIdx.x; i < V; i += kBlock) add_one(st, to_acc(x[i]));
  st = block_reduce<kBlock>(st);
  if (threadIdx.x == 0) lse[row] = st.m + acc_log(st.s);
}

// logp[b] = sum over active t of logits[b,t,y] - lse[b,t], in double, fixed order.
template <typename T, int kBlock>
__global__ void __launch_bounds__(kBlock) sum_rows_kernel(RowsArgs a, const typename AccOf<T>::type* lse,
                                                          typename AccOf<T>::type* logp) {
  using A = typename AccOf<T>::type;
  const int64_t b = blockIdx.x;
  double sum = 0.0;
  for (int64_t t = threadIdx.x; t < a.T; t += kBlock) {
    const int64_t y = a.labels[b * a.l_b + t * a.l_t];
    if (y == a.ignore_index) continue;
    if (y < 0 || y >= a.V) {
      sum += static_cast<double>(NAN);
      continue;
    }
    const T* x = static_cast<const T*>(a.logits) + b * a.s_b + t * a.s_t;
    sum += static_cast<double>(to_acc(x[y])) - static_cast<double>(lse[b * a.T + t]);
  }
  for (int off = kWarp / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  __shared__ double part[kBlock / kWarp];
  if (threadIdx.x % kWarp == 0) part[threadIdx.x / kWarp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kBlock / kWarp; ++w) total += part[w];
    logp[b] = static_cast<A>(total);
  }
}

template <typename T, int kBlock>
__global__ void __launch_bounds__(kBlock)
    grad_rows_kernel(RowsArgs a, const typename AccOf<T>::type* grad_logp, int64_t g_s,
                     const typename AccOf<T>::type* lse, T* out, int64_t o_b, int64_t o_t) {
  using A = typename AccOf<T>::type;
  constexpr int N = 16 / sizeof(T);
  const int64_t row = blockIdx.x;
  int64_t b, t;
  const int64_t y = label_of<T>(a, row, &b, &t);
  const int64_t V = a.V;
  T* o = out + b * o_b + t * o_t;
  const T* x = static_cast<const T*>(a.logits) + b * a.s_b + t * a.s_t;
  const bool active = y != a.ignore_index;
  const A g = active ? grad_logp[b * g_s] : A(0);
  const A l = active ? lse[row] : A(0);  // NaN for a bad label, so the row becomes NaN
  // Packs need x and o to share their offset within 16 bytes (always true in place).
  int64_t head = head_len<T>(o, V);
  if (active && (reinterpret_cast<uintptr_t>(x) % 16) != (reinterpret_cast<uintptr_t>(o) % 16)) {
    head = V;
  }
  const int64_t npack = (V - head) / N;
  // Each element is read and then written by the same thread, so out == x is safe.
  auto grad_at = [&](int64_t i, A xi) -> T {
    return from_acc<T>(g * ((i == y ? A(1) : A(0)) - acc_exp(xi - l)));
  };
  for (int64_t i = threadIdx.x; i < head; i += kBlock) o[i] = active ? grad_at(i, to_acc(x[i])) : from_acc<T>(A(0));
  uint4* opacks = reinterpret_cast<uint4*>(o + head);
  const uint4* xpacks = reinterpret_cast<const uint4*>(x + head);
  for (int64_t i = threadIdx.x; i < npack; i += kBlock) {
    uint4 raw = make_uint4(0u, 0u, 0u, 0u);  // all-zero bits are +0 in every dtype
    if (active) {
      const uint4 in = xpacks[i];
      const T* e = reinterpret_cast<const T*>(&in);
      T* r = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int k = 0; k < N; ++k) r[k] = grad_at(head + i * N + k, to_acc(e[k]));
    }
    opacks[i] = raw;
  }
  for (int64_t i = head + npack * N + threadIdx.x; i < V; i += kBlock) {
    o[i] = active ? grad_at(i, to_acc(x[i])) : from_acc<T>(A(0));
  }
}

// 32 threads for rows under 2 KiB (V <= 1024 bf16): a 256-thread block would idle.
template <typename T>
bool small_row(int64_t V) {
  return V * static_cast<int64_t>(sizeof(T)) <= 2048;
}

template <typename T>
cudaError_t forward_t(const RowsArgs& a, void* lse_v, void* logp_v, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  A* lse = static_cast<A*>(lse_v);
  A* logp = static_cast<A*>(logp_v);
  const int64_t rows = a.B * a.T;
  if (rows > 0) {
    const dim3 grid(static_cast<unsigned>(rows));
    if (small_row<T>(a.V)) {
      lse_rows_kernel<T, 32><<<grid, 32, 0, stream>>>(a, lse);
      SRLM_LAUNCH_CHECK();
    } else {
      lse_rows_kernel<T, 256><<<grid, 256, 0, stream>>>(a, lse);
      SRLM_LAUNCH_CHECK();
    }
  }
  if (a.B > 0) {
    sum_rows_kernel<T, 256><<<static_cast<unsigned>(a.B), 256, 0, stream>>>(a, lse, logp);
    SRLM_LAUNCH_CHECK();
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t backward_t(const RowsArgs& a, const void* grad_v, int64_t g_s, const void* lse_v,
                       void* out_v, int64_t o_b, int64_t o_t, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const A* grad = static_cast<const A*>(grad_v);
  const A* lse = static_cast<const A*>(lse_v);
  T* out = static_cast<T*>(out_v);
  const int64_t rows = a.B * a.T;
  if (rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(rows));
  if (small_row<T>(a.V)) {
    grad_rows_kernel<T, 32><<<grid, 32, 0, stream>>>(a, grad, g_s, lse, out, o_b, o_t);
    SRLM_LAUNCH_CHECK();
  } else {
    grad_rows_kernel<T, 256><<<grid, 256, 0, stream>>>(a, grad, g_s, lse, out, o_b, o_t);
    SRLM_LAUNCH_CHECK();
  }
  return cudaSuccess;
}

}  // namespace

// One grid row per (b, t): gridDim.x is limited to 2^31 - 1 rows.
static bool rows_fit(const RowsArgs& a) { return a.B * a.T <= 0x7fffffffLL; }

cudaError_t forward(const RowsArgs& a, void* lse, void* logp, cudaStream_t stream) {
  if (!rows_fit(a)) return cudaErrorInvalidConfiguration;
  switch (a.dtype) {
    case Dtype::kFloat32: return forward_t<float>(a, lse, logp, stream);
    case Dtype::kFloat64: return forward_t<double>(a, lse, logp, stream);
    case Dtype::kFloat16: return forward_t<__half>(a, lse, logp, stream);
    case Dtype::kBFloat16: return forward_t<__nv_bfloat16>(a, lse, logp, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t backward(const RowsArgs& a, const void* grad_logp, int64_t g_s, const void* lse,
                     void* out, int64_t o_b, int64_t o_t, cudaStream_t stream) {
  if (!rows_fit(a)) return cudaErrorInvalidConfiguration;
  switch (a.dtype) {
    case Dtype::kFloat32: return backward_t<float>(a, grad_logp, g_s, lse, out, o_b, o_t, stream);
    case Dtype::kFloat64: return backward_t<double>(a, grad_logp, g_s, lse, out, o_b, o_t, stream);
    case Dtype::kFloat16: return backward_t<__half>(a, grad_logp, g_s, lse, out, o_b, o_t, stream);
    case Dtype::kBFloat16:
      return backward_t<__nv_bfloat16>(a, grad_logp, g_s, lse, out, o_b, o_t, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace srlm_hpc
