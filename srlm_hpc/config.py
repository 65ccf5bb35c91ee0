"""Run configuration: frozen dataclasses, a preset file, and dotted key=value overrides.

    python -m srlm_hpc.submit preset=demo stage=judge iter=1 judge.k=5 seed=7

Top-level keys (`iter`, `seed`, `work_dir`, ...) belong to `RunConfig`; stage keys are
dotted (`sft.lr`, `judge.k`). Unknown keys and bad values fail at once, all of them in
one message, each naming the key and what it accepts. Where the paper is silent the
default is our choice and the comment beside the field says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class RunConfig:
    run: str = "default"  # name of the run; manifests are kept per run
    work_dir: str = "runs/default"  # every stage reads and writes under <work_dir>/iter<k>/
    manifest_dir: str = ""  # empty: <work_dir>/manifests; on a cluster, a shared directory
    model: str = "default"  # M0: "default" = embedded SmolLM2-135M-Instruct, or a HF model folder
    # The chat template M0 is trained and prompted with (ours: the paper's Llama 2 70B base has
    # none, and the paper does not print the format it used). auto: the model's own, else the
    # plain one; plain: srlm_hpc/chat_templates/plain.jinja ("User: ...\n\nAssistant:\n"), also
    # for a model that has one; or a path to a Jinja file. SFT saves it with M1, so generation,
    # judging, SFT and DPO all use the same one. Checked when the run is planned.
    chat_template: str = "auto"
    seed: int = 1234
    iter: int = 1  # iteration k: M_k writes prompts, responses and judgements, DPO makes M_{k+1}
    stage: str = "all"
    engine: Literal["auto", "hf", "vllm"] = "auto"  # auto: vllm when importable, else hf
    executor: Literal["auto", "local", "slurm"] = "auto"  # auto: slurm when sbatch is on PATH
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # torch CPU threads; 0 = all cores the job may use
    wait: bool = False  # executor=slurm: block until the queued jobs have left the queue
    debug: bool = False  # errors print their full traceback instead of one line


@dataclass(frozen=True)
class SFTConfig:
    ift_path: str = ""  # empty: the shipped seed set (srlm_hpc/seed/ift.jsonl)
    eft_path: str = ""  # empty: the shipped seed set (srlm_hpc/seed/eft.jsonl)
    use_eft: bool = True
    lr: float = 5.5e-6  # paper: 5.5e-6 cosine-decayed to 1.1e-6
    min_lr: float = 1.1e-6
    warmup_steps: int = 0
    batch_size: int = 16  # paper: 16 (sequences per optimizer step)
    micro_batch_size: int = 4  # sequences per forward; batch_size must be a multiple
    epochs: int = 1
    max_len: int = 1024  # ours; longer examples lose the left of the user's text (never the chat header)
    # paper: 0.1, without saying where. Here attention dropout, the only dropout transformers'
    # Llama has (no residual or embedding dropout without patching the model): our reading.
    dropout: float = 0.1
    # Ours, not the paper's (it gives none): no weight decay, gradient norm clipped at 1.0, and
    # AdamW betas (0.9, 0.95), fixed in training/loop.py and training/distributed.py.
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # ours: gradient norm clip (see weight_decay)
    autocast: Literal["none", "bf16"] = "none"
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints; 0: four per run
    # Also save when this many minutes have passed since the last save: a job's time limit
    # or a lost node then costs at most this much, however long four steps' worth takes.
    checkpoint_minutes: float = 20.0
    freeze_layers: int = 0  # freeze embeddings + this many bottom blocks (0: full fine-tuning, the paper's)
    backend: Literal["torch", "deepspeed"] = "torch"  # deepspeed: ZeRO (see the deepspeed section), srun ranks


@dataclass(frozen=True)
class PromptsConfig:
    n_prompts: int = 1000  # prompts kept per iteration (paper: ~4k-7k pairs survive from far more)
    shard_size: int = 64
    n_shot_ift: int = 6  # paper: 8-shot, 6 from IFT prompts ...
    n_shot_generated: int = 2  # ... and 2 from prompts generated earlier
    temperature: float = 0.6
    top_p: float = 0.9
    max_tokens: int = 96
    oversample: float = 2.0  # candidates generated per kept prompt, before filtering
    rouge_threshold: float = 0.7  # self-instruct's cut: ROUGE-L above it is a near-duplicate
    min_words: int = 4  # self-instruct drops instructions of 3 words or fewer
    max_words: int = 150
    blacklist: tuple[str, ...] = ("image", "images", "graph", "graphs", "picture", "pictures",
                                  "file", "files", "map", "maps", "draw", "plot", "go to", "video",
                                  "audio", "music", "flowchart", "diagram")  # self-instruct's list
    generator_model: str = ""  # empty: M_k itself (the paper used a fixed Llama 2-Chat 70B)


@dataclass(frozen=True)
class ResponsesConfig:
    n: int = 4  # paper: N = 4
    temperature: float = 0.7
    top_p: float = 0.9
    # Ours; must fit the paper's lengths: its M3 answers average 2,552 characters on AlpacaEval,
    # ~640 Llama 2 tokens at ~4 characters a token, and the longest are several times that. 2,048
    # cuts few of them (a cut response is dropped from pairs: pairs.allow_truncated), and the
    # judge prompt around one (~540 rubric tokens + the instruction + judge.max_tokens) still fits
    # Llama 2's 4,096-token context.
    max_tokens: int = 2048
    shard_size: int = 32  # prompts per shard
    batch_size: int = 8  # prompts per generate call


@dataclass(frozen=True)
class JudgeConfig:
    k: int = 3  # paper: 3 judge samples per response, mean of the parseable ones
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256  # the rubric asks for up to 100 words plus the score line
    shard_size: int = 32  # prompts per shard (each with n responses)
    batch_size: int = 8  # responses per generate call
    judge_model: str = ""  # empty: M_k judges itself


@dataclass(frozen=True)
class PairsConfig:
    tie_break: Literal["first", "variance", "shortest"] = "first"
    # false (ours; the paper's 4k-token budget rarely cut an answer): a response cut at
    # responses.max_tokens is neither chosen nor rejected; stats.json counts them (truncated_responses)
    # and the prompts that lose their pair to this (dropped.truncated). true: they take part, and
    # their training target ends without the end token (the model never wrote one).
    allow_truncated: bool = False
    min_valid: int = 2  # a prompt needs at least 2 scored responses
    records_per_file: int = 100_000
    zstd_level: int = 3
    # zstd worker threads; -1 = one per CPU the job may use. The bytes are the same for any
    # count >= 1 (checked in tests/stages/test_merge.py), but 0 (compress in the calling
    # thread) gives other bytes, so a merge records which of the two it started with.
    zstd_threads: int = -1


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1  # paper: 0.1
    lr: float = 1e-6  # paper: 1e-6 decaying to 1e-7
    min_lr: float = 1e-7
    warmup_steps: int = 0
    batch_size: int = 16  # paper: 16 pairs per optimizer step
    micro_batch_size: int = 2  # pairs per forward
    epochs: int = 1
    # Ours: prompt + a response of responses.max_tokens (2,048) fit, as in the paper's 4,096-token
    # context. A pair that does not fit loses the left of its prompt's text when that cuts the same
    # tokens on both sides; otherwise it is dropped and counted (training/tokenize.encode_pair).
    max_len: int = 4096
    dropout: float = 0.1  # paper: 0.1; attention dropout, as sft.dropout says
    grad_clip: float = 1.0  # ours, as sft.grad_clip (DPO has no weight decay: ours too)
    reference: Literal["previous", "sft"] = "previous"  # paper: M_t; "sft": M1 every iteration
    logp_reduction: Literal["sum", "mean"] = "sum"  # paper and TRL: sum over response tokens
    autocast: Literal["none", "bf16"] = "none"
    # Chosen and rejected in one row, their common prefix (the prompt) run once, with a tree
    # attention mask (training/shared_prefix.py): the same loss and gradients (fp32, atol 1e-5)
    # from fewer positions than two padded rows (bench/dpo_step.py --profile-sharing). false:
    # the two sequences padded side by side, as before. ref_logps follows it too.
    share_prompt: bool = True
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints; 0: four per run
    # Also save when this many minutes have passed since the last save: a job's time limit
    # or a lost node then costs at most this much, however long four steps' worth takes.
    checkpoint_minutes: float = 20.0
    # Where the reference log-probs come from. "stored": the ref_logps stage's files (DPO never
    # loads the reference); "inline": computed here, before training; "auto": stored when the
    # ref_logps stage has been planned for this iteration, else inline.
    reference_logps: Literal["auto", "stored", "inline"] = "auto"
    backend: Literal["torch", "deepspeed"] = "torch"  # deepspeed: ZeRO (see the deepspeed section), srun ranks
    # Which weights become M_{k+1} (stages/dpo_select.py). "last": the final step's (ours, the
    # default: no extra generation). "judge", as the paper: a candidate every `eval_every` steps
    # plus the final one, each answering the validation prompts against M_k, judged by eval's fixed
    # judge (eval.judge_model, eval.h2h_method); the best (W + T/2) / n wins, ties to the earlier step.
    select: Literal["last", "judge"] = "last"
    eval_every: int = 200  # paper: a checkpoint every 200 steps; larger than the run: the final weights alone
    # JSONL of {"prompt_id", "prompt"}; "" = the shipped srlm_hpc/seed/validation.jsonl (24 prompts
    # written for the project). Must share no prompt with eval's held-out test prompts.
    select_prompts: str = ""
    select_max_prompts: int = 253  # paper: 253 validation prompts


@dataclass(frozen=True)
class RefLogpsConfig:
    """Stage `ref_logps`: the frozen reference's log-probs of every pair, computed once per
    iteration (sharded, with the log-prob kernel under no_grad) so DPO loads only the policy.
    The reference model, max_len and reduction are dpo's (dpo.reference, dpo.max_len)."""
    shard_size: int = 512  # pairs per shard (at most one pair per prompt: prompts.n_prompts in all)
    micro_batch_size: int = 8  # pairs per forward (no graph is kept: larger than dpo's fits)
    chunk_size: int = 64  # pairs per resumable chunk inside a shard


