"""Fine-tuning explained classifiers through Lightning: learns, exports with save_pretrained, reloads exactly."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from amlx.data import TextClassificationData
from amlx.models import ExplainedModel
from amlx.models.classifier import ClassifierModule
from tests.tiny import tiny_model, tiny_tokenizer

POS = ["a good movie", "good cast and good score", "great fun", "really good", "lovely and great", "a small gem"]
NEG = ["a bad movie", "bad plot and bad acting", "terrible ending", "really bad", "dull and weak", "avoid it"]


@pytest.fixture
def separable_csv(tmp_path):
    """A trivially separable sentiment file: the word decides the label."""
    rows = [(t, 1) for t in POS] * 6 + [(t, 0) for t in NEG] * 6
    path = tmp_path / "sentiment.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n")
    return str(path)


def _saved_base(tmp_path, arch: str, kind: str):
    tok = tiny_tokenizer(arch)
    model = tiny_model(arch, kind, tok)
    out = tmp_path / f"base-{arch}"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _fit(module: ClassifierModule, data: str, steps: int) -> L.Trainer:
    dm = TextClassificationData(dataset=data, test_size=12, val_size=12, batch_size=8, eval_batch_size=12, seed=0)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    return trainer


@pytest.mark.parametrize(("arch", "kind", "lora", "lr"), [("bert", "encoder", None, 1e-2), ("llama", "decoder", None, 3e-3),
                                                      ("llama", "decoder", {"r": 4, "lora_alpha": 8}, 1e-2)])
def test_fine_tuned_classifier_learns_exports_and_reloads_with_identical_probabilities(
    tmp_path, separable_csv, arch, kind, lora, lr
):
    torch.manual_seed(0)
    base = _saved_base(tmp_path, arch, kind)
    export = tmp_path / "export"
    module = ClassifierModule(model=base, kind=kind, lr=lr, warmup_ratio=0.0, lora=lora, export_to=str(export))
    trainer = _fit(module, separable_csv, steps=40)
    acc, n = module.test_result
    assert n == 12 and acc >= 0.9  # the word decides the label: it must be learned
    assert float(trainer.callback_metrics["test/acc"]) == pytest.approx(acc)

    texts = ["a good movie", "bad plot and bad acting", "really good"]
    module.net.eval()
    before = module.net.predict(texts)
    again = ExplainedModel.from_pretrained(str(export))
    assert again.kind == kind and again.labels == ["negative", "positive"]
    torch.testing.assert_close(again.predict(texts), before, atol=1e-6, rtol=0)
    assert (export / ".complete").exists()
    if lora:
        assert (export / "adapter_config.json").exists()  # the adapter is saved, not a merged copy
        assert not any(p.requires_grad for p in again.parameters())


def test_prompted_models_are_not_fine_tuned_by_the_classifier_module():
    with pytest.raises(ValueError, match="prompted"):
        ClassifierModule(model="unused", kind="prompted")
