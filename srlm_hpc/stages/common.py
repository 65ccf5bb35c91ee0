"""What every data stage needs: the model of this iteration and an engine loaded once per process."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..engines import Engine, make_engine, resolve_engine_name

# models (and so torch) is imported inside the functions: planning a stage, and the
# merger, must not pay torch's ~1.5 s import.

_ENGINES: dict[tuple, Engine] = {}


def current_model(cfg: Config, override: str = "") -> Path:
    """M_k for iteration k (the model that generates and judges), unless a stage names another."""
    from ..models import model_path

    return Path(override) if override else model_path(cfg, cfg.run.iter)


def engine_for(cfg: Config, path: Path, batch_size: int) -> Engine:
    """One engine per (engine, model) per process: a local run of many shards loads it once.
    The batch size is not part of the key: only the hf engine uses it (to cut a call into
    batches, seeded per batch), and it is set on the engine for each caller. In the demo the
    judge (batch 32) used to reload M_k after prompts and responses (batch 8): one vLLM start
    of ~3-5 s per iteration."""
    from ..models import resolve_device
    from ..timing import CountingEngine

    key = (resolve_engine_name(cfg.run.engine), str(path), cfg.vllm)
    if key not in _ENGINES:
        for old in list(_ENGINES):
            _ENGINES.pop(old).close()
        _ENGINES[key] = CountingEngine(make_engine(key[0], str(path), resolve_device(cfg.run.device), batch_size,
                                                   cfg.vllm))
    engine = _ENGINES[key]
    if hasattr(engine.engine, "batch_size"):
        engine.engine.batch_size = batch_size
    return engine


def start_training(cfg: Config, section) -> int:
    """This process's rank in the training stage: 0 on the torch backend. On deepspeed the
    process group is set up first, before any model is loaded, so each rank takes its GPU."""
    if section.backend != "deepspeed":
        return 0
    from ..training.distributed import init_distributed

    return init_distributed().rank


def train_backend_options(cfg: Config, section) -> dict:
    """The `train(...)` keywords that choose and configure the backend."""
    ds = cfg.deepspeed
    return {"backend": section.backend, "zero_stage": ds.zero_stage, "offload_optimizer": ds.offload_optimizer,
            "offload_params": ds.offload_params, "bf16": ds.bf16}
