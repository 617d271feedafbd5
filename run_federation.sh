#!/usr/bin/env bash
# The README's main command. Bootstraps .venv on first use, prepares the embedded default dataset and runs
# the centralized SRM pipeline on it (the federation replaces this step when it lands). Options go to
# `lsc4rec srm train` (see `lsc4rec srm train --help`).
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
bootstrap
cd "$ROOT"
"$VENV/bin/lsc4rec" data prepare --dataset "${DATASET:-ml-latest-small}"
exec "$VENV/bin/lsc4rec" srm train --dataset "${DATASET:-ml-latest-small}" "$@"
