"""pAML through Lightning: MetricValidation logs val/<metric>, checkpoints follow the metric's direction, DDP runs.

A tiny RoBERTa classifier (the explained model) and a tiny BERT encoder (the attributor's backbone) are saved to a
temporary folder, so both load by path exactly as train.py loads amlx: names.
"""

from __future__ import annotations

import filecmp
import os
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from amlx.attributors import AMLAttributor
from amlx.callbacks import (
    MetricCheckpoint,
    MetricEarlyStopping,
    MetricValidation,
    monitor,
)
from amlx.cli import wandb_offline_without_key
from amlx.data import TextClassificationData
from amlx.evaluation import Evaluator
from amlx.models import ExplainedModel
from amlx.records import records_from_encoded
from tests.tiny import CORPUS, save_tiny_assets

N_VAL = 8


def datamodule(data: str) -> TextClassificationData:
    return TextClassificationData(dataset=data, val_size=N_VAL, test_size=4, batch_size=4, eval_batch_size=4, seed=0)


def trainer(**kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    return L.Trainer(**{**defaults, **kw})


def metric_of_attributor(att: AMLAttributor, texts: list[str], metric: str) -> float:
    """The mean metric of ``att``'s one-pass maps, computed without the callback or the registered methods."""
    explained = att.explained
    enc = explained.encode(texts)
    with torch.no_grad():
        probs = explained.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    recs = records_from_encoded(enc, explained.tokenizer, att.scores(enc), probs.argmax(-1), probs, explained.labels,
                                "paml", "pretrained")  # fmt: skip
    return float(np.mean(Evaluator(explained, [metric]).evaluate(recs)[metric]))


class Recorder(L.Callback):
    """The logged value of ``key`` after every validation."""

    def __init__(self, key: str) -> None:
        self.key, self.values = key, []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.values.append(float(trainer.callback_metrics[self.key]))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("aml-assets"))


@pytest.fixture(scope="module")
def fitted(assets, tmp_path_factory):
    """Three epochs of pAML selected by Suff (lower is better), with the best checkpoint exported."""
    out = tmp_path_factory.mktemp("aml-fit")
    torch.manual_seed(0)
    att = AMLAttributor(explained=assets["explained"], backbone=assets["backbone"], lr=3e-3)
    dm = datamodule(assets["data"])
    ckpt = MetricCheckpoint("suff", dirpath=out / "checkpoints", export_to=str(out / "exported.ckpt"))
    recorder = Recorder("val/suff")
    # a second metric of interest in the same run, with its own best checkpoint in the same folder
    ckpt_comp = MetricCheckpoint("comp", dirpath=out / "checkpoints", export_to=str(out / "exported-comp.ckpt"))
    recorder_comp = Recorder("val/comp")
    tr = trainer(max_epochs=3, limit_train_batches=3, enable_checkpointing=True, default_root_dir=out,
                 callbacks=[MetricValidation("suff", n_examples=N_VAL, batch_size=3), ckpt, recorder,
                            MetricValidation("comp", n_examples=N_VAL, batch_size=3), ckpt_comp, recorder_comp])  # fmt: skip
    tr.fit(att, datamodule=dm)
    return {"att": att, "dm": dm, "trainer": tr, "ckpt": ckpt, "values": recorder.values, "out": out,
            "ckpt_comp": ckpt_comp, "values_comp": recorder_comp.values}  # fmt: skip


def test_metric_validation_logs_the_evaluator_value_of_the_attributors_current_maps(fitted):
    texts = fitted["dm"].split("val")["text"][:N_VAL]
    logged = float(fitted["trainer"].callback_metrics["val/suff"])
    assert len(fitted["values"]) == 3  # one value per validation, none from a sanity check
    assert logged == pytest.approx(metric_of_attributor(fitted["att"], texts, "suff"), abs=1e-6)


def test_checkpoint_keeps_the_epoch_with_the_best_metric_in_its_direction_and_exports_it(fitted):
    values, ckpt = fitted["values"], fitted["ckpt"]
    assert len(set(np.round(values, 6))) > 1, "the metric must move during training for this test to mean something"
    best = int(np.argmin(values))  # Suff: lower is better
    assert ckpt.mode == "min" and ckpt.monitor == "val/suff"
    assert float(ckpt.best_model_score) == pytest.approx(values[best], abs=1e-6)
    assert re.search(rf"epoch={best}-", ckpt.best_model_path)
    assert filecmp.cmp(ckpt.best_model_path, fitted["out"] / "exported.ckpt", shallow=False)
    reloaded = AMLAttributor.from_checkpoint(str(fitted["out"] / "exported.ckpt"), explained=fitted["att"].explained)
    texts = fitted["dm"].split("val")["text"][:N_VAL]
    assert metric_of_attributor(reloaded, texts, "suff") == pytest.approx(values[best], abs=1e-6)


