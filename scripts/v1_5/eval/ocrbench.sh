#!/usr/bin/env bash
# OCRBench: model_vqa_ocrbench; OCRBench's substring scores (final score out of N).
# Usage: bash scripts/v1_5/eval/ocrbench.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark ocrbench "$@"
