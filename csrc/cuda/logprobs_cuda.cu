// CUDA kernels for srlm_hpc::sequence_logprobs on raw pointers (no torch
// headers unless SRLM_HPC_WITH_TORCH is defined, which only swaps in
// C10_CUDA_KERNEL_LAUNCH_CHECK). Standalone compile check:
//   nvcc -std=c++17 -c csrc/cuda/logprobs_cuda.cu -o /tmp/logprobs_cuda.o
// or `python -m srlm_hpc.kernels.build --cuda-compile-only`.
//
// Layout: one thread block per (b, t) row. The row is read once with 16-byte
// loads (8 bf16 / 4 fp32 per load) after a scalar head that reaches 16-byte
// alignment, then a scalar tail, so any V and any row stride work. Each thread
// issues kUnroll = 4 independent 16-byte loads before using any (64 bytes in
// flight per thread: one load per iteration left the loop waiting on DRAM
// latency), and keeps an online (max, sum) pair in fp32, rescaling its sum only
// when the max of a whole 16-byte pack exceeds its running max, so the steady
// state is one exp2 per element. In-row indices are 32-bit (V < 2^31, checked
// by the binding); row offsets stay 64-bit. For bf16 at V = 128256 a row is
// 250 KiB, read once. Thread 0 also reads x[y] while the row streams, and the
// block writes lse and x[y] - lse; a second tiny kernel sums those per sequence
// in a fixed tree order, so results are bitwise deterministic (no atomics) and
// no logit is read twice.
//
// Non-finite logits follow torch.logsumexp: any NaN in a row makes its lse NaN
// (the running max is NaN-sticky), else any +inf makes it +inf, else a row of
// -inf gives -inf.
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
__device__ __forceinline__ bool is_nan(A v) {
  return v != v;
}

// max that a NaN operand wins and keeps (a plain `b > a ? b : a` drops NaN).
template <typename A>
__device__ __forceinline__ A max_nan(A a, A b) {
  return (b > a || is_nan(b)) ? b : a;
}

// When m is +inf or NaN, s may be NaN (inf - inf): lse_of() ignores it then.
template <typename A>
__device__ __forceinline__ MaxSum<A> combine(MaxSum<A> a, MaxSum<A> b) {
  const A m = max_nan(a.m, b.m);
  if (m == neg_inf<A>()) return {m, A(0)};  // both empty; avoid exp(-inf - -inf) = NaN
  return {m, a.s * acc_exp(a.m - m) + b.s * acc_exp(b.m - m)};
}

template <typename A>
__device__ __forceinline__ void add_one(MaxSum<A>& st, A v) {
  st = combine(st, MaxSum<A>{v, A(1)});
}

template <typename A>
__device__ __forceinline__ A lse_of(MaxSum<A> st) {
  return (is_nan(st.m) || st.m == -neg_inf<A>()) ? st.m : st.m + acc_log(st.s);
}

// One 16-byte pack: its max first, so the running sum is rescaled at most once per pack.
template <typename T, typename A>
__device__ __forceinline__ void add_pack(MaxSum<A>& st, const uint4& raw) {
  constexpr int N = 16 / sizeof(T);
  const T* e = reinterpret_cast<const T*>(&raw);
  A v[N];
  A vmax = neg_inf<A>();
#pragma unroll
  for (int k = 0; k < N; ++k) {
    v[k] = to_acc(e[k]);
    vmax = max_nan(vmax, v[k]);
  }
  if (vmax == neg_inf<A>()) return;  // all -inf: adds 0
  const A m = max_nan(st.m, vmax);
  if (m != st.m) {  // the max moved (true on every pack once st.m is NaN: it stays NaN)
    st.s *= acc_exp(st.m - m);  // exp(-inf) = 0 handles the first pack
    st.m = m;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) st.s += acc_exp(v[k] - st.m);
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
__device__ __forceinline__ int head_len(const void* p, int V) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  if (addr % sizeof(T) != 0) return V;
  const int h = static_cast<int>(((16 - addr % 16) % 16) / sizeof(T));
  return h < V ? h : V;
}

