"""loop.train's plan, callback and log on W data-parallel ranks, with DeepSpeed ZeRO 2 or 3.

Every rank runs the same stage command; srun (or torchrun) starts them:

    srun --ntasks=4 python -m srlm_hpc.worker CONFIG_JSON sft     # sft.backend=deepspeed

Rank r of W takes micro-batches r, r+W, r+2W, ... of every optimizer batch of the plan, so
the W ranks together see exactly the batches one process would. The stage's micro_step
returns a micro-batch's loss already divided by the whole batch's normaliser; DeepSpeed
averages gradients over ranks, so each rank's loss is multiplied by W: the reduced gradient
is then the single-process sum. Dropout is seeded per (step, micro-batch) (loop.micro_seed),
so the masks, too, do not depend on W or on which rank draws them.

Checkpoints are DeepSpeed's (each rank writes its ZeRO shard) in <stage_dir>/checkpoint/step-N,
and count only once rank 0 has written `srlm_state.json` into that folder, last, after every
rank flushed its files. DeepSpeed's own `latest` file is not written (and would not be
trusted): a job killed mid-save resumes from the last folder with the marker.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from tqdm import tqdm

from ..files import atomic_write_json, read_json
from ..slurm_env import first_host, slurm_port
from ..preemption import deferred_signals
from .steps import CheckpointClock, check_identity, cosine_lr, micro_seed, run_identity, stopped_early, write_log

MARKER = "srlm_state.json"  # written last into a checkpoint folder: the folder is complete
TAG_PREFIX = "step-"


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int  # 0: any free port (a single process needs no agreement with others)


def dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """This process's place among the training ranks: torchrun's variables when set, else
    Slurm's (one srun task per rank), else a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, the deepspeed launcher, or set by hand
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = int(env["SLURM_NTASKS"])
        if world > 1:
            addr = env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"])
        else:
            addr = "127.0.0.1"
        port = int(env.get("MASTER_PORT") or slurm_port(env["SLURM_JOB_ID"]))
        return DistEnv(int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)), addr, port)
    return DistEnv(0, 1, 0, "127.0.0.1", 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(env: DistEnv | None = None) -> DistEnv:
    """Join the process group (gloo on CPU, nccl on GPUs) and pick this rank's GPU. Call it
    before loading the model, so that each rank loads onto its own GPU, not all onto GPU 0.
    Idempotent."""
    import deepspeed
    import torch.distributed as dist

    env = env or dist_env()
    if dist.is_initialized():
        return env
    port = env.master_port or _free_port()
    # DeepSpeed and torch read the rendezvous from the environment (init_method env://).
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.master_addr, MASTER_PORT=str(port))
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    # DeepSpeed's CPU accelerator would pick "ccl" (oneCCL bindings, not installed): gloo instead.
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               auto_mpi_discovery=False, verbose=False)
    atexit.register(_leave_process_group)
    return env


