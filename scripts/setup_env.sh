#!/usr/bin/env bash
# Create .venv (if needed) and install the project.  On a CPU-only machine torch==2.13.0 (CPU build)
# is installed first so pip does not pull a multi-GB CUDA wheel.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install -q "torch>=2.5,<2.14"; else pip install -q torch==2.13.0; fi
fi
pip install -q -e ".[dev]"
