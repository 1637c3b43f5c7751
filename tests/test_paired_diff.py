"""benchmarks/paired_diff.py: paired differences and their verdicts, on hand-made per-example scores."""

from __future__ import annotations

import math

from tests.scripts import load_benchmark


def test_paired_difference_mean_interval_and_common_examples():
    mod = load_benchmark("paired_diff")
    a = {0: {"comp": 0.5}, 1: {"comp": 0.7}, 2: {"comp": 0.2}, 3: {"comp": 0.9}}  # example 3 not in b
    b = {0: {"comp": 0.4}, 1: {"comp": 0.4}, 2: {"comp": 0.2}}
    mean, ci, n = mod.paired(a, b, "comp")
    d = [0.1, 0.3, 0.0]
    sd = math.sqrt(sum((x - 0.4 / 3) ** 2 for x in d) / 2)
    assert n == 3
    assert math.isclose(mean, 0.4 / 3)
    assert math.isclose(ci, 1.96 * sd / math.sqrt(3))


def test_verdict_follows_the_metric_direction():
    mod = load_benchmark("paired_diff")
    assert mod.verdict(0.05, 0.02, "higher") == "better"  # [0.03, 0.07] above 0: better for comp
    assert mod.verdict(0.05, 0.02, "lower") == "worse"  # worse for suff
    assert mod.verdict(-0.05, 0.02, "lower") == "better"
    assert mod.verdict(-0.05, 0.09, "lower") == "undecided"  # straddles 0
    assert mod.verdict(0.05, float("nan"), "higher") == "undecided"