def _leave_process_group() -> None:
    """Tear the process group down while the interpreter is still whole. Left to interpreter
    shutdown, gloo's worker threads can outlive it and the rank dies of SIGABRT ("terminate
    called without an active exception", pytorch#190489) after its work is done and saved:
    CI lost a two-rank ZeRO-3 offload test to it once in ~20 runs."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def deepspeed_config(*, zero_stage: int, micro_batch_size: int, grad_accum: int, grad_clip: float,
                     bf16: bool = False, offload_optimizer: bool = False, offload_params: bool = False) -> dict:
    """The DeepSpeed config for our loop. No optimizer or scheduler section: the loop passes a
    torch AdamW (DeepSpeed's fused and CPU Adam are compiled ops, absent from a
    DS_BUILD_OPS=0 install) and sets the cosine LR on its param groups itself."""
    if zero_stage not in (2, 3):
        raise ValueError(f"zero_stage={zero_stage}: valid values are 2 (optimizer state and gradients "
                         f"sharded) and 3 (parameters too)")
    if offload_params and zero_stage != 3:
        raise ValueError("offload_params=true needs zero_stage=3: only ZeRO-3 shards the parameters")
    zero: dict = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if offload_params:
        zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        # Nominal: the loop marks each step's last micro-batch as the accumulation boundary
        # itself, since a plan's last batch may be short.
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": max(0.0, grad_clip),  # 0: no clipping, as in loop.train
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "steps_per_print": 1 << 30,  # the loop logs each step itself
    }
    if offload_optimizer:
        # Without this, a client torch optimizer plus offload is refused at initialize:
        # "ZeRORuntimeException: You are using ZeRO-Offload with a client provided optimizer
        # (<class 'torch.optim.adamw.AdamW'>) which in most cases will yield poor performance."
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def rank_micro_batches(batch: list[int], micro_batch_size: int, rank: int,
                       world_size: int) -> list[tuple[int, list[int] | None]]:
    """This rank's (micro-batch number, indices) of an optimizer batch: numbers rank, rank+W, ...
    Every rank gets the same count, the busiest rank's: ZeRO reduces gradients inside each
    backward, so all ranks must run as many. A rank short of real micro-batches gets
    (number, None): a pass whose loss counts zero."""
    micro = [batch[i:i + micro_batch_size] for i in range(0, len(batch), micro_batch_size)]
    per_rank = math.ceil(len(micro) / world_size)
    return [(j, micro[j] if j < len(micro) else None) for j in range(rank, per_rank * world_size, world_size)]


class _MicroStep(torch.nn.Module):
    """The model, with a forward that runs the stage's micro_step. DeepSpeed's backward
    bookkeeping (ZeRO's prologue, the loss hooks) hangs on the output of engine(...), and a
    micro_step may call the model's submodules rather than the model (sft's target-only LM
    head): so the engine's forward wraps the whole callback."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable):
        return fn()


def train_deepspeed(model, plan: list[list[int]], micro_batch_size: int, micro_step: Callable, *, lr: float,
                    min_lr: float, warmup: int, weight_decay: float, grad_clip: float, stage_dir: Path,
                    seed: int = 0, checkpoint_every: int = 0, checkpoint_minutes: float = 0.0,
                    stop_after: int | None = None, desc: str = "train", zero_stage: int = 2, offload_optimizer: bool = False, offload_params: bool = False,
                    bf16: bool = False) -> list[dict]:
    """loop.train on every rank of the process group (init_distributed). Returns the same log
    on every rank; rank 0 writes <stage_dir>/train_log.jsonl. On return rank 0's `model` holds
    the full trained weights in their original dtype (under ZeRO-3 on CPU); save it from rank 0."""
    import deepspeed
    import torch.distributed as dist

    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = next(model.parameters()).dtype
    # bf16 casts the module to bf16 in place; the frozen parameters have no fp32 master copy
    # to come back from, so rank 0 keeps their originals.
    frozen = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
              if bf16 and rank == 0 and not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay, betas=(0.9, 0.95))
    most = max((len(b) for b in plan), default=1)
    config = deepspeed_config(zero_stage=zero_stage, micro_batch_size=micro_batch_size,
                              grad_accum=max(1, math.ceil(math.ceil(most / micro_batch_size) / world)),
                              grad_clip=grad_clip, bf16=bf16, offload_optimizer=offload_optimizer,
                              offload_params=offload_params)
    engine, *_ = deepspeed.initialize(model=_MicroStep(model), optimizer=optimizer, config=config)
    ckpt_dir = Path(stage_dir) / "checkpoint"
    identity = run_identity(plan, micro_batch_size=micro_batch_size, lr=lr, min_lr=min_lr, warmup=warmup,
                            weight_decay=weight_decay, grad_clip=grad_clip, seed=seed, backend="deepspeed",
                            bf16=bf16)
    start, log = load_checkpoint(engine, ckpt_dir, world, zero_stage, identity)
    if start and rank == 0:
        print(f"[{desc}] resumed from the checkpoint of step {start} of {len(plan)} ({world} ranks)", flush=True)
    log_path = Path(stage_dir) / "train_log.jsonl"
    engine.train()
    total = len(plan)
    bar = tqdm(range(start, total), desc=desc, initial=start, total=total, unit="step", disable=rank != 0)
    clock, done, signalled = CheckpointClock(checkpoint_every, total, checkpoint_minutes), start, False
    with deferred_signals() as signals:
        for step in bar:
            t0 = time.time()
            for group in engine.optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, lr, min_lr, warmup)
            metrics = _accumulate(engine, micro_step, plan[step], micro_batch_size, rank, world, seed, step)
            engine.step()
            entry = {"step": step, "lr": engine.optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t0, 3),
                     **{k: round(v, 6) for k, v in metrics.items()}}
            if grad_clip > 0:
                entry["grad_norm"] = round(float(engine.get_global_grad_norm()), 6)
            log.append(entry)
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
            done = step + 1
            # The save is collective: every rank must take the same decision, though the
            # signal may reach one rank a step before another and clocks differ.
            signalled, due = _any_rank(bool(signals), clock.due(done, bool(signals)))
            if due:
                save_checkpoint(engine, ckpt_dir, done, log, world, zero_stage, identity)
                if rank == 0:
                    write_log(log_path, log)
                clock.saved()
            if signalled or (stop_after is not None and done >= stop_after):
                break
        if rank == 0:
            write_log(log_path, log)
    if signalled and done < total:
        raise stopped_early(signals, done, total, who=f"rank {rank}: ")
    _full_weights_on_rank0(engine, model, dtype, zero_stage, bf16, frozen)
    model.eval()
    return log


