#!/usr/bin/env bash
# Create .venv/ at the repo root and install amlx with its dev extra (idempotent).
# CPU machines get torch==2.13.0 (the CPU build); a GPU user installs their CUDA torch into .venv first
# (PyTorch's install instructions, run with .venv/bin/pip) and this keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.amlx-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && .venv/bin/python -c "import amlx, torch, transformers, lightning" 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
touch "$stamp"
