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


def test_best_baseline_follows_the_direction_and_skips_learned_labels():
    mod = load_benchmark("paired_diff")
    scores = {
        "random": {0: {"comp": 0.1, "suff": 0.3}, 1: {"comp": 0.1, "suff": 0.3}},
        "occlusion": {0: {"comp": 0.4, "suff": 0.0}, 1: {"comp": 0.2, "suff": 0.1}},  # comp 0.3, suff 0.05
        "kernel_shap": {0: {"comp": 0.35, "suff": 0.02}, 1: {"comp": 0.35, "suff": 0.0}},  # comp 0.35, suff 0.01
        "paml_x": {0: {"comp": 0.9, "suff": -1.0}, 1: {"comp": 0.9, "suff": -1.0}},  # learned: never the reference
    }
    assert mod.best_baseline(scores, "comp", ("paml", "faml")) == "kernel_shap"
    assert mod.best_baseline(scores, "suff", ("paml", "faml")) == "kernel_shap"
    scores["kernel_shap"][1]["suff"] = 0.2  # suff mean 0.11: occlusion (0.05) is now best (lower is better)
    assert mod.best_baseline(scores, "suff", ("paml", "faml")) == "occlusion"


def test_margin_ratio_is_the_share_of_the_best_baselines_margin_over_random():
    mod = load_benchmark("margin_ratio")
    assert math.isclose(mod.margin_ratio(0.3, 0.4, 0.1), 2 / 3)  # comp: learned 0.3, best 0.4, random 0.1
    assert math.isclose(mod.margin_ratio(-0.8, -1.0, -0.2), 0.75)  # log-odds (lower is better): same formula
    assert math.isclose(mod.margin_ratio(-1.2, -1.0, -0.2), 1.25)  # beyond the best baseline
    assert math.isnan(mod.margin_ratio(0.5, 0.1, 0.1))


def test_val_curve_reads_every_epochs_registered_val_metrics(tmp_path):
    mod = load_benchmark("val_curve")
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,val/comp,val/loss,val/suff\n0,9,1.5,,,\n0,9,,0.25,0.0,0.1\n1,19,,0.3,0.0,0.05\n")
    rows = mod.epoch_rows(csv, "run")
    assert [(r["variant"], r["metric"], r["mean"]) for r in rows] == [
        ("epoch 0", "comp", 0.25), ("epoch 0", "suff", 0.1), ("epoch 1", "comp", 0.3), ("epoch 1", "suff", 0.05)
    ]  # val/loss is not a registered metric: left out
