"""Shared fixtures: tiny explained models (see tests/tiny.py), built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `from tests.tiny import ...` works from any test file, whatever directory pytest was started in
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.tiny import tiny_explained  # noqa: E402


@pytest.fixture(scope="session")
def explained():
    """``explained(arch, kind)`` → a shared tiny ExplainedModel with default options; do not mutate it."""
    cache = {}

    def get(arch: str, kind: str):
        if (arch, kind) not in cache:
            cache[arch, kind] = tiny_explained(arch, kind)
        return cache[arch, kind]

    return get
