// CPU kernels for srlm_hpc::sequence_logprobs (schema in csrc/logprobs.cpp).
//
// Work unit: one (b, t) row of V logits. Rows are spread over threads with
// at::parallel_for; an ignored row is never read. A row is streamed once in
// chunks of kChunk floats: max of the chunk, then sum of exp(x - max) while the
// chunk is still in L1 (an online logsumexp at chunk granularity, one exp per
// element instead of the two a per-element online update needs).
//
// Vectorisation without -march=native (cluster nodes differ): the hot loops
// are plain `#pragma omp simd` loops over float buffers, compiled three times
// with GCC target_clones (AVX-512, AVX2+FMA, baseline SSE2) and picked at load
// time. std::exp does not vectorise without -ffast-math, so fast_exp() below
// is a branch-free Cephes-style exp (max rel. error ~2 ulp, 1.2e-7).
// bf16/fp16 rows are converted to float one chunk at a time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../logprobs.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SRLM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SRLM_CLONES
#endif

namespace srlm_hpc {
namespace {

// 2048 floats = 8 KiB: the max pass and the exp pass over a chunk both hit L1
// (32-48 KiB on current x86), so memory sees each logit once.
constexpr int64_t kChunk = 2048;

inline float bits_to_float(uint32_t u) { return __builtin_bit_cast(float, u); }
inline uint32_t float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

// exp(x) for x <= 0 (callers pass x - max or x - lse). exp(x) = 2^n * e^r with
// n = round(x / ln 2), |r| <= ln2/2, e^r from a degree-6 polynomial (max rel.
// error ~2 ulp). Inputs are clamped at -88, where n = -127 makes the scale 2^n
// exactly 0: so exp(-inf) is exactly 0 and a -inf logit gets a zero gradient, as
// in PyTorch (the old clamp at -87 gave it 1.6e-38 * g); results below ~1e-38
// (x < -87.3) are flushed to 0, which no gradient can show. NaN in, NaN out: the
// clamps keep a NaN (std::max/min return their first argument when the compare is
// false), and n reaches the exponent through the bits of the rounding sum, not a
// float-to-int conversion (undefined for NaN). Single-thread speed as before
// (fp32/bf16, 64 x 49152 rows), where a final select or exact subnormals cost 12-30%.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -88.0f), 88.0f);
  // Round-to-nearest by adding 1.5 * 2^23 (valid for |v| < 2^22; here |v| < 128):
  // t's low mantissa bits are then n itself, offset by t's bits at n = 0.
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  // r = x - n*ln2 with ln2 split in two parts so r keeps full precision.
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  // (n + 127) << 23: n = -127 gives the bit pattern 0, a scale of +0; n >= -126 a normal 2^n.
  const uint32_t scale = (float_to_bits(t) - 0x4B400000u + 127u) << 23;
  return p * bits_to_float(scale);
}

// GCC will not vectorise a float max *reduction* without -ffast-math (NaN
// ordering), and a scalar vmaxss chain costs 4 cycles per element. Sixteen
// independent lanes make it an element-wise max, which it does vectorise.
SRLM_CLONES float max_f32(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  float lane[kLanes];
  for (int k = 0; k < kLanes; ++k) lane[k] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lane[k] = std::max(lane[k], x[i + k]);
  }
  float m = -std::numeric_limits<float>::infinity();
  for (int k = 0; k < kLanes; ++k) m = std::max(m, lane[k]);
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

SRLM_CLONES float sum_exp_f32(const float* x, int64_t n, float shift) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += fast_exp(x[i] - shift);
  return s;
}

// out[i] = -g * softmax_i; `out` may alias `x` (in-place backward): element i
// is read before it is written and no other element is touched.
SRLM_CLONES void neg_scaled_softmax_f32(const float* x, float* out, int64_t n, float lse,
                                        float g) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = -g * fast_exp(x[i] - lse);
}

SRLM_CLONES void bf16_to_f32(const uint16_t* in, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = bits_to_float(static_cast<uint32_t>(in[i]) << 16);
}

// IEEE half to float without a scalar call per element (c10::Half's conversion does not
// vectorise): normal halves by moving exponent and mantissa into place and rebiasing the
// exponent (15 -> 127), subnormals and zero as mantissa * 2^-24 (exact: < 2^10 fits),
// inf/NaN by setting the float exponent to all ones. No subnormal float is ever an
// operand, so a flush-denormals mode cannot change the result.
SRLM_CLONES void f16_to_f32(const uint16_t* in, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = in[i];
    const uint32_t sign = (h & 0x8000u) << 16;
    const uint32_t em = h & 0x7FFFu;
    const uint32_t normal = (em << 13) + (112u << 23);
    const uint32_t special = (em << 13) | 0x7F800000u;
    const uint32_t small = float_to_bits(static_cast<float>(static_cast<int32_t>(em)) * 0x1p-24f);
    const uint32_t mag = em >= 0x7C00u ? special : (em < 0x0400u ? small : normal);
    out[i] = bits_to_float(sign | mag);
  }
}

