#!/usr/bin/env bash
# The chaos soak on demand: 10 minutes by default (the 3-minute version runs in ./tests/run.sh).
#   tests/soak/run.sh                 10 minutes, a random seed (printed)
#   tests/soak/run.sh 30              30 minutes
#   FIELDGATE_SEED=42 tests/soak/run.sh 5    the same faults again
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=$(deploy/setup-env.sh --dev | tail -n 1)
export FIELDGATE_SOAK_MINUTES="${1:-10}"
exec "$venv/bin/pytest" tests/soak -x -q -s -p no:cacheprovider