def test_one_run_keeps_one_best_checkpoint_per_metric_of_interest(fitted):
    suff, comp = fitted["ckpt"], fitted["ckpt_comp"]
    values = fitted["values_comp"]
    assert len(values) == 3 and len(set(np.round(values, 6))) > 1
    best = int(np.argmax(values))  # Comp: higher is better
    assert comp.mode == "max" and float(comp.best_model_score) == pytest.approx(values[best], abs=1e-6)
    assert re.search(rf"epoch={best}-step=\d+-best-comp\.ckpt$", comp.best_model_path)
    assert suff.best_model_path.endswith("-best-suff.ckpt") and Path(suff.best_model_path).exists()
    assert filecmp.cmp(comp.best_model_path, fitted["out"] / "exported-comp.ckpt", shallow=False)
    texts = fitted["dm"].split("val")["text"][:N_VAL]
    reloaded = AMLAttributor.from_checkpoint(str(fitted["out"] / "exported-comp.ckpt"), explained=fitted["att"].explained)
    assert metric_of_attributor(reloaded, texts, "comp") == pytest.approx(values[best], abs=1e-6)


def test_monitor_modes_follow_the_metric_registry_directions():
    assert monitor("comp") == ("val/comp", "max") and monitor("suff") == ("val/suff", "min")
    assert MetricEarlyStopping("aopc_comp").mode == "max" and MetricCheckpoint("log_odds").mode == "min"
    with pytest.raises(ValueError, match="registered metrics"):
        monitor("accuracy")


def test_checkpointing_on_a_metric_nobody_validates_is_refused_with_the_fix(assets):
    att = AMLAttributor(explained=assets["explained"], backbone=assets["backbone"])
    tr = trainer(max_steps=1, callbacks=[MetricValidation("comp", n_examples=2), MetricEarlyStopping("suff")])
    with pytest.raises(ValueError, match=r"add it to trainer.callbacks"):
        tr.fit(att, datamodule=datamodule(assets["data"]))


def test_ddp_on_two_cpu_processes_logs_the_exact_metric_over_all_validation_texts(assets, tmp_path):
    # 7 texts over 2 ranks (4 + 3): the logged value is the exact mean, not a mean of the ranks' means
    torch.manual_seed(0)
    att = AMLAttributor(explained=assets["explained"], backbone=assets["backbone"], lr=3e-3)
    dm = datamodule(assets["data"])
    strategy = DDPStrategy(process_group_backend="gloo", start_method="spawn")
    tr = trainer(strategy=strategy, devices=2, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                 default_root_dir=tmp_path, callbacks=[MetricValidation("comp", n_examples=7)])  # fmt: skip
    initial = att.head[0].weight.detach().clone()
    tr.fit(att, datamodule=dm)
    assert not torch.equal(att.head[0].weight, initial)  # rank 0's trained weights came back from the spawned ranks
    texts = dm.split("val")["text"][:7]
    fresh = ExplainedModel.from_pretrained(assets["explained"])
    att.set_explained(fresh)  # F is held outside the module, so this process reloads it
    assert float(tr.callback_metrics["val/comp"]) == pytest.approx(metric_of_attributor(att, texts, "comp"), abs=1e-6)


def test_wandb_defaults_to_offline_without_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    wandb_offline_without_key()
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    wandb_offline_without_key()
    assert os.environ["WANDB_MODE"] == "online"


def test_train_py_config_fits_exports_the_best_checkpoint_and_paml_loads_it_by_name(assets, tmp_path, monkeypatch):
    from amlx import methods
    from amlx.cli import main

    monkeypatch.chdir(tmp_path)  # runs/ (CSV and offline W&B logs, checkpoints) lands here
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = str(Path(__file__).resolve().parent.parent / "configs" / "aml" / "paml_minilm_movies.yaml")
    main(["fit", "--config", config, f"--model.init_args.explained={assets['explained']}",
          f"--model.init_args.backbone={assets['backbone']}", f"--data.init_args.dataset={assets['data']}",
          "--data.init_args.val_size=8", "--data.init_args.test_size=4", "--data.init_args.batch_size=4",
          "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"])  # fmt: skip
    exported = tmp_path / "cache" / "attributors" / "paml-minilm-movies.ckpt"
    assert exported.is_file() and list((tmp_path / "runs" / "paml-minilm-movies").glob("version_0/checkpoints/*.ckpt"))
    assert "val/comp" in (tmp_path / "runs" / "paml-minilm-movies" / "version_0" / "metrics.csv").read_text()
    explained = ExplainedModel.from_pretrained(assets["explained"])
    recs = methods.get("paml", checkpoint="amlx:paml-minilm-movies").attribute(list(CORPUS[:2]), explained)
    assert len(recs) == 2 and recs[0].variant == "pretrained"
