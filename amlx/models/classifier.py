"""``ClassifierModule``: fine-tune an explained classifier (encoder or decoder, full or LoRA) with Lightning.

The network is an ``ExplainedModel`` in trainable mode, so training reads predictions exactly where
explanation will (last real token for decoders). After fitting, the model is exported with
``save_pretrained`` to ``export_to`` (an ``amlx:<name>`` in the cache or a folder) — a completed export there is
refused at fit start unless ``overwrite_export`` is true, so a trial run (``--trainer.max_steps 30``) cannot silently
replace the model every stored result was computed on; after testing, the test
accuracy and a reload check are written to ``benchmarks/results/<results_name>.json``. Test accuracy is a
``torchmetrics`` metric, so under DDP it counts every rank's examples (each rank computes the same value).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from amlx import assets
from amlx.data.sources import SENTIMENT_LABELS
from amlx.errors import UserError
from amlx.models.explained import ExplainedModel
from amlx.pairs import inputs_of
from amlx.results import write_results

log = logging.getLogger(__name__)


class ExportExistsError(UserError, FileExistsError):
    """``export_to`` already holds a completed export and ``overwrite_export`` is false."""


class ClassifierModule(L.LightningModule):
    """Fine-tunes ``model`` (hub name, folder or ``amlx:`` name) as a ``len(labels)``-way classifier.

    ``lora``: peft ``LoraConfig`` keyword arguments (e.g. ``{r: 16, lora_alpha: 32, lora_dropout: 0.1}``);
    the classification head is trained fully (``modules_to_save``). ``None`` fine-tunes every weight.
    ``overwrite_export``: replace a completed export at ``export_to`` (otherwise ``fit`` refuses to start).
    """

    def __init__(
        self,
        model: str = "amlx:minilm",
        kind: str = "encoder",
        labels: list[str] = list(SENTIMENT_LABELS),
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
        max_length: int = 64,
        lora: dict | None = None,
        export_to: str | None = None,
        results_name: str | None = None,
        seed: int = 0,
        overwrite_export: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if kind not in ("encoder", "decoder"):
            raise ValueError("ClassifierModule trains encoder or decoder classifiers; prompted LMs are used as-is")
        self.net = self._build()
        # synced over DDP ranks when computed: every rank's test examples count once
        self.test_accuracy = MulticlassAccuracy(num_classes=len(labels), average="micro")
        self.test_examples = SumMetric()
        self.test_result: tuple[float, int] | None = None  # (accuracy, examples) of the last test

    def _build(self) -> ExplainedModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        hp = self.hparams
        path = assets.resolve(hp.model)
        torch.manual_seed(hp.seed)  # the new head's initialization is part of the run's seed
        hf = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(hp.labels),
            id2label=dict(enumerate(hp.labels)),
            label2id={n: i for i, n in enumerate(hp.labels)},
            dtype=torch.float32,
        )
        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        hf.config.pad_token_id = tok.pad_token_id
        if hp.lora is not None:
            from peft import LoraConfig, get_peft_model

            cfg = dict(hp.lora)
            cfg.setdefault("modules_to_save", ["classifier"] if hp.kind == "encoder" else ["score"])
            hf = get_peft_model(hf, LoraConfig(task_type="SEQ_CLS", **cfg))
        return ExplainedModel(hf, tok, hp.kind, labels=hp.labels, max_length=hp.max_length, trainable=True, name=hp.model)

    def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.net.encode(inputs_of(batch)).to(self.device)
        logits = self.net.logits(enc.input_ids, enc.attention_mask)
        return F.cross_entropy(logits.float(), batch["label"]), logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, logits = self._step(batch)
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        n = len(batch["text"])
        self.log("val/loss", loss, batch_size=n, sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, batch_size=n, sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.test_accuracy.reset()
        self.test_examples.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        _, logits = self._step(batch)
        self.test_accuracy.update(logits.argmax(-1), batch["label"])
        self.test_examples.update(len(batch["text"]))

    def on_test_epoch_end(self) -> None:
        n = int(self.test_examples.compute())  # compute() all-gathers the ranks' states (DDP)
        acc = float(self.test_accuracy.compute()) if n else float("nan")
        self.test_result = (acc, n)
        self.log("test/acc", acc, sync_dist=True)  # the same value on every rank

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = get_linear_schedule_with_warmup(opt, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------- export and report
    def export_dir(self) -> Path | None:
        to = self.hparams.export_to
        if not to:
            return None
        return assets.local_path(to) if assets.is_amlx_name(to) else Path(to)

    def on_fit_start(self) -> None:
        out = self.export_dir()
        if out is not None and (out / ".complete").exists() and not self.hparams.overwrite_export:
            raise ExportExistsError(
                f"{self.hparams.export_to} ({out}) already holds a fine-tuned classifier, which this fit would replace "
                "(and with it the model of every result computed on it). To replace it, add --model.overwrite_export "
                "true; for a trial run, add --model.export_to null --model.results_name null (or export elsewhere)"
            )

    def on_fit_end(self) -> None:
        out = self.export_dir()
        if out is None or not self.trainer.is_global_zero:
            return
        (out / ".complete").unlink(missing_ok=True)
        self.net.save_pretrained(out)
        (out / ".complete").touch()
        log.info("exported the fine-tuned classifier to %s", out)

    def on_test_end(self) -> None:
        if not self.trainer.is_global_zero or not self.test_result or not self.test_result[1]:
            return
        acc, n = self.test_result
        print(f"test accuracy: {acc:.4f} on {n} examples", flush=True)
        if not self.hparams.results_name:
            return
        reload_diff = self._reload_check()
        dm = self.trainer.datamodule
        hp = self.hparams
        variant = "lora" if hp.lora is not None else "full"
        ci = 1.96 * math.sqrt(acc * (1 - acc) / n)
        row = {"method": hp.results_name, "variant": variant, "metric": "accuracy", "mean": round(acc, 5),
               "ci95": round(ci, 5), "n": n}
        setup = {"explained_model": hp.model, "kind": hp.kind, "dataset": getattr(dm.hparams, "dataset", ""),
                 "split": "test", "n_examples": n, "max_length": hp.max_length, "lr": hp.lr,
                 "epochs": self.trainer.current_epoch, "global_steps": self.trainer.global_step,
                 "lora": hp.lora, "seed": hp.seed, "export_to": hp.export_to}
        notes = "Reloaded with ExplainedModel.from_pretrained (save_pretrained folder): " + (
            f"max |Δp| over 64 test texts = {reload_diff:.3g}" if reload_diff is not None else "no export to check")
        write_results(hp.results_name, [row], setup, notes=notes)

    def _reload_check(self) -> float | None:
        out = self.export_dir()
        if out is None or not (out / ".complete").exists():
            return None
        test = self.trainer.datamodule.split("test")
        texts = inputs_of(test.select(range(min(64, len(test)))))
        self.net.eval()
        with torch.no_grad():
            before = self.net.predict(texts)
            again = ExplainedModel.from_pretrained(str(out)).to(self.device)
            after = again.predict(texts)
        return float((before - after).abs().max())
