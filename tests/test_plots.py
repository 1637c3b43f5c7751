"""PNG plots next to results files: bars with intervals per metric and method; the cost/quality frontier."""

from __future__ import annotations

import numpy as np
from PIL import Image

from amlx import metrics as metric_registry
from amlx.plots import plot_results
from amlx.results import write_results

ROWS = [{"method": m, "variant": "", "metric": k, "mean": mean, "ci95": 0.01, "n": 10, "sec_per_example": sec}
        for m, sec, base in (("random", 0.001, 0.1), ("gradient_x_input", 0.01, 0.3), ("faml", 1.0, 0.5))
        for k, mean in (("comp", base), ("suff", 0.4 - base / 2))]  # fmt: skip


def decoded(path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def test_every_results_file_gets_a_png_that_decodes(tmp_path):
    write_results("bars", ROWS, {"n": 10}, directory=tmp_path, direction=metric_registry.direction)
    pixels = decoded(tmp_path / "bars.png")
    assert pixels.shape[0] > 100 and pixels.shape[1] > 300
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # bars and text, not a blank canvas


def test_a_leaderboard_gets_the_seconds_vs_quality_scatter(tmp_path):
    record = {"name": "leaderboard-tiny", "rows": ROWS}
    bars = plot_results({**record, "name": "tiny"}, tmp_path / "bars.png")
    frontier = plot_results(record, tmp_path / "leaderboard-tiny.png")
    assert frontier is not None and decoded(frontier).shape[1] > 300
    assert not np.array_equal(decoded(bars)[:200, :200], decoded(frontier)[:200, :200])


def test_a_record_without_numeric_means_writes_no_plot(tmp_path):
    assert plot_results({"name": "x", "rows": [{"method": "m", "metric": "k", "mean": None}]}, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
