#!/usr/bin/env bash
# Create the peer venv of the benchmarks: .bench-venv with mergekit 0.1.5, LM_Cocktail 0.0.4 and semantic-router 1.1.1.
# Idempotent: does nothing when the venv already has the pinned versions.
# torch is installed FIRST and pinned (torch==2.13.0 resolves to the local CPU wheel here), and kept
# pinned through a constraints file while installing the peers, so pip can never pull the multi-GB
# CUDA build as a dependency.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench-venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PEERS=("mergekit==0.1.5" "LM_Cocktail==0.0.4" "semantic-router==1.1.1")
PY="$VENV/bin/python"

have_peers() {
  [ -x "$PY" ] && "$PY" - <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
want = {"mergekit": "0.1.5", "LM_Cocktail": "0.0.4", "semantic-router": "1.1.1"}
sys.exit(0 if all(version(k) == v for k, v in want.items()) else 1)
PYEOF
}

if have_peers && [ -x "$VENV/bin/mergekit-yaml" ]; then
  echo "[setup_peers] $VENV already has ${PEERS[*]}"
  exit 0
fi

echo "[setup_peers] creating/updating $VENV"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==$TORCH_VERSION"

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$CONSTRAINTS"
"$PY" -m pip install -q -c "$CONSTRAINTS" "${PEERS[@]}"

have_peers || { echo "[setup_peers] install finished but versions do not match ${PEERS[*]}" >&2; exit 1; }
"$PY" -c "import torch, mergekit; print('[setup_peers] ok: torch', torch.__version__, '| mergekit', __import__('importlib.metadata').metadata.version('mergekit'))"
