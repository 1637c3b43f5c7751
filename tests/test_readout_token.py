"""benchmarks/readout_token.py: where a method's top-k% tokens sit, counted on hand-made records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_benchmark


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_last_token_share_and_relative_position_follow_the_metrics_ranking(tmp_path):
    mod = load_benchmark("readout_token")
    recs = [
        # 10 attributable tokens → top 2; the last (index 9) is top-1, index 4 second: rel positions 1.0, 4/9
        {"attributable": [1] * 10, "scores": [0, 0, 0, 0, 0.5, 0, 0, 0, 0, 0.9]},
        # a special token first (not attributable); 5 attributable → top 1 = attributable index 0 (tie → earlier)
        {"attributable": [0, 1, 1, 1, 1, 1], "scores": [9, 0.2, 0.2, 0.1, 0.0, 0.2]},
        # 4 attributable tokens: ⌊4·0.2⌋ = 0 tokens in the top: counted as an example, never a hit
        {"attributable": [1, 1, 1, 1], "scores": [0, 0, 0, 1]},
        # nothing attributable: skipped
        {"attributable": [0, 0], "scores": [0, 0]},
    ]
    share, rel, n = mod.positions(_write(tmp_path / "m.jsonl", recs), 20)
    assert n == 3
    assert share == pytest.approx(1 / 3)
    assert rel == pytest.approx((1.0 + 4 / 9 + 0.0) / 3)
    share50, _, _ = mod.positions(_write(tmp_path / "m.jsonl", recs), 50)
    assert share50 == pytest.approx(2 / 3)  # 50%: the third record's top 2 includes its last token
