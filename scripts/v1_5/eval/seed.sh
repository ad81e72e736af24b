#!/usr/bin/env bash
# SEED-Bench: model_vqa_loader; image/video/all accuracy (with SEED-Bench.json) + submission jsonl.
# Usage: bash scripts/v1_5/eval/seed.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark seed "$@"