// Round to nearest even. A NaN stays a NaN: rounding could only carry into the sign
// for a payload with its low 16 bits >= 0x8000, and the NaNs here are the hardware's
// default (0x7FC00000) or propagated from a bf16 logit, whose low 16 bits are 0.
SRLM_CLONES void f32_to_bf16(const float* in, uint16_t* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = float_to_bits(in[i]);
    out[i] = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
}

// Chunk loaders: float rows are used in place, 16-bit rows go through `buf`.
inline const float* load_chunk(const float* x, int64_t, float*) { return x; }
inline const float* load_chunk(const at::BFloat16* x, int64_t n, float* buf) {
  bf16_to_f32(reinterpret_cast<const uint16_t*>(x), buf, n);
  return buf;
}
inline const float* load_chunk(const at::Half* x, int64_t n, float* buf) {
  f16_to_f32(reinterpret_cast<const uint16_t*>(x), buf, n);
  return buf;
}
inline void store_chunk(const float*, float*, int64_t) {}  // already written in place
inline void store_chunk(const float* buf, at::BFloat16* out, int64_t n) {
  f32_to_bf16(buf, reinterpret_cast<uint16_t*>(out), n);
}
inline void store_chunk(const float* buf, at::Half* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<at::Half>(buf[i]);
}

template <typename scalar_t>
bool has_nan(const scalar_t* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(static_cast<double>(x[i]))) return true;
  }
  return false;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Non-finite rows, as torch.logsumexp: any NaN gives NaN, else any +inf gives +inf, else a
// row of -inf gives -inf. Only the rare paths below rescan for NaN.
//
// logsumexp of one row, fp32 math with a double running sum across chunks. max_f32 skips
// NaN, but the exp sum does not (fast_exp(NaN) is NaN), so a NaN anywhere reaches s;
// a chunk whose max is -inf is skipped, so it is checked for NaN first.
template <typename scalar_t>
double row_lse(const scalar_t* x, int64_t V) {
  alignas(64) float buf[kChunk];
  float m = -std::numeric_limits<float>::infinity();
  double s = 0.0;
  for (int64_t c = 0; c < V; c += kChunk) {
    const int64_t n = std::min(kChunk, V - c);
    const float* xc = load_chunk(x + c, n, buf);
    const float mc = max_f32(xc, n);
    if (mc == -std::numeric_limits<float>::infinity()) {  // contributes 0, unless NaN
      if (has_nan(xc, n)) return kNaN;
      continue;
    }
    if (mc > m) {
      s *= std::exp(static_cast<double>(m) - mc);  // rare: the running max moved
      m = mc;
    }
    s += sum_exp_f32(xc, n, m);
  }
  if (m == std::numeric_limits<float>::infinity()) return has_nan(x, V) ? kNaN : kInf;
  return static_cast<double>(m) + std::log(s);
}

