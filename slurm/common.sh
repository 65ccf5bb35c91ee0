# Sourced by every stage's sbatch script: run one shard through the same worker entry
# point and manifest that `python -m srlm_hpc.submit executor=slurm` uses.
#
# Preemption and time limits: the scripts ask for --signal=B:USR2@120 and --requeue. On
# USR2 this shell sends TERM to the worker (scancel --signal, to the step), waits until the worker has
# stopped (a training stage finishes its step and saves a checkpoint first; the worker
# records the preemption in the manifest), and only then requeues its own job: a job
# that merely exits on the signal is NOT requeued by Slurm, and one requeued first would
# be killed after KillWait, before its checkpoint. The requeued task resumes the shard
# from its last finished chunk or training checkpoint.
set -euo pipefail

CONFIG="${1:?usage: sbatch --array=SHARDS slurm/<stage>.sbatch CONFIG_JSON}"
STAGE="${SRLM_STAGE:?SRLM_STAGE is set by the stage script}"
PYTHON="${SRLM_PYTHON:-python}"
worker=""

requeue() {
    echo "[srlm] $(date -Is) USR2 on ${SLURM_JOB_ID}: stopping shard ${SHARD:-${SLURM_ARRAY_TASK_ID:-0}} of ${STAGE}, then requeueing"
    if [[ -n "$worker" ]]; then
        # TERM to the step's tasks (the workers), not to srun: srun answers its own TERM by
        # SIGKILLing the step at once ("forcing job termination"), before any checkpoint.
        scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || kill -USR2 "$worker" 2>/dev/null || true
        wait "$worker" || true
    fi
    echo "[srlm] $(date -Is) worker stopped; requeueing ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0}" 2>/dev/null \
        || scontrol requeue "$SLURM_JOB_ID" || true
    exit 0
}
trap requeue USR2

# A shard is one array element: its index plus the offset of its array job (iteration.sh
# splits a stage into arrays below the cluster's MaxArraySize).
SHARD="$(( ${SRLM_SHARD_OFFSET:-0} + ${SLURM_ARRAY_TASK_ID:-0} ))"
# `|| SRLM_LOG=""`: under pipefail a failing scontrol (controller restarting) must not end the task.
SRLM_LOG="$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.*StdOut=\([^ ]*\).*/\1/p' | head -n 1)" || SRLM_LOG=""
export SRLM_LOG  # status points at it
srun --kill-on-bad-exit=1 "$PYTHON" -m srlm_hpc.worker "$CONFIG" "$STAGE" "$SHARD" &
worker=$!
wait "$worker"