@dataclass(frozen=True)
class DeepSpeedConfig:
    """ZeRO for the training stages whose backend is deepspeed (sft.backend, dpo.backend):
    one rank per GPU (or slurm.train_tasks_per_node on CPU), launched by srun."""
    zero_stage: int = 2  # 2: optimizer state and gradients sharded; 3: parameters too (a 70B policy)
    offload_optimizer: bool = False  # optimizer state and the AdamW step in CPU memory
    offload_params: bool = False  # zero_stage=3 only: parameters in CPU memory
    bf16: bool = False  # bf16 weights with an fp32 master copy (sft/dpo.autocast=bf16 is separate)


@dataclass(frozen=True)
class EvalConfig:
    # "" = the shipped held-out set (srlm_hpc/seed/heldout.jsonl: 10 prompts with 3-4 ranked replies,
    # never trained on): a smoke-scale stand-in for the paper's 541 examples and 256 test prompts. Otherwise an oasst1
    # source (data.oasst.load_messages): "OpenAssistant/oasst1", a snapshot folder, or a file;
    # its held-out split (the same split_seed / ift_size / heldout_frac as the data was built
    # with) gives both the ranked replies and the head-to-head prompts.
    oasst_path: str = ""
    split_seed: int = 1234  # the data split's own seed: changing run.seed must not move it
    ift_size: int = 3200  # paper: 3,200 IFT examples
    heldout_frac: float = 0.25  # our choice: 541 eval / (541 + 1,630) EFT examples in the paper
    max_rm_prompts: int = 256  # 541 examples / 2.85 per prompt = ~190 prompts in the paper
    max_h2h_prompts: int = 256  # paper: 256 test prompts
    shard_size: int = 32  # prompts per shard (of each kind)
    batch_size: int = 8  # conversations per generate call
    # The head-to-head judge, the same model in every iteration; "" = M1 frozen, never the model
    # under test (the paper used GPT-4: set a strong model).
    judge_model: str = ""
    baseline_model: str = ""  # "" = M1 (this run's SFT); the paper's baseline is SFT on IFT only
    compare_temperature: float = 0.0  # greedy verdicts: one deterministic sample per order
    compare_max_tokens: int = 256
    # Ours: the cap on the answers eval measures (head-to-head, lengths), apart from
    # responses.max_tokens so the length trend (the paper's 1,092 -> 2,552 characters) is not
    # clipped by the training cap. 2,048 tokens as responses.max_tokens, for the same reasons.
    max_tokens: int = 2048
    # "pairwise": the paper's GPT-4 style A/B comparison, both orders (compare_* above); "rubric":
    # each answer scored with the judge prompt (judge.k samples, mean), higher mean wins. Ours.
    h2h_method: Literal["pairwise", "rubric"] = "pairwise"


