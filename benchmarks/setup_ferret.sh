#!/usr/bin/env bash
# Create an isolated virtualenv with ferret-xai 0.4.2 for side-by-side speed comparisons.
#
# ferret-xai 0.4.2 pins transformers<5, captum<0.8, datasets<3 and numpy<2, so it cannot live in
# the project's own environment. This script builds benchmarks/peers/ferret-venv (git-ignored)
# with the CPU build of torch 2.13.0 taken from local disk, then ferret-xai, then pyarrow<17
# (newer pyarrow needs NumPy 2 and breaks `import datasets`, which ferret imports).
#
# Idempotent: if the venv exists and `import ferret` works there, it does nothing.
# Usage: bash benchmarks/setup_ferret.sh            (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/peers/ferret-venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import ferret" >/dev/null 2>&1; then
    echo "ferret venv already works: $VENV"
    exit 0
fi

mkdir -p "$HERE/peers"
"$PY" -m venv "$VENV"
VPY="$VENV/bin/python"

# Pin torch for every install in this script, so no later step can swap the CPU build for a
# CUDA build (which would also pull the nvidia-* wheels). This constraint file replaces any
# global pip constraint for these commands; it is stricter than the machine's torch cap anyway.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"

"$VPY" -m pip install --upgrade --quiet pip
# The CPU wheel lies in /opt/wheels (pip's find-links here); 2.13.0+cpu satisfies ==2.13.0.
"$VPY" -m pip install -c "$CONSTRAINTS" --find-links /opt/wheels "torch==2.13.0"
"$VPY" -m pip install -c "$CONSTRAINTS" "ferret-xai==0.4.2"
"$VPY" -m pip install -c "$CONSTRAINTS" "pyarrow<17"

# Refuse a CUDA torch: the comparison must run the CPU build.
"$VPY" - <<'EOF'
import torch
assert torch.version.cuda is None, f"CUDA torch build installed ({torch.__version__}); expected +cpu"
print("torch", torch.__version__)
EOF
if "$VPY" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "ERROR: nvidia-* packages were installed into $VENV" >&2
    exit 1
fi

HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VPY" -c "import ferret; from importlib.metadata import version; print('ferret-xai', version('ferret-xai'))"
echo "ferret venv ready: $VENV"
