#!/usr/bin/env bash
# The main job on the offline default: set up, fetch the offline assets, fine-tune the default classifier
# (once; cached under $AMLX_CACHE), then print its test accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python explain.py main --config configs/main.yaml "$@"
