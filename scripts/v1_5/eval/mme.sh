#!/usr/bin/env bash
# MME: model_vqa_loader; perception / cognition scores (convert_answer_to_mme + calculation.py in one).
# Usage: bash scripts/v1_5/eval/mme.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark mme "$@"
