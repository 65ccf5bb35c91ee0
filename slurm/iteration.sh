#!/usr/bin/env bash
# Queue self-rewarding iterations with plain sbatch, no submitit:
#
#   slurm/iteration.sh iter=1 preset=demo work_dir=/shared/runs/demo [key=value ...] [-- SBATCH_OPTIONS]
#   slurm/iteration.sh iter=1-2 stage=all ...     # M1 -> M2 -> M3, all queued at once
#
# Writes the resolved config once, then for each stage in order submits one array job of
# that stage's unfinished shards, depending (afterok) on the previous stage's job. Rerun
# the same command after a failure: finished shards are skipped. Jobs already queued for
# a shard are not resubmitted only when you use submit (it tracks job ids); here, cancel
# stale jobs (`scancel -n srlm-<script>`, e.g. srlm-merge for the pairs stage) before rerunning.
#
# Exit status, as every srlm_hpc command (srlm_hpc/cli.py): 0 every stage queued (or already
# done), 1 a stage could not be queued (sbatch refused it, a plan failed), 2 a usage or
# configuration error, before anything is written. The sbatch scripts exit with the worker's
# status: 0 the shard is done, 1 it failed, 2 a usage error; 0 too when the task requeued itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export SRLM_HOME="${SRLM_HOME:-$(dirname "$here")}"
PYTHON="${SRLM_PYTHON:-python}"

args=(); sbatch_opts=()
while (($#)); do
    if [[ "$1" == "--" ]]; then shift; sbatch_opts=("$@"); break; fi
    args+=("$1"); shift
done

# iter=1-2 (a range) queues every iteration at once: iteration k+1's first stage waits
# (afterok) for iteration k's dpo job. Without iter=, the preset's or default iteration.
range=""; rest=()
for a in "${args[@]}"; do
    if [[ "$a" == iter=* ]]; then range="${a#iter=}"; else rest+=("$a"); fi
done
iters="-"
if [[ -n "$range" ]]; then iters="$("$PYTHON" -m srlm_hpc.iterations "$range")" || exit 2; fi

dep=""
for k in $iters; do
    iter_arg=(); if [[ "$k" != "-" ]]; then iter_arg=("iter=$k"); fi
    config="$("$PYTHON" -m srlm_hpc.worker --write-config "${rest[@]}" "${iter_arg[@]}")"
    stages="$("$PYTHON" -m srlm_hpc.worker --stages "$config")"
    echo "config: $config"
    dpo_job=""
    for stage in $stages; do
        script="$stage"; [[ "$stage" == pairs ]] && script=merge
        # One line "OFFSET INDICES SHARDS" per array job: Slurm refuses an array index at or
        # above MaxArraySize, so shard s runs as index s - OFFSET (common.sh adds it back).
        slices="$("$PYTHON" -m srlm_hpc.worker --array-slices "$config" "$stage")"
        if [[ -z "$slices" ]]; then
            echo "[$stage] every shard is done"
            continue
        fi
        # Nodes, tasks and GPUs per array task from the config (tensor/pipeline parallel vLLM,
        # DeepSpeed ranks): the same request submitit makes. Options after -- still win.
        read -r -a layout <<<"$("$PYTHON" -m srlm_hpc.worker --resources "$config" "$stage")"
        jobs=""
        while read -r offset indices shards; do
            job="$(sbatch --parsable --array="$indices" ${dep:+--dependency=afterok:$dep} "${layout[@]}" \
                --export=ALL,SRLM_HOME="$SRLM_HOME",SRLM_PYTHON="$PYTHON",SRLM_SHARD_OFFSET="$offset" \
                "${sbatch_opts[@]}" "$here/$script.sbatch" "$config")" \
                || { echo "error: sbatch refused the $stage job (its message is above)" >&2; exit 1; }
            job="${job%%;*}"
            echo "[$stage] shards $shards submitted as job $job${dep:+ after $dep}"
            jobs="${jobs:+$jobs:}$job"
        done <<<"$slices"
        dep="$jobs"
        if [[ "$stage" == dpo ]]; then dpo_job="$jobs"; fi
    done
    dep="$dpo_job"  # the next iteration starts from this one's M_{k+1}
done
