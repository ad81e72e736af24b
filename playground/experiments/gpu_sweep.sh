#!/usr/bin/env bash
# Exploratory, for a lent GPU machine (not part of the package): the #5 throughput check, then
# several playground training recipes side by side with GQA-/POPE-style accuracy every 500 steps.
#   OUT=/tmp/out SWEEP_SECONDS=360 bash playground/experiments/gpu_sweep.sh
set -u
OUT=${OUT:-runs/gpu_sweep}; mkdir -p "$OUT"
SWEEP_SECONDS=${SWEEP_SECONDS:-360}
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
. playground/experiments/gpu_prelude.sh
{
  python3 scripts/bench/eval_throughput.py --device cuda --n 128 --batch-sizes 1 8
  python3 scripts/bench/eval_throughput.py --device cuda --n 128 --batch-sizes 1 8 --reduction divprune --n-vis 64 --restore
} 2>&1 | grep -v WARNING | tee "$OUT/throughput.txt"
echo "throughput done at $(( $(date +%s) - t0 )) s"
common="device=cuda threads=2 workers=2 steps=4000 log_every=50"
run() { name=$1; shift
  timeout "$SWEEP_SECONDS" python3 playground/experiments/sweep.py name=$name eval_every=500 -- $common "$@" > "$OUT/$name.log" 2>&1 & }
run A
run B decoder_init_std=0.09
run C decoder_init_std=0.09 lr=1e-3
run D decoder_init_std=0.0625 model.hidden=256 model.heads=8 model.kv_heads=8 model.intermediate=768
run E decoder_init_std=0.09 model.layers=2
run F decoder_init_std=0.09 vision_pretrain_steps=600
run G decoder_init_std=0.09 train_reduction.method=divprune train_reduction.n_vis=144 train_reduction.position_mode=retain full_token_steps=500
run H decoder_init_std=0.09 batch_size=32 lr=3e-3
wait
echo "sweep done at $(( $(date +%s) - t0 )) s"
grep -h "^EVAL\|^DONE\|Error\|error" "$OUT"/[A-H].log | cut -c1-600 | tee "$OUT/evals.txt"
for f in "$OUT"/[A-H].log; do echo "== $f"; grep -v "^EVAL" "$f" | tail -3 | cut -c1-300; done
