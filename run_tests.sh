#!/usr/bin/env bash
# The README's test command: bootstrap .venv on first use, then run the test suite (extra args go to pytest).
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
bootstrap
cd "$ROOT"
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest "$@"
