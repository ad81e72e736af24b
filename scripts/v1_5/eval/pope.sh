#!/usr/bin/env bash
# POPE (adversarial/popular/random): model_vqa_loader; per-category acc/precision/recall/F1 and the mean.
# Usage: bash scripts/v1_5/eval/pope.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark pope "$@"
