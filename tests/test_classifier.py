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


def test_a_fit_refuses_to_replace_a_completed_export_unless_told_and_train_py_says_so_in_one_line(
    tmp_path, separable_csv, capsys
):
    """The export every stored result was computed on is not replaced by a second (e.g. shortened) fit: the refusal
    comes at fit start, before any step, and leaves the export byte for byte; ``overwrite_export`` replaces it."""
    from amlx.cli import main as train_main
    from amlx.errors import run_cli
    from amlx.models.classifier import ExportExistsError

    base = _saved_base(tmp_path, "bert", "encoder")
    export = tmp_path / "export"
    _fit(ClassifierModule(model=base, lr=1e-2, warmup_ratio=0.0, export_to=str(export)), separable_csv, steps=3)
    weights = export / "model.safetensors"
    saved = weights.read_bytes()
    second = ClassifierModule(model=base, lr=1e-2, warmup_ratio=0.0, export_to=str(export), seed=1)
    with pytest.raises(ExportExistsError, match="overwrite_export"):
        _fit(second, separable_csv, steps=3)
    assert second.trainer.global_step == 0 and weights.read_bytes() == saved

    argv = ["fit", "--model", "amlx.models.classifier.ClassifierModule", "--model.model", base,
            "--model.export_to", str(export), "--model.seed", "1", "--data", "amlx.data.TextClassificationData",
            "--data.dataset", separable_csv, "--data.test_size", "12", "--data.val_size", "12",
            "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--test_after_fit", "false"]  # fmt: skip
    assert run_cli(train_main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "already holds a fine-tuned classifier" in err[-1]
    assert "--model.overwrite_export true" in err[-1] and "Traceback" not in "\n".join(err)
    assert weights.read_bytes() == saved

    assert run_cli(train_main, [*argv, "--model.overwrite_export", "true"]) == 0
    assert weights.read_bytes() != saved  # seed 1, two steps: another model
    assert (export / ".complete").exists()
