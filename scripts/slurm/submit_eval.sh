#!/usr/bin/env bash
# Submit one sharded benchmark run: an array job with one task per shard (scripts/slurm/eval.sbatch,
# STAGE=generate) and a merge+score job (STAGE=finalize) chained with --dependency=afterok.
#
#   NUM_CHUNKS=4 MODEL_PATH=/ckpt/llava-v1.5-7b scripts/slurm/submit_eval.sh pope --reduction divprune --n-vis 64 --restore
#   SHARDS=2 NUM_CHUNKS=4 MODEL_PATH=... scripts/slurm/submit_eval.sh pope ...   # resubmit shard 2 (+ finalize)
#
# Arguments after BENCH go to `python -m llava_restore.eval.run` in every job (they decide the run
# folder, so a resubmission must repeat them). On stdout: `array_job=ID` and `finalize_job=ID`.
#
# Environment (besides eval.sbatch's own: MODEL_PATH, CKPT, DATA_ROOT, OUTPUT_ROOT, EVAL_REPO,
# EVAL_VENV, EVAL_SETUP, which the jobs inherit):
#   NUM_CHUNKS            shards of the question file                                     (4)
#   SHARDS                array indices to submit, e.g. "1" or "0,3"               (0-NUM_CHUNKS-1)
#   MAX_PARALLEL          at most this many shards at a time (array "%P")                 (no limit)
#   SBATCH_ARGS           extra sbatch options for both jobs, e.g. "--partition=gpu --account=proj"
#   SHARD_SBATCH_ARGS     extra options for the array only
#   FINALIZE_SBATCH_ARGS  extra options for the merge job, e.g. "--partition=cpu --gres=none"
#   LOG_DIR               job logs, %x_%A_%a.out / %x_%j.out        ($OUTPUT_ROOT/slurm-logs)
#   NO_FINALIZE=1         submit the array only
#
# If a shard fails, `afterok` is never satisfied and the merge job is cancelled
# (--kill-on-invalid-dep=yes) without running; fix the cause, then resubmit that shard with SHARDS=i.
set -euo pipefail

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: [NUM_CHUNKS=N] [SHARDS=i,j] [MODEL_PATH=...] $0 BENCH [eval.run flags...]" >&2
    exit 2
fi
BENCH=$1
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="${EVAL_SBATCH:-$HERE/eval.sbatch}"
NUM_CHUNKS="${NUM_CHUNKS:-4}"
if ! [[ "$NUM_CHUNKS" =~ ^[1-9][0-9]*$ ]]; then
    echo "[submit_eval] NUM_CHUNKS=$NUM_CHUNKS is not a positive integer" >&2
    exit 2
fi
SHARDS="${SHARDS:-0-$((NUM_CHUNKS - 1))}"
for idx in $(echo "$SHARDS" | tr ',' ' ' | sed -E 's/([0-9]+)-([0-9]+)/\1 \2/g'); do
    if ! [[ "$idx" =~ ^[0-9]+$ ]] || [ "$idx" -ge "$NUM_CHUNKS" ]; then
        echo "[submit_eval] SHARDS=$SHARDS: $idx is not a shard index in [0, $NUM_CHUNKS)" >&2
        exit 2
    fi
done
LOG_DIR="${LOG_DIR:-${OUTPUT_ROOT:-./runs/eval}/slurm-logs}"
mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"
read -r -a COMMON <<<"${SBATCH_ARGS:-}"
read -r -a SHARD_EXTRA <<<"${SHARD_SBATCH_ARGS:-}"
read -r -a FINAL_EXTRA <<<"${FINALIZE_SBATCH_ARGS:-}"
EXPORT="ALL,BENCH=$BENCH,NUM_CHUNKS=$NUM_CHUNKS"

ARRAY_JOB=$(sbatch --parsable --array="$SHARDS${MAX_PARALLEL:+%$MAX_PARALLEL}" --job-name="eval-$BENCH" \
    --output="$LOG_DIR/%x_%A_%a.out" --export="$EXPORT,STAGE=generate" \
    "${COMMON[@]}" "${SHARD_EXTRA[@]}" "$TEMPLATE" "$@")
ARRAY_JOB=${ARRAY_JOB%%;*}
echo "[submit_eval] $BENCH: shards $SHARDS of $NUM_CHUNKS -> array job $ARRAY_JOB (logs $LOG_DIR)" >&2
echo "array_job=$ARRAY_JOB"
if [ "${NO_FINALIZE:-0}" = 1 ]; then
    exit 0
fi
FINAL_JOB=$(sbatch --parsable --dependency="afterok:$ARRAY_JOB" --kill-on-invalid-dep=yes \
    --job-name="eval-$BENCH-finalize" --output="$LOG_DIR/%x_%j.out" --export="$EXPORT,STAGE=finalize" \
    "${COMMON[@]}" "${FINAL_EXTRA[@]}" "$TEMPLATE" "$@")
FINAL_JOB=${FINAL_JOB%%;*}
echo "[submit_eval] $BENCH: merge+score -> job $FINAL_JOB (after every shard of $ARRAY_JOB succeeds)" >&2
echo "finalize_job=$FINAL_JOB"
