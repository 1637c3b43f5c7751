#!/usr/bin/env bash
# Set up and run the test suite (unit tests on tiny random models + a few integration tests on real MiniLM).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_postgres.sh  # the tuning workers' PostgreSQL test (tests/test_tune.py)
.venv/bin/python -m amlx.assets fetch amlx:minilm
bash scripts/install_chromium.sh  # the report's browser test (tests/test_report_browser.py) needs chromium
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
