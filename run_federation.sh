#!/usr/bin/env bash
# The README's main command: the whole federation on one machine, end to end.
#
#   ./run_federation.sh [--dataset ml-latest-small|beauty|toys|PATH] [--srm sasrec|gru4rec|din] [--rounds R]
#                       [--nodes N (0 = one user per node)] [--fraction F] [--lag L] [--k K] [--budget B]
#                       [--seed S] [--out DIR] [--resume RUN_DIR] [--engine transformers|vllm] [--vllm-eager]
#                       [--runtime simulation|deployment] [--config FILE] [--data-dir DIR] [--set key=value ...]
#
# Bootstraps .venv on first use, prepares the data, trains the cloud LLM unless a checkpoint for the same data
# and settings is cached, starts the candidate service, runs the federation (`flwr run`, one supernode per node,
# simulated or, with --runtime deployment, as processes), stops every process it started and prints the report.
# See `lsc4rec federate --help`.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
# Help never installs anything: the full option list when .venv exists, else this file's usage lines.
for arg in "$@"; do
  if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
    [ -x "$VENV/bin/lsc4rec" ] && exec "$VENV/bin/lsc4rec" federate --help
    sed -n '2,12p' "$0" | cut -c3-
    exit 0
  fi
done
bootstrap
# No cd: relative paths (--dataset PATH, --out, --resume) are the caller's, as with any command.
exec "$VENV/bin/lsc4rec" federate "$@"
