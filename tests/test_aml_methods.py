"""The registered ``paml`` and ``faml`` methods on a tiny pAML checkpoint saved to disk and loaded weights-only."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from amlx import methods
from amlx.attributors import FAML, AMLAttributor
from amlx.attributors.aml import ExplainedMismatchError
from amlx.data.datamodule import collate
from amlx.evaluation import Evaluator
from amlx.methods.aml import load_attributor
from amlx.models import ExplainedModel
from amlx.records import records_from_encoded
from tests.test_aml_training import save_tiny_assets
from tests.tiny import CORPUS, TEXTS, tiny_explained

# long enough that 20% of the tokens is at least one token, so Comp differs from map to map
LONG = [TEXTS[1], CORPUS[5], CORPUS[30]]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pAML checkpoint after two training steps, the in-memory attributor and its explained model (by path)."""
    root = tmp_path_factory.mktemp("aml-methods")
    paths = save_tiny_assets(root)
    torch.manual_seed(0)
    att = AMLAttributor(explained=paths["explained"], backbone=paths["backbone"], lr=3e-3)
    batches = DataLoader([{"text": t} for t in CORPUS[:8]], batch_size=4, collate_fn=collate)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)  # fmt: skip
    trainer.fit(att, train_dataloaders=batches)
    path = str(root / "paml.ckpt")
    trainer.save_checkpoint(path)
    return {"path": path, "att": att, "explained": ExplainedModel.from_pretrained(paths["explained"])}


def comp(model, records) -> np.ndarray:
    return Evaluator(model, ["comp"]).evaluate(records)["comp"]


def test_paml_method_reloads_the_checkpoint_weights_only_and_gives_identical_attributions(saved):
    recs = methods.get("paml", checkpoint=saved["path"]).attribute(LONG, saved["explained"])
    expected = saved["att"].attribute(LONG)  # the in-memory attributor that wrote the checkpoint, same batch
    for b, r in enumerate(recs):
        assert np.array_equal(r.scores, expected[b, : len(r)].double().numpy())
        assert r.method == "paml" and r.variant == "pretrained" and r.seconds > 0


def test_a_checkpoint_is_loaded_once_per_file_and_shared_by_method_instances(saved):
    first = methods.get("paml", checkpoint=saved["path"])
    assert methods.get("faml", checkpoint=saved["path"]).attributor is first.attributor
    assert load_attributor(saved["path"]) is first.attributor


def test_paml_method_refuses_a_checkpoint_trained_for_another_explained_model(saved):
    other = tiny_explained("gpt2", "decoder")
    with pytest.raises(ExplainedMismatchError, match="only explains the model it was trained against"):
        methods.get("paml", checkpoint=saved["path"]).attribute(LONG[:1], other)


def test_methods_without_or_with_a_missing_checkpoint_say_how_to_make_one(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="method_options"):
        methods.get("paml")
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"attributors/nothing-here\.ckpt.*train\.py fit"):
        methods.get("faml", checkpoint="amlx:nothing-here")


def test_amlx_names_resolve_to_the_attributor_cache(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path))
    (tmp_path / "attributors").mkdir()
    (tmp_path / "attributors" / "mine.ckpt").write_bytes(open(saved["path"], "rb").read())
    recs = methods.get("paml", checkpoint="amlx:mine").attribute(LONG[:2], saved["explained"])
    same = methods.get("paml", checkpoint=saved["path"]).attribute(LONG[:2], saved["explained"])
    assert all(np.array_equal(a.scores, b.scores) for a, b in zip(recs, same))


STEPS, LR = 3, 5e-2


@pytest.fixture(scope="module")
def trace(saved):
    """The whole head-mode fine-tuning trace, recomputed outside the method, and each step's Comp: [batch, steps + 1]."""
    att = AMLAttributor.from_checkpoint(saved["path"], explained=saved["explained"])
    res = FAML(att, steps=STEPS, params="head", lr=LR).attribute(LONG)
    model = saved["explained"]
    values = np.stack([
        comp(model, records_from_encoded(res.enc, model.tokenizer, res.maps[:, s], res.probs.argmax(-1), res.probs,
                                         model.labels, "faml"))
        for s in range(STEPS + 1)
    ], 1)  # fmt: skip
    return res, values


def test_faml_oracle_selection_returns_each_examples_best_comp_over_the_steps(saved, trace):
    method = methods.get("faml", checkpoint=saved["path"], steps=STEPS, params="head", selection="metric",
                         metric="comp", lr=LR)  # fmt: skip
    recs = method.attribute(LONG, saved["explained"])
    res, values = trace
    assert (values.max(1) > values.min(1)).any(), "the steps' maps must differ in Comp for this test to mean something"
    np.testing.assert_allclose(comp(saved["explained"], recs), values.max(1), atol=1e-6)
    for b, r in enumerate(recs):
        assert r.variant == "oracle-selected:comp" and r.seconds > 0
        assert np.allclose(r.scores, res.maps[b, values[b].argmax(), : len(r)].double().numpy(), atol=1e-6)


def test_faml_loss_selection_returns_the_lowest_loss_step_and_seconds_include_fine_tuning(saved, trace):
    recs = methods.get("faml", checkpoint=saved["path"], steps=STEPS, params="head", lr=LR).attribute(
        LONG, saved["explained"]
    )
    res, _ = trace
    one_pass = methods.get("paml", checkpoint=saved["path"]).attribute(LONG, saved["explained"])
    for b, r in enumerate(recs):
        assert r.variant == "select:loss"
        assert np.allclose(r.scores, res.maps[b, res.losses[b].argmin(), : len(r)].double().numpy(), atol=1e-6)
    assert sum(r.seconds for r in recs) > sum(r.seconds for r in one_pass)


def test_faml_fixed_step_selection_with_all_parameters_is_labelled_select_last(saved):
    recs = methods.get("faml", checkpoint=saved["path"], steps=1, params="all", selection="last").attribute(
        LONG[:1], saved["explained"]
    )
    assert recs[0].variant == "select:last" and recs[0].seconds > 0
