#!/usr/bin/env bash
# ScienceQA test (CQM-A): model_vqa_science --single-pred-prompt; accuracy and IMG-accuracy.
# Usage: bash scripts/v1_5/eval/sqa.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark sqa "$@"
