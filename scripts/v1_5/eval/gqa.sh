#!/usr/bin/env bash
# GQA testdev-balanced: model_vqa_loader, greedy, 128 new tokens; GQA accuracy (+ LLaVA's predictions json).
# Usage: bash scripts/v1_5/eval/gqa.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark gqa "$@"
