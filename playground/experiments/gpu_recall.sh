#!/usr/bin/env bash
# Exploratory, for a lent GPU machine: when (if ever) does the playground decoder learn the conjunctive
# text recall "Is there a <colour> <shape>?" over a listed scene (recall_toy.py), with more steps than the CPU allows?
#   OUT=/tmp/out SECONDS_EACH=200 bash playground/experiments/gpu_recall.sh
set -u
OUT=${OUT:-runs/gpu_recall}; mkdir -p "$OUT"
S=${SECONDS_EACH:-200}
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 SHORT=1 INIT=0.09 STEPS=100000 DEV=cuda T=1
. playground/experiments/gpu_prelude.sh
run() { name=$1; shift; env "$@" timeout "$S" python3 playground/experiments/recall_toy.py > "$OUT/$name.log" 2>&1 & }
run a K=1
run b K=8
run c K=8 LR=1e-3
run d K=8 HEADS=8
run e K=8 LAYERS=2
run f K=8 HIDDEN=256 INIT=0.0625
run g K=1 COLOR=1
wait
for f in "$OUT"/[a-g].log; do echo "== $f"; grep -v WARN "$f" | tail -n 20 | tr '\n' ';' ; echo; done
