#!/usr/bin/env bash
# Selection probes side by side on one GPU (run from the repo root): oracle tokens, "What color is
# the <shape>? / What shape is the <colour> object?", thousands of steps -- does selection appear
# without aids, and how much sooner with a distractor curriculum (DSTEP) or AUX?
#   OUT=/tmp/sel SECS=200 bash playground/experiments/gpu_select.sh
set -u
OUT=${OUT:-runs/gpu_select}; SECS=${SECS:-200}; mkdir -p "$OUT"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 FEATS=none ORACLE=1 Q=select DEV=cuda T=2 STEPS=100000
python3 -m llava_restore.playground build --no-progress > "$OUT/build.log" 2>&1 || { tail -5 "$OUT/build.log"; exit 1; }
P=playground/experiments/selection_probe.py
FG=1 timeout "$SECS" python3 $P > "$OUT/fg.txt" 2>&1 &
FG=1 DSTEP=150 timeout "$SECS" python3 $P > "$OUT/fg_d150.txt" 2>&1 &
FG=1 DSTEP=50 timeout "$SECS" python3 $P > "$OUT/fg_d50.txt" 2>&1 &
FG=1 AUX=1 timeout "$SECS" python3 $P > "$OUT/fg_aux.txt" 2>&1 &
timeout "$SECS" python3 $P > "$OUT/all576.txt" 2>&1 &
FG=1 DSTEP=150 HEADS=8 timeout "$SECS" python3 $P > "$OUT/fg_d150_h8.txt" 2>&1 &
wait
for f in "$OUT"/*.txt; do
  echo "== $(basename "$f" .txt)"; grep "^step" "$f" | awk 'NR % 10 == 0' | cut -c1-80; grep -m3 "Error\|error" "$f"
done