@dataclass(frozen=True)
class EFTConfig:
    model: str = ""  # the IFT-only SFT baseline; "" = M1 of this run (train it with sft.use_eft=false)
    max_prompts: int = 8192  # bound on EFT-train prompts, so the plan needs no data (oasst1: a few thousand)
    shard_size: int = 64
    batch_size: int = 8


@dataclass(frozen=True)
class VLLMConfig:
    """Settings of the vLLM engine (engine=vllm, or auto where vllm imports)."""
    tensor_parallel_size: int = 1  # GPUs per task; ask Slurm for as many (slurm.gpus_per_task)
    pipeline_parallel_size: int = 1  # >1 spans nodes through vLLM's own Ray backend
    gpu_memory_utilization: float = 0.9
    kv_cache_gb: float = 0.0  # 0: vLLM sizes it on GPU; 2 GB on CPU
    max_model_len: int = 0  # 0: the model's context length
    enable_prefix_caching: bool = True  # judge prompts share the ~540-token rubric
    # auto: the dtype the model is saved in, so nothing is cast at load. Trained models
    # (sft, dpo) are saved in float32 (models.save_model says why); bfloat16 halves the
    # memory on GPUs at the cost of rounding away an update smaller than bf16's step.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


@dataclass(frozen=True)
class LogConfig:
    """What the terminal shows (srlm_hpc/log.py)."""
    # info: the pipeline's own lines, progress bars and warnings; the engines' and libraries'
    # records go to the shard's log file (<log_dir>/iter<k>/<stage>/shard-NNNNN.log).
    # debug: every library line on the terminal as well, as the libraries print it.
    level: Literal["info", "debug"] = "info"
    # Training curves go to TensorBoard event files under the run always; true: to W&B as well
    # when wandb is installed, offline (WANDB_MODE=online to sync).
    wandb: bool = False


