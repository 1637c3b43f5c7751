#!/usr/bin/env bash
# Install Debian's headless-capable chromium for the report's browser test (tests/test_report_browser.py).
# Idempotent: does nothing when a chromium is on PATH; installs only as root with apt-get available.
set -euo pipefail
for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[amlx] chromium not found and cannot be installed here (needs root and apt-get);" \
       "install it (e.g. sudo apt-get install chromium) to run tests/test_report_browser.py" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# apt-get waits for a lock held by another apt process instead of failing at once; a failed install does not
# stop the test run: the browser test then fails under CI with the message above
if apt-get -o DPkg::Lock::Timeout=600 update -qq &&
   apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
  echo "[amlx] installed $(chromium --version 2>/dev/null || echo chromium)"
else
  echo "[amlx] apt-get could not install chromium; tests/test_report_browser.py needs it" >&2
fi
