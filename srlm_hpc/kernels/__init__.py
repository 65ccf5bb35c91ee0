"""Custom kernels for srlm_hpc. Importing this package builds nothing; the C++/CUDA
extension is compiled (or loaded from cache) on the first call of an op.

    from srlm_hpc.kernels import sequence_logprobs
    logp = sequence_logprobs(logits, labels)  # [B] float32, differentiable
"""

from srlm_hpc.kernels.logprobs import extension_available, sequence_logprobs
from srlm_hpc.kernels.reference import sequence_logprobs_reference

__all__ = ["extension_available", "sequence_logprobs", "sequence_logprobs_reference"]