@dataclass(frozen=True)
class SlurmConfig:
    """sbatch resources of every stage's array job (the same for all stages unless set per run)."""
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 240  # per array task; above 50 so submitit does not take USR2 for a time-out
    cpus_per_task: int = 2
    gpus_per_task: int = 0
    mem_gb: float = 0.0  # 0: the partition's default
    array_parallelism: int = 256  # most tasks of one array running at once
    extra: tuple[str, ...] = ()  # more sbatch options, "key=value" each (e.g. constraint=a100)
    max_retries: int = 3  # failures of one shard (preemptions not counted) before submit stops resubmitting it
    # submitit requeues a task after a time-out this many times, then gives up (its own default: 3);
    # a long shard resumes from its chunks or checkpoint each time, so a larger value is safe.
    max_timeouts: int = 3
    heartbeat_s: float = 60.0  # how often a running shard touches its manifest entry
    stale_after_s: float = 900.0  # a running shard whose heartbeat is older is stale
    log_dir: str = ""  # empty: <work_dir>/logs
    # Training stages on the deepspeed backend (launch/resources.py): nodes, and ranks per node:
    # one per GPU (train_gpus_per_node, 0: gpus_per_task), or train_tasks_per_node on CPU nodes.
    train_nodes: int = 1
    train_gpus_per_node: int = 0
    train_tasks_per_node: int = 1


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    ref_logps: RefLogpsConfig = field(default_factory=RefLogpsConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eft: EFTConfig = field(default_factory=EFTConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    log: LogConfig = field(default_factory=LogConfig)

    # ---- paths every stage agrees on -------------------------------------------------
    @property
    def work_dir(self) -> Path:
        return Path(self.run.work_dir)

    def iter_dir(self, k: int | None = None) -> Path:
        return self.work_dir / f"iter{self.run.iter if k is None else k}"

    def stage_dir(self, stage: str, k: int | None = None) -> Path:
        return self.iter_dir(k) / stage

    @property
    def log_dir(self) -> Path:
        return Path(self.slurm.log_dir) if self.slurm.log_dir else self.work_dir / "logs"

    @property
    def manifest_root(self) -> Path:
        root = Path(self.run.manifest_dir) if self.run.manifest_dir else self.work_dir / "manifests"
        return root / self.run.run


class ConfigError(ValueError):
    """A preset or override that does not fit the config; lists every problem at once."""


def _sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in fields(Config)}


def _accepts(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a comma-separated list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value, tp):
    """Turn a preset value or command-line string into the field's type, or raise ValueError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(s).strip() for s in items if str(s).strip())
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    if tp is float:
        return float(value)
    return str(value)


def _field_types(section_cls) -> dict[str, type]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in fields(section_cls)}


def _resolve_key(key: str) -> tuple[str, str] | None:
    """'judge.k' -> ('judge', 'k'); 'iter' -> ('run', 'iter'); unknown -> None."""
    sections = _sections()
    if "." in key:
        section, name = key.split(".", 1)
        if section in sections and name in _field_types(sections[section]):
            return section, name
        return None
    if key in _field_types(RunConfig):
        return "run", key
    return None


def _valid_keys() -> list[str]:
    keys = list(_field_types(RunConfig))
    for section, cls in _sections().items():
        if section != "run":
            keys += [f"{section}.{n}" for n in _field_types(cls)]
    return keys


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_preset(name_or_path: str) -> dict[str, object]:
    """A preset is a YAML or JSON file of nested sections; by name from srlm_hpc/presets/."""
    path = Path(name_or_path)
    if not path.suffix:
        candidates = [PRESET_DIR / f"{name_or_path}.{ext}" for ext in ("yaml", "yml", "json")]
        found = [p for p in candidates if p.exists()]
        if not found:
            known = sorted(p.stem for p in PRESET_DIR.glob("*.*"))
            raise ConfigError(f"preset={name_or_path!r}: no such preset; known presets: {', '.join(known)}"
                              f" (or give a path to a .yaml/.json file)")
        path = found[0]
    if not path.exists():
        raise ConfigError(f"preset={name_or_path}: file not found")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:  # parse errors of either format
        raise ConfigError(f"{path}: cannot parse preset: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of sections, got {type(data).__name__}")
    return _flatten(data)


def build_config(overrides: dict[str, object] | None = None, base: Config | None = None) -> Config:
    """Apply flat overrides ({'judge.k': '5', 'iter': '2'}) to `base`; every error at once."""
    cfg = base or Config()
    updates: dict[str, dict[str, object]] = {}
    problems = []
    for key, raw in (overrides or {}).items():
        where = _resolve_key(key)
        if where is None:
            problems.append(unknown_key_message(key))
            continue
        section, name = where
        tp = _field_types(_sections()[section])[name]
        try:
            updates.setdefault(section, {})[name] = _coerce(raw, tp)
        except (TypeError, ValueError):
            problems.append(f"{key}={raw!r}: expected {_accepts(tp)}")
    if problems:
        raise ConfigError("bad configuration:\n  " + "\n  ".join(problems))
    for section, values in updates.items():
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **values)})
    return _validate(cfg)


def unknown_key_message(key: str) -> str:
    """One line: the key, the closest valid ones (difflib), and where the full list is."""
    import difflib

    valid = _valid_keys()
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close and "." in key:  # a misspelt section with a right name: respones.n -> responses.n
        name = key.split(".", 1)[1]
        close = difflib.get_close_matches(key, [k for k in valid if k.endswith("." + name)], n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown key {key!r}{hint} (`python -m srlm_hpc.submit --help` lists every key)"


# The values each numeric key accepts, as intervals: "[1, inf)" is >= 1, "(0, inf)" is > 0.
# Checked after every override; every violation is listed in one message. Why some bounds:
# slurm.heartbeat_s below 1 s makes a thousand array tasks write the manifest thousands of
# times a second; slurm.max_retries=0 would never submit anything; pairs.min_valid below 2
# cannot make a pair; zstd has levels 1-22; a dropout or heldout fraction of 1 drops everything.
BOUNDS: dict[str, str] = {
    "iter": "[1, inf)", "seed": "[0, inf)", "threads": "[0, inf)",
    **{f"{s}.{k}": v for s in ("sft", "dpo") for k, v in {
        "lr": "(0, inf)", "min_lr": "[0, inf)", "warmup_steps": "[0, inf)", "batch_size": "[1, inf)",
        "micro_batch_size": "[1, inf)", "epochs": "[1, inf)", "max_len": "[2, inf)", "dropout": "[0, 1)",
        "grad_clip": "[0, inf)", "checkpoint_every": "[0, inf)", "checkpoint_minutes": "[0, inf)"}.items()},
    "sft.weight_decay": "[0, inf)", "sft.freeze_layers": "[0, inf)", "dpo.beta": "(0, inf)",
    **{f"{s}.{k}": v for s in ("prompts", "responses", "judge") for k, v in {
        "temperature": "[0, inf)", "top_p": "(0, 1]", "max_tokens": "[1, inf)", "shard_size": "[1, inf)"}.items()},
    "prompts.n_prompts": "[1, inf)", "prompts.n_shot_ift": "[0, inf)", "prompts.n_shot_generated": "[0, inf)",
    "prompts.oversample": "[1, inf)", "prompts.rouge_threshold": "[0, 1]", "prompts.min_words": "[0, inf)",
    "prompts.max_words": "[1, inf)",
    "responses.batch_size": "[1, inf)",  # responses.n >= 2 is checked below, with its reason
    "judge.k": "[1, inf)", "judge.batch_size": "[1, inf)",
    "pairs.min_valid": "[2, inf)", "pairs.records_per_file": "[1, inf)", "pairs.zstd_level": "[1, 22]",
    "pairs.zstd_threads": "[-1, inf)",
    "dpo.eval_every": "[1, inf)", "dpo.select_max_prompts": "[1, inf)",
    "ref_logps.shard_size": "[1, inf)", "ref_logps.micro_batch_size": "[1, inf)", "ref_logps.chunk_size": "[1, inf)",
    "eval.split_seed": "[0, inf)", "eval.ift_size": "[1, inf)", "eval.heldout_frac": "[0, 1)",
    "eval.max_rm_prompts": "[0, inf)", "eval.max_h2h_prompts": "[0, inf)", "eval.shard_size": "[1, inf)",
    "eval.batch_size": "[1, inf)", "eval.compare_temperature": "[0, inf)", "eval.compare_max_tokens": "[1, inf)",
    "eval.max_tokens": "[1, inf)",
    "eft.max_prompts": "[1, inf)", "eft.shard_size": "[1, inf)", "eft.batch_size": "[1, inf)",
    "vllm.tensor_parallel_size": "[1, inf)", "vllm.pipeline_parallel_size": "[1, inf)",
    "vllm.gpu_memory_utilization": "(0, 1]", "vllm.kv_cache_gb": "[0, inf)", "vllm.max_model_len": "[0, inf)",
    "slurm.time_min": "[1, inf)", "slurm.cpus_per_task": "[1, inf)", "slurm.gpus_per_task": "[0, inf)",
    "slurm.mem_gb": "[0, inf)", "slurm.array_parallelism": "[1, inf)", "slurm.max_retries": "[1, inf)",
    "slurm.heartbeat_s": "[1, inf)", "slurm.stale_after_s": "(0, inf)", "slurm.train_nodes": "[1, inf)",
    "slurm.train_gpus_per_node": "[0, inf)", "slurm.train_tasks_per_node": "[1, inf)",
    "slurm.max_timeouts": "[0, inf)",
}
BOUND_REASONS = {
    "prompts.n_prompts": "zero prompts is a plan with no work",
    "slurm.max_retries": "0 would never submit a shard",
    "slurm.heartbeat_s": "faster beats flood the shared filesystem with manifest writes",
    "pairs.min_valid": "a pair needs two scored responses",
    "pairs.zstd_level": "zstd's levels",
}
RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # `run` names a directory under the manifest root: no '/', no '..'


def within(value: float, interval: str) -> bool:
    lo_text, hi_text = (x.strip() for x in interval[1:-1].split(","))
    lo, hi = float(lo_text), float(hi_text)
    above = value > lo if interval[0] == "(" else value >= lo
    below = value < hi if interval[-1] == ")" else value <= hi
    return above and below


def describe(interval: str) -> str:
    """'[1, inf)' -> '>= 1'; '(0, 1]' -> 'in (0, 1]'."""
    lo, hi = (x.strip() for x in interval[1:-1].split(","))
    if hi == "inf":
        return (">= " if interval[0] == "[" else "> ") + lo
    return "in " + interval


def _value(cfg: Config, key: str):
    section, name = _resolve_key(key) or (None, None)
    return None if section is None else getattr(getattr(cfg, section), name)


def bound_problems(cfg: Config) -> list[str]:
    """Every numeric value outside BOUNDS or not finite (nan, inf), and a bad run name."""
    import math
    import re

    problems = []
    for key in _valid_keys():
        value = _value(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key}={value}: expected a finite number")
        elif key in BOUNDS and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not within(value, BOUNDS[key]):
            why = f" ({BOUND_REASONS[key]})" if key in BOUND_REASONS else ""
            problems.append(f"{key}={value}: expected a value {describe(BOUNDS[key])}{why}")
    if not re.fullmatch(RUN_NAME, cfg.run.run):
        problems.append(f"run={cfg.run.run!r}: expected a name of letters, digits, '.', '_' and '-' not starting "
                        f"with '.' (it becomes a directory under the manifest root)")
    return problems


def _validate(cfg: Config) -> Config:
    problems = bound_problems(cfg)
    for section in ("sft", "dpo"):
        sec = getattr(cfg, section)
        if sec.micro_batch_size >= 1 and sec.batch_size % sec.micro_batch_size:
            problems.append(f"{section}.batch_size={sec.batch_size}: expected a multiple of "
                            f"{section}.micro_batch_size={sec.micro_batch_size}")
    if cfg.deepspeed.zero_stage not in (2, 3):
        problems.append(f"deepspeed.zero_stage={cfg.deepspeed.zero_stage}: expected 2 or 3")
    if cfg.slurm.stale_after_s <= cfg.slurm.heartbeat_s:
        problems.append(f"slurm.stale_after_s={cfg.slurm.stale_after_s}: expected more than slurm.heartbeat_s="
                        f"{cfg.slurm.heartbeat_s} (a live shard would look stale between two heartbeats)")
    if cfg.deepspeed.offload_params and cfg.deepspeed.zero_stage != 3:
        problems.append("deepspeed.offload_params=true: expected deepspeed.zero_stage=3 (only ZeRO-3 shards parameters)")
    if cfg.responses.n < 2:
        problems.append(f"responses.n={cfg.responses.n}: expected at least 2 (a pair needs two responses)")
    if cfg.eval.max_rm_prompts == 0 and cfg.eval.max_h2h_prompts == 0:
        problems.append("eval.max_rm_prompts=0 and eval.max_h2h_prompts=0: expected at least one above 0 "
                        "(an eval of zero prompts is a plan with no work)")
    from .chat_template import setting_problem  # jinja2 only: checked at plan time, before any job runs

    if (template_problem := setting_problem(cfg.run.chat_template)) is not None:
        problems.append(template_problem)
    from .validation_prompts import setting_problem as selection_problem  # dpo.select=judge only: reads its prompts

    if (select_problem := selection_problem(cfg.dpo)) is not None:
        problems.append(select_problem)
    if problems:
        raise ConfigError("bad configuration:\n  " + "\n  ".join(problems))
    return cfg


def parse_args(argv: list[str]) -> tuple[Config, dict[str, str]]:
    """key=value arguments -> Config. `preset=NAME` is applied first, then the others."""
    pairs: dict[str, str] = {}
    problems = []
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            problems.append(f"argument {arg!r}: expected key=value (e.g. stage=judge iter=2)")
            continue
        k, v = arg.split("=", 1)
        pairs[k.strip().lstrip("-")] = v
    if problems:
        raise ConfigError("bad arguments:\n  " + "\n  ".join(problems))
    preset = pairs.pop("preset", None)
    merged: dict[str, object] = load_preset(preset) if preset else {}
    merged.update(pairs)
    return build_config(merged), pairs


def config_from_cli(argv: list[str] | None = None) -> Config | None:
    """The config of a command line (sys.argv[1:] when None) with absolute paths; None after
    printing what is wrong (the caller exits with status 2)."""
    import sys

    try:
        cfg, _ = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    return absolute_paths(cfg)


def absolute_paths(cfg: Config) -> Config:
    """Resolve relative directories once, at submit time, so array tasks agree on them."""
    run = cfg.run
    return replace(cfg, run=replace(
        run,
        work_dir=str(Path(run.work_dir).expanduser().resolve()),
        manifest_dir=str(Path(run.manifest_dir).expanduser().resolve()) if run.manifest_dir else "",
        chat_template=run.chat_template if run.chat_template in ("auto", "plain")
        else str(Path(run.chat_template).expanduser().resolve()),
    ), slurm=replace(cfg.slurm, log_dir=str(Path(cfg.slurm.log_dir).expanduser().resolve()) if cfg.slurm.log_dir else ""))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Inverse of to_dict, through the same checks as the command line."""
    flat = {}
    for section, values in d.items():
        for name, value in values.items():
            flat[name if section == "run" else f"{section}.{name}"] = value
    return build_config(flat)


def save_config(cfg: Config):
    """The resolved config, serialised once, pinned: written to iter<k>/configs/<sha>.json,
    named by its content and never overwritten, and that path is what array tasks get, so a
    task queued by this submit reads this config even after a later submit (config.json
    beside it is the latest copy, for people). Keys that shape outputs are guarded by each
    stage's plan (fingerprint.py); launch settings may differ between submits."""
    import hashlib

    from .files import atomic_write_json

    data = to_dict(cfg)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    pinned = cfg.iter_dir() / "configs" / f"config-{digest}.json"
    if not pinned.exists():
        atomic_write_json(pinned, data)
    atomic_write_json(cfg.iter_dir() / "config.json", data)
    return pinned


def load_config(path: str | Path) -> Config:
    """The resolved config a submit saved beside the run (what array tasks read)."""
    return from_dict(json.loads(Path(path).read_text()))


def env_threads() -> int:
    """CPUs this process may use: Slurm's allocation when inside a job, else the affinity mask."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return len(os.sched_getaffinity(0))
