#!/usr/bin/env bash
# Create .venv-lmms (if needed): the venv of the lmms-eval plug-in (llava_restore/integrations,
# tests/test_lmms_eval_plugin.py). lmms-eval 0.7.3 needs torchvision, and PyPI's torchvision does
# not import beside the core venv's CPU torch 2.13, so this venv gets the matching pair
# torch 2.14.1 + torchvision 0.29.1 (a CUDA build, ~5.5 GB, that runs on the CPU), then the project
# with its `lmms` extra. An existing venv is reused as is while its stamp (this pair and
# pyproject.toml) matches and it imports; otherwise pip brings it up to date. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-lmms
PAIR=(torch==2.14.1 torchvision==0.29.1)
STAMP="$VENV/.llava-restore-requirements"
want=$( { echo "${PAIR[*]}"; cat pyproject.toml; } | sha256sum | cut -d' ' -f1)
check() { "$VENV/bin/python" -c "import torchvision, lmms_eval, llava_restore.integrations.lmms_eval" >/dev/null 2>&1; }
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && check; then
  echo "$VENV: up to date"
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q "${PAIR[@]}"
"$VENV/bin/pip" install -q -e ".[lmms]"
check || { echo "$VENV: torchvision, lmms_eval or the plug-in does not import" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "$VENV: set up in $(( $(date +%s) - start )) s"
