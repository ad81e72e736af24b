#!/usr/bin/env bash
# The README's main job, self-sufficient on a fresh machine (CPU is enough):
#   1. set up .venv and install the project;
#   2. build the playground data and get the playground mini-LLaVA (committed; trained if absent);
#   3. evaluate full tokens and DivPrune / VisPruner / HoloV at 64/128/192 tokens, with and
#      without RESTORE, on the playground GQA- and POPE-style sets (ablations/main.yaml);
#   4. print the table (accuracy, relative to full, prefill ms) and log to TensorBoard;
#   5. the playground's health check: random pruning with retained positions at 16/64/192 tokens
#      (ablations/health.yaml), the text-only prior and the blank-image accuracy.
# Rerunning skips the finished runs. OUT=runs/quickstart by default.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup_env.sh
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/quickstart}
MODEL=${MODEL:-playground/cache/llava-playground}

python -m llava_restore.playground build
if [ ! -f "$MODEL/config.json" ]; then
  echo "no playground checkpoint at $MODEL: training it (about 15-20 min on 2 CPU cores)"
  python -m llava_restore.playground train --out "$MODEL"
fi
# two runs at a time, one thread each: faster than one two-thread run on 2 cores
OMP_NUM_THREADS=1 python -m llava_restore.ablate ablations/main.yaml --benchmarks gqa,pope \
  --model-path "$MODEL" --out "$OUT" --parallel "${PARALLEL:-2}"
mkdir -p "$OUT"
# the controls (one process) beside the health grid's runs: the grid's last run leaves a core idle
OMP_NUM_THREADS=1 python -m llava_restore.playground controls --model-path "$MODEL" --out "$OUT/controls" \
  > "$OUT/controls.log" 2>&1 &
controls=$!
OMP_NUM_THREADS=1 python -m llava_restore.ablate ablations/health.yaml --benchmarks gqa \
  --model-path "$MODEL" --out "$OUT" --parallel "${PARALLEL:-2}"
wait "$controls" || { echo "the controls failed; see $OUT/controls.log" >&2; tail -n 5 "$OUT/controls.log" >&2; exit 1; }
echo
cat "$OUT/grids/main/summary.md"
echo
echo "Health check (random pruning, positions retained; accuracy must rise with the tokens kept):"
cat "$OUT/grids/health/summary.md"
echo
python -c "import json,sys; from llava_restore.playground.controls import summary; print(summary(json.load(open(sys.argv[1]))))" "$OUT/controls/controls.json"
echo
echo "TensorBoard: tensorboard --logdir $OUT/grids/main/tb    (plot: $OUT/grids/main/accuracy_vs_tokens.png)"
echo "quickstart wall time: $(( $(date +%s) - start )) s"
