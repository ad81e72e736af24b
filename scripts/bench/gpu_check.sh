#!/usr/bin/env bash
# The GPU checks of the eval issue, as one script for a lent GPU machine (run from the repo root):
# batched-vs-single eval throughput on the playground with the eval's defaults (one pass, as a user
# runs it), then two passes with the slowest prefill calls listed (one-off vs steady costs), a longer
# question set, DivPrune-64 + RESTORE, the POPE-style set, and torch's own SDPA choice for contrast.
#   OUT=/tmp/gpu bash scripts/bench/gpu_check.sh
# Needs the playground's GQA- and POPE-style sets (built here when missing).
set -u
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
if [ ! -f playground/data/eval/gqa/llava_gqa_testdev_balanced.jsonl ] || [ ! -d playground/data/eval/pope ]; then
  python3 -m llava_restore.playground build > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
fi
B="python3 scripts/bench/eval_throughput.py --device cuda"
R="--reduction divprune --n-vis 64 --restore"
run() { echo; echo "### $*"; local t0=$SECONDS; "$@" 2>&1 | grep -v "WARNING\|Loading weights"; echo "($((SECONDS - t0)) s)"; }
{
  run $B --n 128 --batch-sizes 1 8
  run $B --n 128 --batch-sizes 1 8 16 --passes 2 --slowest 3
  run $B --n 256 --batch-sizes 1 8 --slowest 3
  run $B --n 128 --batch-sizes 1 8 16 --passes 2 --slowest 3 $R
  run $B --benchmark pope --n 128 --batch-sizes 1 8 --slowest 3
  run $B --n 128 --batch-sizes 1 8 --slowest 3 --sdpa-kernel auto
} | tee "$OUT/gpu_check.txt"
