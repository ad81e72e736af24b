#!/usr/bin/env bash
# Exploratory, for a lent GPU machine (not part of the package): how far does the playground's
# stage-2 recipe go with more steps than the CPU budget allows, and do a few variants learn faster?
# Every run starts from the committed checkpoint's stage-1 ViT (vision_init), so only stage 2 runs.
#   OUT=/tmp/out SWEEP_SECONDS=480 bash playground/experiments/gpu_horizon.sh
set -u
OUT=${OUT:-runs/gpu_horizon}; mkdir -p "$OUT"
SWEEP_SECONDS=${SWEEP_SECONDS:-480}
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
. playground/experiments/gpu_prelude.sh
common="device=cuda threads=1 workers=1 steps=3000 foreground_steps=2700 log_every=50 vision_init=playground/cache/llava-playground/vision_tower"
run() { name=$1; shift
  timeout "$SWEEP_SECONDS" python3 playground/experiments/sweep.py name=$name eval_every=250 -- $common "$@" > "$OUT/$name.log" 2>&1 & }
run A                                                   # the committed recipe, stretched to 3,000 steps
run B model.hidden=256 model.heads=8 model.kv_heads=8 model.intermediate=768 decoder_init_std=0.0625
run C foreground_steps=0                                # all 576 tokens throughout
run D batch_size=32 lr=3e-3
run E model.layers=6
run F model.heads=8 model.kv_heads=8                    # head_dim 16
run G aux_weight=0                                      # without the hop-1 aid
wait
echo "sweep done at $(( $(date +%s) - t0 )) s"
grep -h "^EVAL\|^DONE\|Error\|error" "$OUT"/[A-G].log | cut -c1-700 | tee "$OUT/evals.txt"
for f in "$OUT"/[A-G].log; do echo "== $f"; grep "^STEP" "$f" | tail -1; grep -v "^EVAL\|^STEP" "$f" | tail -2 | cut -c1-300; done