def _any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true when it is true on any rank."""
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, flags)
    return tuple(any(g[i] for g in gathered) for i in range(len(flags)))


def _accumulate(engine, micro_step: Callable, batch: list[int], micro_batch_size: int, rank: int, world: int,
                seed: int, step: int) -> dict[str, float]:
    """Forward and backward of this rank's micro-batches of one batch; the batch's metrics,
    summed over all ranks."""
    import torch.distributed as dist

    mine = rank_micro_batches(batch, micro_batch_size, rank, world)
    metrics: dict[str, float] = {}
    for k, (j, idx) in enumerate(mine):
        # The boundary is the last micro-batch of this step, however many there are.
        engine.set_gradient_accumulation_boundary(k == len(mine) - 1)
        torch.manual_seed(micro_seed(seed, step, j))
        real = idx is not None
        loss, m = engine(lambda: micro_step(idx if real else batch[:micro_batch_size], batch))
        # x W: DeepSpeed averages over ranks, the callback's losses are shares of the batch
        # sum. scale_wrt_gas=False: the callback already divided by the batch's normaliser.
        engine.backward(loss * (world if real else 0.0), scale_wrt_gas=False)
        if real:
            for key, v in m.items():
                metrics[key] = metrics.get(key, 0.0) + v
    gathered: list[dict] = [{} for _ in range(world)]
    dist.all_gather_object(gathered, metrics)
    total: dict[str, float] = {}
    for part in gathered:
        for key, v in part.items():
            total[key] = total.get(key, 0.0) + v
    return total


def _tag(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def _fsync_tree(folder: Path) -> None:
    """Flush what DeepSpeed wrote (it does not fsync), so the marker never outlives the data."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def save_checkpoint(engine, ckpt_dir: Path, step: int, log: list[dict], world: int, zero_stage: int,
                    identity: dict | None = None) -> None:
    """Every rank writes its shard into step-N; rank 0 marks the folder complete, last, then
    removes every other folder (older ones, and any left half-written by a killed save)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    folder = ckpt_dir / _tag(step)
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)  # left by a save that was cut short
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=folder.name, save_latest=False)
    _fsync_tree(folder)
    dist.barrier()  # every shard is on disk
    if rank == 0:
        atomic_write_json(folder / MARKER, {"step": step, "world_size": world, "zero_stage": zero_stage,
                                            "log": log, "identity": identity})
        for old in ckpt_dir.glob(f"{TAG_PREFIX}*"):
            if old != folder:
                (old / MARKER).unlink(missing_ok=True)  # first: a half-removed folder is not complete
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def latest_complete(ckpt_dir: Path) -> dict | None:
    """The marker of the newest checkpoint folder that has one, with its `tag`; None if none."""
    best = None
    for folder in ckpt_dir.glob(f"{TAG_PREFIX}*"):
        if (folder / MARKER).exists():
            state = read_json(folder / MARKER)
            if best is None or state["step"] > best["step"]:
                best = dict(state, tag=folder.name)
    return best


def resume_point(ckpt_dir: Path, world: int, zero_stage: int, identity: dict | None = None) -> dict | None:
    """The marker of the checkpoint to resume from (None: start afresh); raises if this run
    cannot load it."""
    if (ckpt_dir / "state.pt").exists() or (ckpt_dir.with_name(ckpt_dir.name + ".old") / "state.pt").exists():
        raise RuntimeError(f"{ckpt_dir} holds a checkpoint of the torch backend; resume with backend=torch, "
                           f"or delete {ckpt_dir} to restart this stage on deepspeed")
    state = latest_complete(ckpt_dir)
    if state is not None and (state["world_size"], state["zero_stage"]) != (world, zero_stage):
        raise RuntimeError(f"{ckpt_dir / state['tag']} was written by {state['world_size']} ranks with ZeRO-"
                           f"{state['zero_stage']}, this run has {world} ranks with ZeRO-{zero_stage}: ZeRO "
                           f"shards do not re-split; rerun with the same layout, or delete {ckpt_dir} to restart")
    if state is not None and identity is not None:
        check_identity(state.get("identity"), identity, ckpt_dir, state["step"])
    return state


def load_checkpoint(engine, ckpt_dir: Path, world: int, zero_stage: int,
                    identity: dict | None = None) -> tuple[int, list[dict]]:
    """Restore the newest complete checkpoint into the engine: (step, log); (0, []) if none."""
    import torch.distributed as dist

    # Rank 0 decides, so that ranks on nodes with a lagging view of the shared filesystem
    # agree; its error goes to every rank, which would otherwise wait for it forever.
    choice: list = [None]
    if dist.get_rank() == 0:
        try:
            choice = [resume_point(ckpt_dir, world, zero_stage, identity)]
        except RuntimeError as e:
            choice = [e]
    dist.broadcast_object_list(choice, src=0)
    state = choice[0]
    if isinstance(state, RuntimeError):
        raise state
    if state is None:
        return 0, []
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=state["tag"], load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {ckpt_dir / state['tag']} (see its log above)")
    return state["step"], state["log"]


def _full_weights_on_rank0(engine, model, dtype: torch.dtype, zero_stage: int, bf16: bool,
                           frozen: dict[str, torch.Tensor]) -> None:
    """Put the whole trained weights into rank 0's `model`, so save_pretrained writes a normal
    HF folder. ZeRO-2 in fp32 keeps full weights on every rank: nothing to gather. ZeRO-3 holds
    1/W of each parameter per rank: gather them one at a time (collective), keeping a CPU copy
    on rank 0 only. Under bf16 the trained parameters come from the fp32 master copy and the
    frozen ones from `frozen`, their originals."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    rank0 = dist.get_rank() == 0
    full = {}
    for name, p in model.named_parameters() if zero_stage == 3 or bf16 else ():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):  # no-op for ZeRO-2
            master = safe_get_full_fp32_param(p) if bf16 and p.requires_grad else None
            if rank0:
                full[name] = (p.data if master is None else master).detach().to("cpu", dtype, copy=True)
    engine.destroy()  # drops ZeRO's hooks: ZeRO-3's would re-partition the parameters
    if rank0:
        for name, p in model.named_parameters():
            if name in full:
                p.data = frozen.get(name, full[name])
