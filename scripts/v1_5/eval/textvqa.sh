#!/usr/bin/env bash
# TextVQA val (with LLaVA's OCR-token line): model_vqa_loader; EvalAI-normalised VQA accuracy.
# Usage: bash scripts/v1_5/eval/textvqa.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark textvqa "$@"
