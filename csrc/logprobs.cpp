// Schema of the DPO sequence log-prob ops. One library, three ops; kernels are
// registered per backend in csrc/cpu/logprobs_cpu.cpp and
// csrc/cuda/logprobs_cuda_binding.cpp, autograd and fake (meta) kernels in
// srlm_hpc/kernels/logprobs.py. The in-place op's ADInplaceOrView kernel is here.
//
//   logp[b]   = sum_t [labels[b,t] != ignore_index] * (logits[b,t,labels[b,t]] - lse[b,t])
//   lse[b,t]  = logsumexp(logits[b,t,:]) on active rows, 0 on ignored rows (never read)
//
// The forward returns lse too: it is the only thing backward needs besides the
// inputs (O(B*T) floats instead of a [B,T,V] softmax).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

TORCH_LIBRARY(srlm_hpc, m) {
  m.def(
      "sequence_logprobs(Tensor logits, Tensor labels, int ignore_index=-100, "
      "bool inplace_backward=False) -> (Tensor logp, Tensor lse)");
  // grad_logits = grad_logp[b] * (onehot(label) - softmax(logits)) on active rows, 0 elsewhere.
  m.def(
      "sequence_logprobs_backward(Tensor grad_logp, Tensor logits, Tensor labels, Tensor lse, "
      "int ignore_index) -> Tensor");
  // Same, written over `logits` (saves one [B,T,V] allocation; logits is destroyed).
  m.def(
      "sequence_logprobs_backward_(Tensor grad_logp, Tensor(a!) logits, Tensor labels, "
      "Tensor lse, int ignore_index) -> ()");
}

namespace srlm_hpc {
namespace {

// A TORCH_LIBRARY op gets no version-counter bump for its (a!) argument: that is the
// ADInplaceOrView kernel's job, and a C++ op has none unless it registers one. Without it
// the in-place backward overwrote logits silently: a second consumer that saved them (a
// z-loss's logsumexp, an entropy bonus) then read the gradient as its input and returned
// wrong gradients with no error. With the bump, autograd's saved-tensor check raises.
void backward_inplace_ad_inplace_or_view(const at::Tensor& grad_logp, const at::Tensor& logits,
                                         const at::Tensor& labels, const at::Tensor& lse,
                                         int64_t ignore_index) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("srlm_hpc::sequence_logprobs_backward_", "")
          .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      int64_t)>();
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op.call(grad_logp, logits, labels, lse, ignore_index);
  }
  torch::autograd::impl::bump_version(logits);
}

}  // namespace
}  // namespace srlm_hpc

TORCH_LIBRARY_IMPL(srlm_hpc, ADInplaceOrView, m) {
  m.impl("sequence_logprobs_backward_", &srlm_hpc::backward_inplace_ad_inplace_or_view);
}
