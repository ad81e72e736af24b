#!/usr/bin/env bash
# Which torch SDPA back-end the eval should use on a GPU: eval throughput at batch sizes 1/8/16, two
# passes each (the first pass shows one-off per-shape costs), one fresh process per (--sdpa-kernel,
# --dtype), then the prefill kernels each choice runs. Run from the repo root on a GPU machine:
#   OUT=/tmp/sdpa bash scripts/bench/sdpa_kernels.sh
set -u
OUT=${OUT:-runs/sdpa_kernels}; mkdir -p "$OUT"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
KERNELS=${KERNELS:-"auto no-cudnn efficient cudnn"}; DTYPES=${DTYPES:-"float32 float16"}
B="python3 scripts/bench/eval_throughput.py --device cuda --n 128 --batch-sizes 1 8 16 --passes 2 --slowest 3"
run() { echo; echo "### $*"; local t0=$SECONDS; "$@" 2>&1 | grep -v "WARNING\|Loading weights"; echo "($((SECONDS - t0)) s)"; }
{
  nvidia-smi -L
  for d in $DTYPES; do for k in $KERNELS; do run $B --dtype "$d" --sdpa-kernel "$k"; done; done
  for d in $DTYPES; do
    run python3 scripts/bench/profile_prefill.py --device cuda --dtype "$d" --batch-sizes 1 8 --repeats 5
  done
} | tee "$OUT/sdpa_kernels.txt"
