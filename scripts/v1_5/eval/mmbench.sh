#!/usr/bin/env bash
# MMBench dev (circular tsv): model_vqa_mmbench --single-pred-prompt; local CircularEval + submission xlsx.
# Usage: bash scripts/v1_5/eval/mmbench.sh [--reduction divprune --n-vis 64 --restore ...]   (env vars: see _common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
run_benchmark mmbench "$@"
