#!/usr/bin/env bash
# VQAv2 test-dev: model_vqa_loader; EvalAI submission json (+ local accuracy when annotations exist).
# Usage: bash scripts/v1_5/eval/vqav2.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark vqav2 "$@"
