"""The README's main job (``explain.py main``) with its classifier and pAML attributor already cached: the test
accuracy it prints, the evaluation table, the HTML report and the per-stage wall times (``timing_results``)."""

from __future__ import annotations

import json
import re
import shutil

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from amlx import results
from amlx.attributors import AMLAttributor
from amlx.data import TextClassificationData
from amlx.data.datamodule import collate
from amlx.jobs import main as main_job
from amlx.models import ExplainedModel
from tests.test_aml_training import save_tiny_assets
from tests.tiny import CORPUS


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A cache holding a finished classifier ``amlx:tiny`` and a pAML checkpoint ``amlx:paml-tiny`` for it."""
    paths = save_tiny_assets(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("AMLX_CACHE", str(cache))
    shutil.copytree(paths["explained"], cache / "classifiers" / "tiny")
    (cache / "classifiers" / "tiny" / ".complete").touch()  # what the fine-tuning stage leaves when it finishes
    torch.manual_seed(0)
    att = AMLAttributor(explained="amlx:tiny", backbone=paths["backbone"], lr=3e-3)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(att, train_dataloaders=DataLoader([{"text": t} for t in CORPUS[:8]], batch_size=4, collate_fn=collate))
    (cache / "attributors").mkdir(parents=True)
    trainer.save_checkpoint(cache / "attributors" / "paml-tiny.ckpt")
    config = tmp_path / "classifier.yaml"
    config.write_text(yaml.safe_dump({"data": {"init_args": {"dataset": paths["data"], "val_size": 8, "test_size": 10,
                                                              "seed": 0}}}))  # fmt: skip
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")  # never write into the repository
    return tmp_path, str(config)


def test_main_job_with_cached_assets_prints_the_table_writes_the_report_and_the_stage_times(cached, capsys):
    root, config = cached
    out = main_job.main(fetch=[], explained_model="amlx:tiny", classifier_config=config,
                        attributor_config="(cached, not read)", attributor="amlx:paml-tiny",
                        methods=["random", "gradient_x_input", "paml"], metrics=["comp", "suff"], n_eval=4, n_report=2,
                        out_dir=str(root / "main"), timing_results="main-timing")  # fmt: skip
    printed = capsys.readouterr().out
    assert "using the cached classifier" in printed and "using the cached pAML attributor" in printed

    # the test accuracy is the classifier's on the config's test split
    model = ExplainedModel.from_pretrained("amlx:tiny")
    data_args = yaml.safe_load(open(config))["data"]["init_args"]
    test = TextClassificationData(**data_args).split("test")
    expected = float((model.predict(test["text"]).argmax(-1) == torch.tensor(test["label"])).float().mean())
    assert out["n"] == 10 and out["test_accuracy"] == pytest.approx(expected)

    # the table: every method on every metric over the first n_eval test examples
    cells = {(r["method"], r["metric"]): r["n"] for r in out["table"]}
    assert cells == {(m, k): 4 for m in ["random", "gradient_x_input", "paml"] for k in ["comp", "suff"]}
    page = (root / "main" / "report" / "report.html").read_text()
    rows = re.findall(r'<tr class="method" data-method="([^"\[]*)', page)  # labels: name[options]
    assert rows == ["random", "gradient_x_input", "paml"] * 2
    assert page.count('<section class="example"') == 2  # n_report of the n_eval evaluated examples
    assert "stage 5/5 done: HTML report of 2 examples" in printed

    # the stage times: one row per stage in order, and the stages add up to the total
    timing = json.loads((root / "results" / "main-timing.json").read_text())
    stages = [r["variant"] for r in timing["rows"]]
    assert stages == ["fetch", "classifier (cached)", "test accuracy + pAML (cached)", "evaluate 4 examples",
                      "HTML report of 2 examples", "total"]  # fmt: skip
    seconds = {r["variant"]: r["mean"] for r in timing["rows"]}
    assert all(s >= 0 for s in seconds.values())
    assert sum(v for k, v in seconds.items() if k != "total") == pytest.approx(seconds["total"], rel=1e-3, abs=0.05)
    assert timing["setup"]["classifier_trained"] is False and timing["setup"]["attributor_trained"] is False
    assert (root / "results" / "main-timing.md").exists()


def test_retrain_tells_the_classifier_fit_to_replace_the_cached_export(cached, monkeypatch):
    """``retrain: true`` is the one case where the main job replaces a completed classifier export on purpose: it
    passes ``--model.overwrite_export true`` (without it the fit refuses, tests/test_classifier.py)."""
    root, config = cached
    calls = []

    class Stop(Exception):
        pass

    def record(config, *more):
        calls.append((config, more))
        raise Stop

    monkeypatch.setattr(main_job, "_train", record)
    with pytest.raises(Stop):
        main_job.main(fetch=[], explained_model="amlx:tiny", classifier_config=config, retrain=True,
                      out_dir=str(root / "main"))  # fmt: skip
    assert calls == [(config, ("--model.overwrite_export", "true"))]
