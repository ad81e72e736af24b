#!/usr/bin/env bash
# Does a light LoRA fine-tune at reduced tokens help?  For the plain baseline (REDUCTION without
# --restore) and for RESTORE: evaluate the playground model at N_VIS tokens, fine-tune a LoRA at
# N_VIS tokens (scripts/v1_5/finetune_lora_restore.sh), evaluate the LoRA the same way, print a table.
# A control LoRA, same recipe on all 576 tokens, is evaluated at N_VIS too: it separates "adapted to
# n tokens" from "trained longer".
#
#   bash scripts/v1_5/finetune_compare_playground.sh [extra TrainConfig overrides, e.g. max_steps=100]
#
# Environment: MODEL_PATH (playground/cache/llava-playground), REDUCTION (divprune), N_VIS (64),
# BENCHMARKS ("gqa pope"), OUT_ROOT (./runs/finetune-compare), BATCH_SIZE (8, eval), VISION_CACHE (512,
# eval --vision-cache: the tower runs once per image; same answers), CONTROL (1; 0 skips
# the control).  Finished fine-tunes and evaluations are reused when rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE="${MODEL_PATH:-playground/cache/llava-playground}"
REDUCTION="${REDUCTION:-divprune}"
N_VIS="${N_VIS:-64}"
BENCHMARKS="${BENCHMARKS:-gqa pope}"
OUT="${OUT_ROOT:-./runs/finetune-compare}"
CONTROL="${CONTROL:-1}"

evaluate() {  # evaluate BENCH CKPT_NAME FLAGS... -> prints the run folder
    local bench="$1" name="$2"
    shift 2
    local -a args=(--benchmark "$bench" --ckpt "$name" --data-root playground/data/eval --output-root "$OUT/eval"
                   --batch-size "${BATCH_SIZE:-8}" --vision-cache "${VISION_CACHE:-512}" --no-progress "$@")
    python -m llava_restore.eval.run "${args[@]}" >&2
    python -m llava_restore.eval.run "${args[@]}" --print-run-dir
}

finetune() {  # finetune OUTPUT_DIR RESTORE [overrides...]; skipped when a finished adapter is there
    local out="$1" restore="$2"
    shift 2
    if [ ! -f "$out/adapter_config.json" ] || [ ! -f "$out/trainer_state.json" ]; then
        MODEL_PATH="$BASE" OUTPUT_DIR="$out" REDUCTION="$REDUCTION" N_VIS="$N_VIS" RESTORE="$restore" \
            bash scripts/v1_5/finetune_lora_restore.sh --resume "$@"
    fi
}

control="$OUT/lora-full"
if [ "$CONTROL" = 1 ]; then
    finetune "$control" 0 "$@" reduction.method=none reduction.n_vis=null
fi
rows=()
for restore in 0 1; do
    tag="$REDUCTION-n$N_VIS"
    red=(--reduction "$REDUCTION" --n-vis "$N_VIS")
    if [ "$restore" = 1 ]; then
        tag="$tag-restore"
        red+=(--restore)
    fi
    lora="$OUT/lora-$tag"
    finetune "$lora" "$restore" "$@"
    for bench in $BENCHMARKS; do
        before=$(evaluate "$bench" playground-base --model-path "$BASE" "${red[@]}" | tail -n1)
        after=$(evaluate "$bench" "lora-$tag" --model-path "$lora" --model-base "$BASE" "${red[@]}" | tail -n1)
        ctrl=none
        if [ "$CONTROL" = 1 ]; then
            ctrl=$(evaluate "$bench" lora-full --model-path "$control" --model-base "$BASE" "${red[@]}" | tail -n1)
        fi
        rows+=("$bench $tag $before $after $ctrl")
    done
done

python - "${rows[@]}" <<'PY'
import json
import sys


def acc(bench, run):
    if run == "none":
        return "n/a"
    r = json.load(open(f"{run}/result.json"))
    value = r["metrics"]["mean_acc"] if bench == "pope" else r["main_metric"]["value"]  # percent
    return f"{value:.2f}"


print("| benchmark | eval setting | base | LoRA at that setting | LoRA at 576 tokens (control) |")
print("|---|---|---|---|---|")
for row in sys.argv[1:]:
    bench, tag, before, after, ctrl = row.split()
    print(f"| {bench} | {tag} | {acc(bench, before)} | {acc(bench, after)} | {acc(bench, ctrl)} |")
PY
