#!/usr/bin/env bash
# The test suite, self-sufficient on a fresh machine: sets up .venv, then runs pytest.
# Tests marked `slurm` run only where scripts/slurm/local_cluster.sh can start a cluster.
# The lmms-eval plug-in's tests run in their own venv, .venv-lmms (torch 2.14.1 + torchvision):
# scripts/setup_lmms_env.sh makes it (~3-4.5 min here) or reuses it, and
# tests/test_lmms_eval_plugin.py runs itself there from the core suite (it fails if the venv is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_lmms_env.sh
. .venv/bin/activate
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
set +e
python -m pytest -q -ra --durations=15 "$@"
rc=$?
set -e
echo "test suite wall time: $(( $(date +%s) - start )) s"
exit $rc
