#!/usr/bin/env bash
# Queue one self-rewarding iteration with plain sbatch, no submitit:
#
#   slurm/iteration.sh iter=1 preset=demo work_dir=/shared/runs/demo [key=value ...] [-- SBATCH_OPTIONS]
#
# Writes the resolved config once, then for each stage in order submits one array job of
# that stage's unfinished shards, depending (afterok) on the previous stage's job. Rerun
# the same command after a failure: finished shards are skipped. Jobs already queued for
# a shard are not resubmitted only when you use submit (it tracks job ids); here, cancel
# stale jobs (`scancel -n srlm-<script>`, e.g. srlm-merge for the pairs stage) before rerunning.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export SRLM_HOME="${SRLM_HOME:-$(dirname "$here")}"
PYTHON="${SRLM_PYTHON:-python}"

args=(); sbatch_opts=()
while (($#)); do
    if [[ "$1" == "--" ]]; then shift; sbatch_opts=("$@"); break; fi
    args+=("$1"); shift
done

config="$("$PYTHON" -m srlm_hpc.worker --write-config "${args[@]}")"
stages="$("$PYTHON" -m srlm_hpc.worker --stages "$config")"
echo "config: $config"
dep=""
for stage in $stages; do
    script="$stage"; [[ "$stage" == pairs ]] && script=merge
    shards="$("$PYTHON" -m srlm_hpc.worker --pending "$config" "$stage")"
    if [[ -z "$shards" ]]; then
        echo "[$stage] every shard is done"
        continue
    fi
    # Nodes, tasks and GPUs per array task from the config (tensor/pipeline parallel vLLM,
    # DeepSpeed ranks): the same request submitit makes. Options after -- still win.
    read -r -a layout <<<"$("$PYTHON" -m srlm_hpc.worker --resources "$config" "$stage")"
    job="$(sbatch --parsable --array="$shards" ${dep:+--dependency=afterok:$dep} "${layout[@]}" \
        --export=ALL,SRLM_HOME="$SRLM_HOME",SRLM_PYTHON="$PYTHON" "${sbatch_opts[@]}" \
        "$here/$script.sbatch" "$config")"
    job="${job%%;*}"
    echo "[$stage] shards $shards submitted as job $job${dep:+ after $dep}"
    dep="$job"
done
