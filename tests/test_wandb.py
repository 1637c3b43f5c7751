"""W&B: offline runs (no network) in a temporary directory, read back from their ``.wandb`` files.

``amlx.tuning.wandb_runs.read_run`` parses an offline run's transaction log; these tests check it against values
logged by hand, then check that every tuning trial is a run grouped by its study with its configuration, its
metric curve and its final scores — the same numbers the Optuna study stored.
"""

from __future__ import annotations

import os

import optuna
import pytest
import wandb

from amlx.cli import wandb_offline_without_key
from amlx.tuning import Tuner, offline_runs, read_run
from tests.test_aml_training import save_tiny_assets
from tests.test_tune import tiny_fit_config, tune_options


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    """No API key, no ~/.netrc, W&B's own folders in tmp: the amlx default must pick offline mode."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    wandb_offline_without_key()
    assert os.environ["WANDB_MODE"] == "offline"
    wandb.teardown()  # a W&B service that an earlier test started in this process has another environment
    yield
    wandb.teardown()


def test_importing_amlx_sets_no_wandb_mode_and_the_train_entry_point_does(monkeypatch):
    import importlib

    import amlx.callbacks
    import amlx.cli

    monkeypatch.delenv("WANDB_MODE")
    importlib.reload(amlx.callbacks)  # what `import amlx.callbacks` runs
    assert "WANDB_MODE" not in os.environ
    monkeypatch.setattr(amlx.cli, "AmlxCLI", lambda *args, **kwargs: None)  # train.py's main, without a fit
    amlx.cli.main([])
    assert os.environ["WANDB_MODE"] == "offline"


def test_an_offline_run_reads_back_with_its_config_history_summary_and_exit_code(tmp_path):
    run = wandb.init(project="amlx-test", dir=str(tmp_path), group="g", name="n", job_type="tune", tags=["suff"],
                     config={"lambda_p": 0.25, "nested": {"a": 1}})  # fmt: skip
    for step in range(3):
        run.log({"val/suff": 0.5 - 0.1 * step, "epoch": step})
    run.summary["long"] = "x" * 70_000  # one record over two 32 KiB blocks: first / middle / last chunks
    run.summary["final"] = 0.125
    run.finish(exit_code=0)
    (back,) = offline_runs(tmp_path, wait_s=60)  # W&B flushes the exit record just after finish()
    assert (back.name, back.group, back.job_type, back.tags, back.exit_code) == ("n", "g", "tune", ["suff"], 0)
    assert back.config["lambda_p"] == 0.25 and back.config["nested"] == {"a": 1}
    assert back.curve("val/suff") == pytest.approx([0.5, 0.4, 0.3])
    assert back.summary["final"] == 0.125 and back.summary["long"] == "x" * 70_000
    assert read_run(back.path).summary == back.summary  # the .wandb file itself reads the same


def test_every_trial_is_an_offline_wandb_run_grouped_by_study_with_its_config_curve_and_final_scores(tmp_path):
    fit_config = tiny_fit_config(save_tiny_assets(tmp_path / "assets"), tmp_path / "paml_tiny.yaml")
    opts = tune_options(tmp_path, fit_config, n_trials=2, wandb="auto", heartbeat_interval=None)
    Tuner(**opts).run()
    study = optuna.load_study(study_name="tiny-comp", storage=opts["storage"])
    runs = {r.config["trial"]: r for r in offline_runs(tmp_path / "runs" / "tiny-comp", wait_s=60)}
    assert sorted(runs) == [t.number for t in study.trials] == [0, 1]
    for t in study.trials:
        run = runs[t.number]
        assert run.group == "tiny-comp" and run.name == f"tiny-comp-trial_{t.number:04d}" and run.job_type == "tune"
        assert {k: run.config[k] for k in t.params} == t.params  # the sampled λ's
        assert run.config["lr"] == 3e-3 and run.config["explained"].endswith("explained")  # Lightning's hparams
        assert run.curve("val/comp") == pytest.approx([t.intermediate_values[s] for s in sorted(t.intermediate_values)])
        assert run.summary["tune/best_comp"] == pytest.approx(t.value)
        assert run.summary["tune/state"] == "COMPLETE" and run.exit_code == 0


def test_wandb_off_logs_no_run(tmp_path):
    fit_config = tiny_fit_config(save_tiny_assets(tmp_path / "assets"), tmp_path / "paml_tiny.yaml")
    Tuner(**tune_options(tmp_path, fit_config, n_trials=1, wandb="off", heartbeat_interval=None)).run()
    assert (tmp_path / "runs" / "tiny-comp" / "trial_0000" / "metrics.csv").is_file()
    assert not (tmp_path / "runs" / "tiny-comp" / "wandb").exists()
