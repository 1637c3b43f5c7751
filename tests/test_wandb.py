"""W&B: offline runs (no network) in a temporary directory, read back from their ``.wandb`` files.

``amlx.tuning.wandb_runs.read_run`` parses an offline run's transaction log; these tests check it against values
logged by hand, then check that every tuning trial is a run grouped by its study with its configuration, its
metric curve and its final scores — the same numbers the Optuna study stored — and that a pAML run and every
trial log their validation maps as a ``wandb.Table`` and an HTML view, read back from the run's files.
"""

from __future__ import annotations

import json
import os

import numpy as np
import optuna
import pytest
import wandb

from amlx import render
from amlx.cli import wandb_offline_without_key
from amlx.data import TextClassificationData
from amlx.methods.aml import PAML
from amlx.tuning import Tuner, offline_runs, read_run
from amlx.wandb_media import COLUMNS
from tests.test_aml_training import save_tiny_assets
from tests.test_tune import tiny_fit_config, tune_options

TABLE = "val/comp_attributions"  # MetricValidation("comp")'s table; its HTML view is TABLE + "_html"
N_VAL = 4  # tiny_fit_config's MetricValidation n_examples (all of them go to the table: log_examples is 8)


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
    import subprocess
    import sys

    import amlx.cli

    monkeypatch.delenv("WANDB_MODE")
    # a fresh interpreter imports amlx.callbacks (reloading it here would leave other tests' classes stale)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    code = "import os, amlx.callbacks; print(os.environ.get('WANDB_MODE', 'unset'))"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "unset"  # fmt: skip
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


def validation_texts(assets: dict) -> list[str]:
    """The texts MetricValidation scores in tiny_fit_config's runs (its data module's first validation rows)."""
    dm = TextClassificationData(dataset=assets["data"], val_size=8, test_size=4, seed=0)
    return dm.split("val")["text"][:N_VAL]


def tables(run, key: str = TABLE) -> list[dict]:
    return [json.loads(p.read_text()) for p in run.media(key)]


def test_a_paml_run_logs_each_validations_maps_as_a_wandb_table_and_an_html_view(tmp_path, monkeypatch):
    from amlx.cli import main

    assets = save_tiny_assets(tmp_path / "assets")
    fit_config = tiny_fit_config(assets, tmp_path / "paml_tiny.yaml")  # the pAML config, its WandbLogger included
    monkeypatch.chdir(tmp_path)  # the config's loggers write under runs/
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path / "cache"))  # where MetricCheckpoint exports the best checkpoint
    cli = main(["fit", "--config", str(fit_config)])
    step = cli.trainer.global_step
    wandb.run.finish()
    (run,) = offline_runs(tmp_path / "runs", wait_s=60)
    logged = tables(run)
    assert len(logged) == len(run.curve("val/comp")) == 2  # one table per validation (2 epochs)
    last = logged[-1]
    assert last["columns"] == [*COLUMNS, "comp"]
    # the last validation saw the final weights: the attributor's maps now are the ones in the last table
    texts = validation_texts(assets)
    records = PAML(attributor=cli.model, internal_batch_size=4).attribute(texts, cli.model.explained)
    assert [row[0] for row in last["data"]] == ["0", "1", "2", "3"] and [row[1] for row in last["data"]] == texts
    for row, r in zip(last["data"], records):
        assert row[2] == "paml/pretrained" and row[3] == r.target_label and row[4] == r.words
        assert row[5] == pytest.approx(r.word_scores().tolist(), abs=1e-6)
    assert np.mean([row[6] for row in last["data"]]) == pytest.approx(run.curve("val/comp")[-1], abs=1e-6)
    assert run.summary[f"{TABLE}/path"] == str(run.media(TABLE)[-1].relative_to(run.path.parent / "files"))
    pages = [p.read_text() for p in run.media(TABLE + "_html")]
    assert len(pages) == 2 and pages[-1] == render.to_html(records, title=f"{TABLE} at step {step}")


def test_every_trial_is_an_offline_wandb_run_grouped_by_study_with_its_config_curve_and_final_scores(tmp_path):
    assets = save_tiny_assets(tmp_path / "assets")
    fit_config = tiny_fit_config(assets, tmp_path / "paml_tiny.yaml")
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
        logged = tables(run)  # each validation's maps, the metric of each example, their mean = val/comp
        assert len(logged) == len(run.curve("val/comp")) and len(run.media(TABLE + "_html")) == len(logged)
        for table, value in zip(logged, run.curve("val/comp")):
            assert [row[1] for row in table["data"]] == validation_texts(assets)
            assert np.mean([row[-1] for row in table["data"]]) == pytest.approx(value, abs=1e-6)


def test_wandb_off_logs_no_run(tmp_path):
    fit_config = tiny_fit_config(save_tiny_assets(tmp_path / "assets"), tmp_path / "paml_tiny.yaml")
    Tuner(**tune_options(tmp_path, fit_config, n_trials=1, wandb="off", heartbeat_interval=None)).run()
    assert (tmp_path / "runs" / "tiny-comp" / "trial_0000" / "metrics.csv").is_file()
    assert not (tmp_path / "runs" / "tiny-comp" / "wandb").exists()
