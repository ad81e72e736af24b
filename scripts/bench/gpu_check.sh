#!/usr/bin/env bash
# The GPU checks of the eval issue, as one script for a lent GPU machine (run from the repo root):
# batched-vs-single eval throughput and a prefill profile, full tokens and DivPrune-64 + RESTORE.
#   OUT=/tmp/gpu bash scripts/bench/gpu_check.sh
set -u
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
python3 -m llava_restore.playground build > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
R="--reduction divprune --n-vis 64 --restore"
{
  python3 scripts/bench/eval_throughput.py --device cuda --n 128 --batch-sizes 1 8 16
  python3 scripts/bench/eval_throughput.py --device cuda --n 128 --batch-sizes 1 8 16 $R
  python3 scripts/bench/eval_throughput.py --benchmark pope --device cuda --n 128 --batch-sizes 1 8 16
  python3 scripts/bench/profile_prefill.py --device cuda --batch-sizes 1 8 16
  python3 scripts/bench/profile_prefill.py --device cuda --batch-sizes 1 8 16 $R
} 2>&1 | grep -v "WARNING\|Loading weights" | tee "$OUT/gpu_check.txt"
