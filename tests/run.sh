#!/usr/bin/env bash
# Sets up what the tests need (system packages, .venv with fieldgate[dev]) and runs them:
# ruff, mypy (strict on gateway/ and drivers/), then pytest. Extra arguments go to pytest.
#   ./tests/run.sh                  everything
#   ./tests/run.sh -k config -x     a subset
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(deploy/setup-env.sh --dev | tail -n 1)
export PATH="$venv/bin:$PATH"

echo "== ruff"
ruff check gateway drivers tests deploy
ruff format --check gateway drivers tests deploy
echo "== mypy"
mypy
echo "== pytest"
exec pytest "$@"
