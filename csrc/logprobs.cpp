// Schema of the DPO sequence log-prob ops. One library, three ops; kernels are
// registered per backend in csrc/cpu/logprobs_cpu.cpp and
// csrc/cuda/logprobs_cuda_binding.cpp, autograd and fake (meta) kernels in
// srlm_hpc/kernels/logprobs.py.
//
//   logp[b]   = sum_t [labels[b,t] != ignore_index] * (logits[b,t,labels[b,t]] - lse[b,t])
//   lse[b,t]  = logsumexp(logits[b,t,:]) on active rows, 0 on ignored rows (never read)
//
// The forward returns lse too: it is the only thing backward needs besides the
// inputs (O(B*T) floats instead of a [B,T,V] softmax).
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
