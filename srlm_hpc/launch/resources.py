"""What one array task of a stage asks Slurm for: nodes, tasks, GPUs.

Both launchers use this, so submitit arrays and the plain sbatch scripts request the same:

- generation stages (prompts, responses, judge, eval, eft) run one vLLM engine per task.
  Tensor parallel takes `vllm.tensor_parallel_size` GPUs of one node; pipeline parallel
  spans `vllm.pipeline_parallel_size` nodes, one task per node, joined into a Ray cluster
  by the task itself (launch/ray_slurm.py) for vLLM's Ray backend.
- training stages (sft, dpo) on DeepSpeed span `slurm.train_nodes` nodes with one task
  (one rank) per GPU, or `slurm.train_tasks_per_node` ranks per node on CPU; on the plain
  torch backend they are one task.
- merge and ref_logps are one task with the stage's default GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config

SRUN_ARGS = ("--kill-on-bad-exit=1",)
GENERATION = frozenset({"prompts", "responses", "judge", "eval", "eft"})
TRAINING = frozenset({"sft", "dpo"})
CPU_ONLY = frozenset({"pairs", "merge"})


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def sbatch_options(self) -> list[str]:
        """For `sbatch` (slurm/iteration.sh): the layout only; CPUs and time stay the scripts'
        defaults unless the user passes them."""
        opts = [f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}"]
        if self.gpus_per_node:
            opts.append(f"--gpus-per-node={self.gpus_per_node}")
        return opts

    def submitit_parameters(self) -> dict:
        # --kill-on-bad-exit: a task that dies (rank 0 SIGKILLed, OOM) ends the whole step at
        # once, instead of leaving the other ranks holding their nodes (slurm/common.sh does the same).
        params = {"nodes": self.nodes, "tasks_per_node": self.tasks_per_node, "cpus_per_task": self.cpus_per_task,
                  "slurm_srun_args": list(SRUN_ARGS)}
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        return params


def training_backend(cfg: Config, stage: str) -> str:
    return getattr(cfg, stage).backend


def stage_resources(cfg: Config, stage: str) -> Resources:
    s, v = cfg.slurm, cfg.vllm
    if stage in CPU_ONLY:
        return Resources(cpus_per_task=s.cpus_per_task)
    if stage in GENERATION:
        gpus = max(s.gpus_per_task, v.tensor_parallel_size) if s.gpus_per_task or v.tensor_parallel_size > 1 else 0
        return Resources(nodes=v.pipeline_parallel_size, tasks_per_node=1, gpus_per_node=gpus,
                         cpus_per_task=s.cpus_per_task)
    if stage in TRAINING and training_backend(cfg, stage) == "deepspeed":
        gpus = s.train_gpus_per_node or s.gpus_per_task
        tasks = gpus or s.train_tasks_per_node
        return Resources(nodes=s.train_nodes, tasks_per_node=tasks, gpus_per_node=gpus,
                         cpus_per_task=s.cpus_per_task)
    return Resources(gpus_per_node=s.gpus_per_task, cpus_per_task=s.cpus_per_task)
