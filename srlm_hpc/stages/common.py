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
    """One engine per (engine, model) per process: a local run of many shards loads it once."""
    from ..models import resolve_device

    key = (resolve_engine_name(cfg.run.engine), str(path), batch_size, cfg.vllm)
    if key not in _ENGINES:
        for old in list(_ENGINES):
            _ENGINES.pop(old).close()
        _ENGINES[key] = make_engine(key[0], str(path), resolve_device(cfg.run.device), batch_size, cfg.vllm)
    return _ENGINES[key]
