#!/usr/bin/env bash
# Issue 20's GPU suite: one script, <= 8 minutes on one GPU, no download (random weights at the
# LLaVA-1.5-7B shape), one markdown report with the issue's four GPU target ratios at the top.
#   OUT=runs/gpu_suite bash scripts/bench/gpu_suite.sh            # on a GPU machine (repo root)
#   OUT=runs/gpu_suite_cpu bash scripts/bench/gpu_suite.sh --cpu  # the CPU fallback (also used without CUDA)
#   WHEELS=.whl OUT=... bash scripts/bench/gpu_suite.sh             # no package index there (see below)
# GPU: 1. prefill latency, full vs DivPrune / VisPruner / HoloV at 64 / 128 / 192, RESTORE off/on, next to
#      the FLOP limit, with the reduction's and Stage-B anchor selection's own times (analysis/efficiency.py,
#      llava-7b random weights, bf16);  2. the attention bench at 7B heads for L = 139 and 651, bf16, per
#      SDPA kernel, flex, and the size term folded into q/k (scripts/bench/attention.py);  3. throughput at
#      bs = 1 / 8 / 16 (scripts/bench/throughput.py, 7B random weights; and the real eval core on the
#      playground model when its question set is there or builds in time);  4. the selection fast paths
#      against the previous code, side by side (scripts/bench/selection_fastpath.py).
# CPU fallback: the same sections on the playground model (the issue's CPU targets: process clock, one
#      thread), the attention bench at 7B heads in fp32, the playground's throughput; titled a CPU run.
# Writes $OUT/gpu_suite.md (and the raw json / md / log beside it).
# On a machine with no package index whose Python lacks some of the project's imports:
# WHEELS=DIR (wheels made by scripts/bench/gpu_wheels.sh) installs them into a temporary --target folder
# put on PYTHONPATH; the machine's own Python is left as it is.
set -u
OUT=${OUT:-runs/gpu_suite}
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, whether it is pip-installed there or not
if [ -n "${WHEELS:-}" ]; then
  ls "$WHEELS"/*.whl > /dev/null 2>&1 || { echo "gpu_suite: WHEELS=$WHEELS holds no .whl file" >&2; exit 2; }
  SITE=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    || { echo "gpu_suite: could not install the wheels in $WHEELS" >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# every module the sections import, so a missing package stops the suite here, in one line, not in each section
if ! err=$($PY -c "import torch, transformers, llava_restore.analysis.efficiency, llava_restore.eval.generate" 2>&1); then
  echo "gpu_suite: '$PY' cannot import what the suite needs: $(printf '%s' "$err" | tail -1)" >&2
  echo "  activate the project's venv (. .venv/bin/activate), set PYTHON=/path/to/python, or, on a machine" \
       "without a package index, make wheels with scripts/bench/gpu_wheels.sh and pass WHEELS=.whl" >&2
  exit 2
fi
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || MODE=cpu
mkdir -p "$OUT"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
METHODS=divprune,vispruner,holov
NVIS=64,128,192
run() { echo; echo "### $*"; local t0=$SECONDS; "$@" 2>&1 | grep -v "Loading weights\|warnings.warn\|UserWarning\|USDT:"; echo "($((SECONDS - t0)) s)"; }
T0=$SECONDS
{
  echo "mode: $MODE; $(date -u +%Y-%m-%dT%H:%MZ); git $(git rev-parse --short HEAD 2>/dev/null)"
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  if [ "$MODE" = gpu ]; then
    nvidia-smi -L
    run $PY -m llava_restore.analysis.efficiency --shape llava-7b --device cuda --dtype bfloat16 \
        --methods $METHODS --n-vis $NVIS --repeats 15 --warmup 3 --out "$OUT/efficiency"
    run $PY scripts/bench/attention.py --device cuda --dtype bfloat16 --shapes 7b \
        --kernels auto no-cudnn efficient cudnn --repeats 50 --json "$OUT/attention.json"
    run $PY scripts/bench/throughput.py --device cuda --dtype bfloat16 --batch-sizes 1 8 16 --n 32 \
        --new-tokens 16 --json "$OUT/throughput.json"
    run $PY scripts/bench/selection_fastpath.py --device cuda --batch-sizes 1 8 --repeats 20 --json "$OUT/selection.json"
    GQA=playground/data/eval/gqa/llava_gqa_testdev_balanced.jsonl
    if [ -f "$GQA" ] || timeout 150 $PY -m llava_restore.playground build > "$OUT/playground_build.log" 2>&1; then
      run $PY scripts/bench/eval_throughput.py --device cuda --n 128 --batch-sizes 1 8 16 --json "$OUT/eval_throughput.json"
    else
      echo "playground question set not built in time: real-eval-core throughput skipped"
    fi
  else
    Q=playground/data/eval/gqa
    EFF_SRC=(--synthetic-prompt)
    [ -f "$Q/llava_gqa_testdev_balanced.jsonl" ] && EFF_SRC=(--question-file "$Q/llava_gqa_testdev_balanced.jsonl" --image-folder "$Q/data/images")
    run $PY -m llava_restore.analysis.efficiency --model-path playground/cache/llava-playground "${EFF_SRC[@]}" \
        --methods $METHODS --n-vis $NVIS --repeats 20 --threads 1 --clock process --out "$OUT/efficiency"
    run $PY scripts/bench/attention.py --device cpu --dtype float32 --shapes 7b --kernels auto --repeats 5 \
        --threads 1 --json "$OUT/attention.json"
    run $PY scripts/bench/throughput.py --model-path playground/cache/llava-playground --batch-sizes 1 8 16 --n 32 \
        --new-tokens 8 --threads 1 --json "$OUT/throughput.json"
    run $PY scripts/bench/selection_fastpath.py --device cpu --threads 1 --dim 128 --vis-dim 64 --batch-sizes 1 8 \
        --repeats 20 --json "$OUT/selection.json"
  fi
  echo; echo "suite: $((SECONDS - T0)) s"
} | tee "$OUT/gpu_suite.log"
$PY scripts/bench/gpu_suite_report.py "$OUT" --mode "$MODE"