// Float64 exists for gradcheck only, so plain scalar code is fine.
template <>
double row_lse<double>(const double* x, int64_t V) {
  double m = -kInf;
  for (int64_t i = 0; i < V; ++i) m = std::max(m, x[i]);  // NaN-blind: see the checks below
  if (m == kInf || m == -kInf) return has_nan(x, V) ? kNaN : m;
  double s = 0.0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

// grad row: out = g * (onehot(y) - softmax(x)). out may alias x.
template <typename scalar_t>
void row_grad(const scalar_t* x, scalar_t* out, int64_t V, int64_t y, double lse, double g) {
  const float x_y = static_cast<float>(x[y]);  // read before an in-place write clobbers it
  alignas(64) float buf[kChunk];
  for (int64_t c = 0; c < V; c += kChunk) {
    const int64_t n = std::min(kChunk, V - c);
    const float* xc = load_chunk(x + c, n, buf);
    // For float rows this writes straight into out; otherwise into buf.
    float* oc = std::is_same<scalar_t, float>::value ? reinterpret_cast<float*>(out + c) : buf;
    neg_scaled_softmax_f32(xc, oc, n, static_cast<float>(lse), static_cast<float>(g));
    store_chunk(oc, out + c, n);
  }
  out[y] = static_cast<scalar_t>(static_cast<float>(g) *
                                 (1.0f - fast_exp(x_y - static_cast<float>(lse))));
}

template <>
void row_grad<double>(const double* x, double* out, int64_t V, int64_t y, double lse, double g) {
  const double x_y = x[y];
  for (int64_t i = 0; i < V; ++i) out[i] = -g * std::exp(x[i] - lse);
  out[y] = g * (1.0 - std::exp(x_y - lse));
}

// Rows are grouped so one parallel task covers >= ~64K logits: for V = 7 a
// task per row would cost more in scheduling than in math.
inline int64_t row_grain(int64_t V) { return std::max<int64_t>(1, (int64_t{1} << 16) / V); }

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& logits, const at::Tensor& labels_in,
                                               int64_t ignore_index, bool /*inplace_backward*/) {
  check_inputs(logits, labels_in);
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  const at::Tensor labels = labels_in.contiguous();
  check_label_range(labels, V, ignore_index);
  const auto acc = acc_dtype(logits);
  at::Tensor lse = at::zeros({B, T}, logits.options().dtype(acc));
  at::Tensor logp = at::empty({B}, logits.options().dtype(acc));
  const int64_t s0 = logits.stride(0), s1 = logits.stride(1);
  const int64_t* y = labels.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "sequence_logprobs_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    acc_t* lse_p = lse.data_ptr<acc_t>();
    acc_t* logp_p = logp.data_ptr<acc_t>();
    // x[y] - lse per row, taken while the row is hot, so the sum below reads no logit.
    std::vector<double> tok(static_cast<size_t>(B * T), 0.0);
    at::parallel_for(0, B * T, row_grain(V), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (y[r] == ignore_index) continue;  // lse stays 0; the row is never read
        const int64_t b = r / T, t = r % T;
        const scalar_t* row = x + b * s0 + t * s1;
        lse_p[r] = static_cast<acc_t>(row_lse<scalar_t>(row, V));
        tok[r] = static_cast<double>(row[y[r]]) - static_cast<double>(lse_p[r]);
      }
    });
    // Sum over T in a fixed order (deterministic for any thread count), in double.
    for (int64_t b = 0; b < B; ++b) {
      double sum = 0.0;
      for (int64_t t = 0; t < T; ++t) sum += tok[b * T + t];  // ignored rows hold 0
      logp_p[b] = static_cast<acc_t>(sum);
    }
  });
  return {logp, lse};
}

// Writes the gradient into `out` ([B,T,V], stride 1 over V; may be `logits`).
void backward_into_cpu(const at::Tensor& grad_logp_in, const at::Tensor& logits,
                       const at::Tensor& labels_in, const at::Tensor& lse_in,
                       int64_t ignore_index, const at::Tensor& out) {
  check_backward_inputs(grad_logp_in, logits, labels_in, lse_in);
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  const auto acc = acc_dtype(logits);
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor lse = lse_in.to(acc).contiguous();
  const at::Tensor grad = grad_logp_in.to(acc).contiguous();
  check_label_range(labels, V, ignore_index);
  const int64_t s0 = logits.stride(0), s1 = logits.stride(1);
  const int64_t o0 = out.stride(0), o1 = out.stride(1);
  const int64_t* y = labels.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "sequence_logprobs_backward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const acc_t* lse_p = lse.const_data_ptr<acc_t>();
    const acc_t* g_p = grad.const_data_ptr<acc_t>();
    at::parallel_for(0, B * T, row_grain(V), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / T, t = r % T;
        scalar_t* orow = o + b * o0 + t * o1;
        if (y[r] == ignore_index) {
          std::fill(orow, orow + V, scalar_t(0));
          continue;
        }
        row_grad<scalar_t>(x + b * s0 + t * s1, orow, V, y[r], lse_p[r], g_p[b]);
      }
    });
  });
}

at::Tensor backward_cpu(const at::Tensor& grad_logp, const at::Tensor& logits,
                        const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index) {
  at::Tensor out = at::empty(logits.sizes(), logits.options());  // contiguous
  backward_into_cpu(grad_logp, logits, labels, lse, ignore_index, out);
  return out;
}

void backward_inplace_cpu(const at::Tensor& grad_logp, const at::Tensor& logits,
                          const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index) {
  check_inplace_target(logits);
  backward_into_cpu(grad_logp, logits, labels, lse, ignore_index, logits);
}

}  // namespace
}  // namespace srlm_hpc

TORCH_LIBRARY_IMPL(srlm_hpc, CPU, m) {
  m.impl("sequence_logprobs", &srlm_hpc::forward_cpu);
  m.impl("sequence_logprobs_backward", &srlm_hpc::backward_cpu);
  m.impl("sequence_logprobs_backward_", &srlm_hpc::backward_inplace_cpu);
}
