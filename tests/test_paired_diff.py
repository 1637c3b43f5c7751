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


def test_best_baseline_is_taken_among_the_tables_finished_honest_rows(tmp_path, monkeypatch):
    """A method still running in the folder (its scores file has fewer examples, no table row) and a row that selects
    on the test metric (oracle-selected, Solvex's "searched for") are never the best baseline of the margin or
    paired tables, even with the best mean; a label's rows are read from every rank's file."""
    import json

    from amlx import results

    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    out = tmp_path / "run"
    (out / "scores").mkdir(parents=True)
    comp = {"random": [0.1, 0.1], "occlusion": [0.3, 0.3], "rpi_oracle_comp": [0.6, 0.6], "solvex_comp": [0.8, 0.8],
            "paml_x": [0.2, 0.4], "sig": [0.9]}  # fmt: skip
    for label, values in comp.items():
        lines = [json.dumps({"index": i, "comp": v, "seconds": 1.0}) for i, v in enumerate(values)]
        if label == "occlusion":  # as a distributed evaluate leaves it: example 1 in rank 1's file
            (out / "scores" / "occlusion.rank1.jsonl").write_text(lines.pop() + "\n")
        (out / "scores" / f"{label}.jsonl").write_text("\n".join(lines) + "\n")
    variants = {"random": "seed0", "occlusion": "prob", "rpi_oracle_comp": "R8n20 oracle-selected:comp [rpi_oracle_comp]",
                "solvex_comp": "searched for comp, B=10 [solvex_comp]", "paml_x": "pretrained [paml_x]"}  # fmt: skip
    rows = [{"method": label.split("_")[0], "label": label, "variant": v, "metric": "comp", "mean": 0.0, "n": 2}
            for label, v in variants.items()]  # fmt: skip
    (out / "table.json").write_text(json.dumps({"command": "evaluate", "setup": {}, "rows": rows}))

    table, scores, references = load_benchmark("paired_diff").table_scores(out)
    assert set(scores) == set(variants) and references == {"rpi_oracle_comp", "solvex_comp"}  # no sig: not in the table
    assert sorted(scores["occlusion"]) == [0, 1]  # both ranks' files
    margin = json.loads(load_benchmark("margin_ratio").main([str(out), "--name", "m"]).with_suffix(".json").read_text())
    assert [(r["method"], r["best_baseline"]) for r in margin["rows"]] == [("paml_x", "occlusion")]
    assert math.isclose(margin["rows"][0]["mean"], 1.0)  # paml_x's mean 0.3 = occlusion's: level with it
    paired = load_benchmark("paired_diff").main([str(out), "--name", "p", "--reference", "best"])
    paired = json.loads(paired.with_suffix(".json").read_text())
    assert paired["setup"]["best_baseline"] == {"comp": "occlusion"}
    assert {r["method"] for r in paired["rows"]} == set(variants) - {"occlusion"}
