#!/usr/bin/env bash
# The test suite, self-sufficient on a fresh machine: sets up .venv, then runs pytest.
# Tests marked `slurm` run only where scripts/slurm/local_cluster.sh can start a cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
set +e
python -m pytest -q -ra --durations=15 "$@"
rc=$?
set -e
echo "test suite wall time: $(( $(date +%s) - start )) s"
exit $rc
