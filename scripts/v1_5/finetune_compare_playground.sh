#!/usr/bin/env bash
# Does a light LoRA fine-tune at reduced tokens help?  For the plain baseline (REDUCTION without
# --restore) and for RESTORE: evaluate the playground model at N_VIS tokens, fine-tune a LoRA at
# N_VIS tokens (scripts/v1_5/finetune_lora_restore.sh), evaluate the LoRA the same way, print a table.
#
#   bash scripts/v1_5/finetune_compare_playground.sh [extra TrainConfig overrides, e.g. max_steps=100]
#
# Environment: MODEL_PATH (playground/cache/llava-playground), REDUCTION (divprune), N_VIS (64),
# BENCHMARKS ("gqa pope"), OUT_ROOT (./runs/finetune-compare), BATCH_SIZE (8, eval).
# Finished fine-tunes and evaluations are reused when rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE="${MODEL_PATH:-playground/cache/llava-playground}"
REDUCTION="${REDUCTION:-divprune}"
N_VIS="${N_VIS:-64}"
BENCHMARKS="${BENCHMARKS:-gqa pope}"
OUT="${OUT_ROOT:-./runs/finetune-compare}"

evaluate() {  # evaluate BENCH CKPT_NAME FLAGS... -> prints the run folder
    local bench="$1" name="$2"
    shift 2
    local -a args=(--benchmark "$bench" --ckpt "$name" --data-root playground/data/eval --output-root "$OUT/eval"
                   --batch-size "${BATCH_SIZE:-8}" --no-progress "$@")
    python -m llava_restore.eval.run "${args[@]}" >&2
    python -m llava_restore.eval.run "${args[@]}" --print-run-dir
}

rows=()
for restore in 0 1; do
    tag="$REDUCTION-n$N_VIS"
    red=(--reduction "$REDUCTION" --n-vis "$N_VIS")
    if [ "$restore" = 1 ]; then
        tag="$tag-restore"
        red+=(--restore)
    fi
    lora="$OUT/lora-$tag"
    if [ ! -f "$lora/adapter_config.json" ] || [ ! -f "$lora/trainer_state.json" ]; then
        MODEL_PATH="$BASE" OUTPUT_DIR="$lora" REDUCTION="$REDUCTION" N_VIS="$N_VIS" RESTORE="$restore" \
            bash scripts/v1_5/finetune_lora_restore.sh --resume "$@"
    fi
    for bench in $BENCHMARKS; do
        before=$(evaluate "$bench" playground-base --model-path "$BASE" "${red[@]}" | tail -n1)
        after=$(evaluate "$bench" "lora-$tag" --model-path "$lora" --model-base "$BASE" "${red[@]}" | tail -n1)
        rows+=("$bench $tag $before $after")
    done
done

python - "${rows[@]}" <<'EOF'
import json, sys
print("| benchmark | setting | before | after | delta |\n|---|---|---|---|---|")
for row in sys.argv[1:]:
    bench, tag, before, after = row.split()
    acc = []
    for run in (before, after):
        r = json.load(open(f"{run}/result.json"))
        acc.append(r["metrics"]["mean_acc"] if bench == "pope" else r["main_metric"]["value"])  # percent
    print(f"| {bench} | {tag} | {acc[0]:.2f} | {acc[1]:.2f} | {acc[1] - acc[0]:+.2f} |")
EOF