constexpr int kUnroll = 4;  // 16-byte loads in flight per thread in the forward
// Resident threads per SM the compiler must allow (__launch_bounds__' second
// argument is this over the block size): 1024 caps registers at 64 per thread,
// and 1024 threads x 64 bytes in flight per SM is several times what DRAM
// latency needs. Float64 (gradcheck only) gets 512, i.e. 128 registers: its
// doubled state spills at 64. build.py's ptxas check holds both limits.
template <typename T>
constexpr int threads_per_sm() {
  return sizeof(T) == 8 ? 512 : 1024;
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
__global__ void __launch_bounds__(kBlock, threads_per_sm<T>() / kBlock)
    lse_rows_kernel(RowsArgs a, typename AccOf<T>::type* lse, typename AccOf<T>::type* tok) {
  using A = typename AccOf<T>::type;
  const int64_t row = blockIdx.x;
  int64_t b, t;
  const int64_t y = label_of<T>(a, row, &b, &t);
  if (y == a.ignore_index || y < 0 || y >= a.V) {  // ignored: never read; bad: NaN
    if (threadIdx.x == 0) {
      lse[row] = y == a.ignore_index ? A(0) : A(NAN);
      tok[row] = y == a.ignore_index ? A(0) : A(NAN);
    }
    return;
  }
  const T* x = static_cast<const T*>(a.logits) + b * a.s_b + t * a.s_t;
  const int V = static_cast<int>(a.V);
  // Issued first, so its latency hides behind the stream; only thread 0 uses it.
  const A x_y = threadIdx.x == 0 ? to_acc(x[y]) : A(0);
  const int head = head_len<T>(x, V);
  constexpr int N = 16 / sizeof(T);
  const int npack = (V - head) / N;
  MaxSum<A> st{neg_inf<A>(), A(0)};
  for (int i = threadIdx.x; i < head; i += kBlock) add_one(st, to_acc(x[i]));
  const uint4* packs = reinterpret_cast<const uint4*>(x + head);
  int i = threadIdx.x;
  for (; i + (kUnroll - 1) * kBlock < npack; i += kUnroll * kBlock) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) raw[u] = __ldg(packs + i + u * kBlock);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) add_pack<T>(st, raw[u]);
  }
  for (; i < npack; i += kBlock) add_pack<T>(st, __ldg(packs + i));
  for (int j = head + npack * N + threadIdx.x; j < V; j += kBlock) add_one(st, to_acc(x[j]));
  st = block_reduce<kBlock>(st);
  if (threadIdx.x == 0) {
    const A l = lse_of(st);
    lse[row] = l;
    tok[row] = x_y - l;
  }
}

