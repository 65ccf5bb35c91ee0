"""Generation engines behind one interface (`base.Engine`); `make_engine` picks one."""

from __future__ import annotations

import importlib.util

from .base import Completion, Engine, SamplingConfig

__all__ = ["Completion", "Engine", "SamplingConfig", "make_engine", "resolve_engine_name"]


def resolve_engine_name(name: str) -> str:
    if name == "auto":
        has_vllm = importlib.util.find_spec("vllm") is not None
        has_ours = importlib.util.find_spec(__name__ + ".vllm") is not None
        return "vllm" if has_vllm and has_ours else "hf"
    return name


def make_engine(name: str, model_path: str, device: str, batch_size: int = 8) -> Engine:
    name = resolve_engine_name(name)
    if name == "hf":
        from .hf import HFEngine

        return HFEngine(model_path, device=device, batch_size=batch_size)
    if name == "vllm":
        from .vllm import VLLMEngine  # noqa: F401  (comes with the vLLM issue)

        return VLLMEngine(model_path, device=device)
    raise ValueError(f"engine={name!r}: expected one of 'auto', 'hf', 'vllm'")
