#!/usr/bin/env bash
# Shared by scripts/v1_5/eval/<benchmark>.sh: shards generation over the GPUs (one chunk per GPU),
# then merges, scores and writes result.json, all through `python -m llava_restore.eval.run`.
#
#   bash scripts/v1_5/eval/pope.sh [eval.run flags, e.g. --reduction divprune --n-vis 64 --restore]
#
# Environment (LLaVA's defaults):
#   MODEL_PATH    checkpoint folder, LLaVA-1.5 or Qwen2.5-VL  (liuhaotian/llava-v1.5-7b); MODEL is an alias
#   CKPT          model name in the run folder               (basename of MODEL_PATH)
#   DATA_ROOT     LLaVA's eval data layout                   (./playground/data/eval)
#   OUTPUT_ROOT   root of the run folders                    (./runs/eval)
#   CUDA_VISIBLE_DEVICES  GPUs to shard over, one chunk each (unset: every GPU nvidia-smi lists;
#                 set but empty, or no GPU: one chunk on CPU)
#   NUM_CHUNKS    force the number of chunks (GPUs are then used round-robin; CPU: parallel processes)
#   PYTHON        interpreter                                (python)
# The run folder is printed at the end; rerunning the same command resumes unfinished shards.
set -euo pipefail

_gpu_list() {  # the GPU ids to shard over, space separated (empty: CPU)
    if [ "${CUDA_VISIBLE_DEVICES+set}" = set ]; then
        echo "${CUDA_VISIBLE_DEVICES//,/ }"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        local n
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        [ "${n:-0}" -gt 0 ] && seq -s ' ' 0 $((n - 1))
    fi
    return 0
}

run_benchmark() {
    local bench="$1"
    shift
    local py="${PYTHON:-python}"
    local model_path="${MODEL_PATH:-${MODEL:-liuhaotian/llava-v1.5-7b}}"
    local -a common=(--benchmark "$bench" --model-path "$model_path" --ckpt "${CKPT:-$(basename "$model_path")}"
                     --data-root "${DATA_ROOT:-./playground/data/eval}" --output-root "${OUTPUT_ROOT:-./runs/eval}")
    local -a gpus
    read -ra gpus <<< "$(_gpu_list)"
    local chunks="${NUM_CHUNKS:-${#gpus[@]}}"
    [ "$chunks" -ge 1 ] || chunks=1
    if [ "$chunks" -eq 1 ]; then  # one process generates, merges and scores
        if [ "${#gpus[@]}" -ge 1 ]; then
            CUDA_VISIBLE_DEVICES="${gpus[0]}" "$py" -m llava_restore.eval.run "${common[@]}" "$@"
        else
            CUDA_VISIBLE_DEVICES="" "$py" -m llava_restore.eval.run "${common[@]}" --device cpu "$@"
        fi
        return
    fi
    local -a pids=()
    local idx dev
    local -a devflag
    for idx in $(seq 0 $((chunks - 1))); do
        if [ "${#gpus[@]}" -ge 1 ]; then dev="${gpus[$((idx % ${#gpus[@]}))]}"; devflag=(); else dev=""; devflag=(--device cpu); fi
        echo "[eval] $bench shard $idx/$chunks on ${dev:+GPU }${dev:-CPU}" >&2
        CUDA_VISIBLE_DEVICES="$dev" "$py" -m llava_restore.eval.run "${common[@]}" --stage generate \
            --num-chunks "$chunks" --chunk-idx "$idx" --no-progress "${devflag[@]}" "$@" &
        pids+=("$!")
    done
    local failed=()
    for idx in "${!pids[@]}"; do
        wait "${pids[$idx]}" || failed+=("$idx")
    done
    if [ "${#failed[@]}" -gt 0 ]; then
        echo "[eval] $bench: shard(s) ${failed[*]} of $chunks failed; not merging. Rerun the same command to resume." >&2
        return 1
    fi
    "$py" -m llava_restore.eval.run "${common[@]}" --stage finalize --num-chunks "$chunks" "$@"
}
