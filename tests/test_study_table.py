"""benchmarks/study_table.py: a study's complete trials become results rows, in order, with their parameters."""

from __future__ import annotations

import optuna

from tests.scripts import load_benchmark


def test_complete_trials_only_with_objective_and_parameters():
    mod = load_benchmark("study_table")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    study.enqueue_trial({"lambda_a": 1.0})
    study.optimize(lambda t: -2 * t.suggest_float("lambda_a", 0, 1), n_trials=1)

    def fails(t):
        t.suggest_float("lambda_a", 0, 1)
        raise RuntimeError("out of memory")

    study.optimize(fails, n_trials=1, catch=(RuntimeError,))
    study.enqueue_trial({"lambda_a": 0.25})
    study.optimize(lambda t: -2 * t.suggest_float("lambda_a", 0, 1), n_trials=1)
    rows = mod.study_rows(study, "log_odds", 100)
    assert [r["variant"] for r in rows] == ["trial_0", "trial_2"]  # the failed trial 1 is left out
    assert [r["mean"] for r in rows] == [-2.0, -0.5]
    assert [r["lambda_a"] for r in rows] == [1.0, 0.25]
    assert all(r["metric"] == "log_odds" and r["n"] == 100 and r["method"] == "paml" for r in rows)
