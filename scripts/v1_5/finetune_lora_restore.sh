#!/usr/bin/env bash
# LoRA fine-tuning of LLaVA-1.5-7B with reduced visual tokens (DivPrune + RESTORE at 64 by default),
# launched with the deepspeed launcher over every local GPU.
#
#   bash scripts/v1_5/finetune_lora_restore.sh [extra TrainConfig overrides: key=value or --flag value ...]
#   e.g. ... reduction.method=vispruner         (baseline: RESTORE=0 bash ...)
#
# With a GPU: LLaVA-1.5's paths and its LoRA recipe (r 128, alpha 256, lr 2e-4, projector lr 2e-5,
# bf16, ZeRO-3, gradient checkpointing).  Without one: the playground model and data on 2 CPU ranks
# (DS_ACCELERATOR=cpu, gloo, ZeRO-2, fp32); the playground is built/trained first if missing.
#
# Environment (defaults in brackets; GPU / CPU where they differ):
#   MODEL_PATH    base checkpoint               [liuhaotian/llava-v1.5-7b / playground/cache/llava-playground]
#   DATA_PATH     conversation JSON             [./playground/data/llava_v1_5_mix665k.json /
#                                                playground/data/train/llava_playground_train.json]
#   IMAGE_FOLDER  image root of DATA_PATH       [./playground/data / playground/data]
#   OUTPUT_DIR    adapter + checkpoints         [./checkpoints/llava-v1.5-7b-lora-<reduction tag>]
#   DS_CONFIG     DeepSpeed JSON                [./scripts/zero3.json / ./scripts/zero2.json]
#   NUM_GPUS      ranks on this node            [all GPUs / 2]
#   REDUCTION     base pruner                   [divprune]
#   N_VIS         visual tokens kept            [64]
#   RESTORE       1: RESTORE, 0: plain pruning  [1]
#   MASTER_PORT   rendezvous port               [29500]
# Rerunning the same command with `--resume` continues from the newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/../.."

REDUCTION="${REDUCTION:-divprune}"
N_VIS="${N_VIS:-64}"
RESTORE="${RESTORE:-1}"
TAG="${REDUCTION}-n${N_VIS}"
RED_ARGS=(--reduction "$REDUCTION" --n-vis "$N_VIS")
if [ "$RESTORE" = 1 ]; then
    TAG="$TAG-restore"
    RED_ARGS+=(--restore)
fi

n_gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
    n_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi

if [ "${n_gpus:-0}" -gt 0 ]; then
    MODEL_PATH="${MODEL_PATH:-liuhaotian/llava-v1.5-7b}"
    DATA_PATH="${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}"
    IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data}"
    OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-lora-$TAG}"
    DS_CONFIG="${DS_CONFIG:-./scripts/zero3.json}"
    NUM_GPUS="${NUM_GPUS:-$n_gpus}"
    RECIPE=(--lora_r 128 --lora_alpha 256 --learning_rate 2e-4 --mm_projector_lr 2e-5 --tune_mm_projector
            --num_train_epochs 1 --per_device_train_batch_size 16 --gradient_accumulation_steps 1
            --bf16 True --gradient_checkpointing True --model_max_length 2048 --warmup_ratio 0.03
            --lr_scheduler_type cosine --weight_decay 0. --dataloader_num_workers 4 --save_steps 500)
else
    export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    MODEL_PATH="${MODEL_PATH:-playground/cache/llava-playground}"
    DATA_PATH="${DATA_PATH:-playground/data/train/llava_playground_train.json}"
    IMAGE_FOLDER="${IMAGE_FOLDER:-playground/data}"
    OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-playground-lora-$TAG}"
    DS_CONFIG="${DS_CONFIG:-./scripts/zero2.json}"
    NUM_GPUS="${NUM_GPUS:-2}"
    if [ ! -f "$DATA_PATH" ] && [ "$DATA_PATH" = playground/data/train/llava_playground_train.json ]; then
        echo "playground data missing: building it (python -m llava_restore.playground build)"
        python -m llava_restore.playground build
    fi
    if [ ! -f "$MODEL_PATH/config.json" ] && [ "$MODEL_PATH" = playground/cache/llava-playground ]; then
        echo "playground model missing: training it (python -m llava_restore.playground train, ~20 min)"
        python -m llava_restore.playground train
    fi
    RECIPE=(--lora_r 32 --lora_alpha 64 --learning_rate 5e-4 --tune_mm_projector --mm_projector_lr 5e-5
            --max_steps 300 --per_device_train_batch_size 8 --gradient_accumulation_steps 1
            --precision fp32 --model_max_length 512 --warmup_ratio 0.03 --lr_scheduler_type cosine
            --save_steps 100)
fi

echo "fine-tuning $MODEL_PATH at $TAG on $NUM_GPUS rank(s) ($DS_CONFIG) -> $OUTPUT_DIR${*:+ (overrides: $*)}"
exec deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29500}" llava_restore/train/train.py \
    --deepspeed "$DS_CONFIG" \
    --model_name_or_path "$MODEL_PATH" \
    --version vicuna_v1 \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --output_dir "$OUTPUT_DIR" \
    "${RED_ARGS[@]}" \
    "${RECIPE[@]}" \
    "$@"