// logp[b] = sum over t of tok[b, t] (x[y] - lse; 0 on ignored rows), in double, fixed order.
template <typename T, int kBlock>
__global__ void __launch_bounds__(kBlock) sum_rows_kernel(RowsArgs a, const typename AccOf<T>::type* tok,
                                                          typename AccOf<T>::type* logp) {
  using A = typename AccOf<T>::type;
  const int64_t b = blockIdx.x;
  double sum = 0.0;
  for (int64_t t = threadIdx.x; t < a.T; t += kBlock) sum += static_cast<double>(tok[b * a.T + t]);
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
__global__ void __launch_bounds__(kBlock, threads_per_sm<T>() / kBlock)
    grad_rows_kernel(RowsArgs a, const typename AccOf<T>::type* grad_logp, int64_t g_s,
                     const typename AccOf<T>::type* lse, T* out, int64_t o_b, int64_t o_t) {
  using A = typename AccOf<T>::type;
  constexpr int N = 16 / sizeof(T);
  const int64_t row = blockIdx.x;
  int64_t b, t;
  const int64_t y = label_of<T>(a, row, &b, &t);
  const int V = static_cast<int>(a.V);
  T* o = out + b * o_b + t * o_t;
  const T* x = static_cast<const T*>(a.logits) + b * a.s_b + t * a.s_t;
  const bool active = y != a.ignore_index;
  const A g = active ? grad_logp[b * g_s] : A(0);
  const A l = active ? lse[row] : A(0);  // NaN for a bad label, so the row becomes NaN
  // Packs follow the output's 16-byte alignment, so every store is 16 bytes. The input is
  // read as packs too when it has the same offset within 16 bytes (always true in place);
  // otherwise (an out-of-place gradient of a logits slice along V) element by element:
  // the warp still reads whole sectors, which L1 serves to the next element's load.
  const int head = head_len<T>(o, V);
  const bool same_phase =
      (reinterpret_cast<uintptr_t>(x) % 16) == (reinterpret_cast<uintptr_t>(o) % 16);
  const int npack = (V - head) / N;
  // Each element is read and then written by the same thread, so out == x is safe.
  auto grad_at = [&](int i, A xi) -> T {
    return from_acc<T>(g * ((i == y ? A(1) : A(0)) - acc_exp(xi - l)));
  };
  for (int i = threadIdx.x; i < head; i += kBlock) {
    o[i] = active ? grad_at(i, to_acc(x[i])) : from_acc<T>(A(0));
  }
  uint4* opacks = reinterpret_cast<uint4*>(o + head);
  const uint4* xpacks = reinterpret_cast<const uint4*>(x + head);
  const T* xs = x + head;
  for (int i = threadIdx.x; i < npack; i += kBlock) {
    uint4 raw = make_uint4(0u, 0u, 0u, 0u);  // all-zero bits are +0 in every dtype
    if (active) {
      T in[N];
      if (same_phase) {
        *reinterpret_cast<uint4*>(in) = xpacks[i];
      } else {
#pragma unroll
        for (int k = 0; k < N; ++k) in[k] = xs[i * N + k];
      }
      T* r = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int k = 0; k < N; ++k) r[k] = grad_at(head + i * N + k, to_acc(in[k]));
    }
    opacks[i] = raw;
  }
  for (int i = head + npack * N + threadIdx.x; i < V; i += kBlock) {
    o[i] = active ? grad_at(i, to_acc(x[i])) : from_acc<T>(A(0));
  }
}

// 32 threads for rows under 2 KiB (V <= 1024 bf16): a 256-thread block would idle.
template <typename T>
bool small_row(int64_t V) {
  return V * static_cast<int64_t>(sizeof(T)) <= 2048;
}

template <typename T>
cudaError_t forward_t(const RowsArgs& a, void* lse_v, void* tok_v, void* logp_v,
                      cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  A* lse = static_cast<A*>(lse_v);
  A* tok = static_cast<A*>(tok_v);
  A* logp = static_cast<A*>(logp_v);
  const int64_t rows = a.B * a.T;
  if (rows > 0) {
    const dim3 grid(static_cast<unsigned>(rows));
    if (small_row<T>(a.V)) {
      lse_rows_kernel<T, 32><<<grid, 32, 0, stream>>>(a, lse, tok);
      SRLM_LAUNCH_CHECK();
    } else {
      lse_rows_kernel<T, 256><<<grid, 256, 0, stream>>>(a, lse, tok);
      SRLM_LAUNCH_CHECK();
    }
  }
  if (a.B > 0) {
    sum_rows_kernel<T, 256><<<static_cast<unsigned>(a.B), 256, 0, stream>>>(a, tok, logp);
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

// One grid row per (b, t): gridDim.x is limited to 2^31 - 1 rows; in-row indices are int.
static bool rows_fit(const RowsArgs& a) { return a.B * a.T <= 0x7fffffffLL && a.V <= 0x7fffffffLL; }

cudaError_t forward(const RowsArgs& a, void* lse, void* tok, void* logp, cudaStream_t stream) {
  if (!rows_fit(a)) return cudaErrorInvalidConfiguration;
  switch (a.dtype) {
    case Dtype::kFloat32: return forward_t<float>(a, lse, tok, logp, stream);
    case Dtype::kFloat64: return forward_t<double>(a, lse, tok, logp, stream);
    case Dtype::kFloat16: return forward_t<__half>(a, lse, tok, logp, stream);
    case Dtype::kBFloat16: return forward_t<__nv_bfloat16>(a, lse, tok, logp, stream);
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
