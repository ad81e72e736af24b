#!/usr/bin/env bash
# Wheels for a GPU machine with no package index (the workplace's lent H200, or an offline cluster node):
# the packages the benchmark suite imports that such an image may lack, downloaded here into one folder.
#   bash scripts/bench/gpu_wheels.sh [DIR]          # default DIR: .whl (ignored by git)
# then, there:  WHEELS=.whl bash scripts/bench/gpu_suite.sh   (the suite installs them into a temporary
# --target folder and puts it on PYTHONPATH; nothing is installed into the machine's own Python).
# The list: the project's runtime imports that the lent H200 image does not hold (its package list as read
# on 2026-11-17: torch, transformers, tokenizers, safetensors, peft, einops, tensorboard, numpy, pillow,
# tqdm, sentencepiece and PyYAML are there; omegaconf is not).
# Versions: the ones this checkout's venv runs, so the GPU run uses what the tests used.
set -eu
DIR=${1:-.whl}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null; }
PKGS=()
for name in omegaconf; do
  v=$(version "$name") || { echo "gpu_wheels: '$name' is not installed in $PY; run scripts/setup_env.sh first" >&2; exit 2; }
  PKGS+=("$name==$v")
done
mkdir -p "$DIR"
# pure-Python wheels, so any CPython 3 / platform tag of the target matches; --no-deps: the rest is there
$PY -m pip download -q --no-deps --only-binary=:all: -d "$DIR" "${PKGS[@]}"
ls -1 "$DIR"
