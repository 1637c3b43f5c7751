"""Lightning callbacks that select a learned attributor by the metric of interest (methods.md "AML": pAML).

``MetricValidation(metric="comp")`` logs ``val/comp`` at every validation: the attributor's one-pass maps of the
first ``n_examples`` validation texts, scored by ``amlx.evaluation.Evaluator`` — the numbers ``explain.py
evaluate`` would report. ``MetricCheckpoint`` / ``MetricEarlyStopping`` monitor that key with the mode that
follows ``amlx.metrics.direction`` (``max`` for higher-is-better), so a YAML names the metric, never the mode.

DDP: every rank scores its own share of the texts (rank r takes texts r, r + world, ...); the sums and counts
are all-reduced, so each rank logs the same exact mean and checkpointing / early stopping agree on all ranks.

With a ``WandbLogger`` on the trainer, each validation also logs the first ``log_examples`` maps (rank zero's
share) as a ``wandb.Table`` ``val/<metric>_attributions`` (text, method, words, per-word scores, the metric per
example) and their HTML view ``val/<metric>_attributions_html`` (``amlx.wandb_media``).
"""

from __future__ import annotations

import shutil

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from amlx import metrics as metric_registry
from amlx.attributors.aml import checkpoint_path
from amlx.evaluation import Evaluator
from amlx.pairs import Input, inputs_of
from amlx.records import Attribution
from amlx.wandb_media import log_attributions


def monitor(metric: str) -> tuple[str, str]:
    """(``val/<metric>``, ``max`` | ``min``) for a registered metric; the mode follows its direction."""
    direction = metric_registry.direction(metric)
    if direction is None:
        raise ValueError(f"unknown metric {metric!r}; registered metrics: {', '.join(metric_registry.names())}")
    return f"val/{metric}", "max" if direction == "higher" else "min"


class MetricValidation(L.Callback):
    """Log ``val/<metric>``: the attributor's maps of the first ``n_examples`` validation texts, scored by ``Evaluator``.

    The LightningModule must have ``explained`` and ``scores(enc, target)`` (``AMLAttributor``). Texts come from
    ``texts`` when given, else from the datamodule's ``val_dataloader()`` (its ``"text"`` column, in order).
    ``metric_options`` configure the metric (e.g. ``{perturbation: mask}``); ``batch_size`` = examples per
    attributor pass; ``max_tokens`` bounds the evaluator's forward passes. Skipped during the sanity check.
    ``log_examples``: maps sent to W&B per validation when the trainer has a ``WandbLogger`` (0: none).
    """

    def __init__(
        self,
        metric: str = "comp",
        n_examples: int = 200,
        metric_options: dict | None = None,
        batch_size: int = 32,
        max_tokens: int = 8192,
        texts: list[str] | None = None,
        log_examples: int = 8,
    ) -> None:
        if log_examples < 0:
            raise ValueError(f"log_examples must be ≥ 0 (0: no W&B table), got {log_examples}")
        self.metric = metric
        self.key, _ = monitor(metric)
        self.n_examples = n_examples
        self.metric_options = metric_options or {}
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.texts = list(texts)[:n_examples] if texts is not None else None
        self.log_examples = log_examples

    def validation_texts(self, trainer: L.Trainer) -> list[Input]:
        """The first ``n_examples`` validation texts (read once)."""
        if self.texts is None:
            dm = trainer.datamodule
            if dm is None:
                raise ValueError(
                    "MetricValidation reads validation texts from the datamodule: fit with datamodule=... (train.py "
                    "does), or pass texts=[...] to MetricValidation"
                )
            texts: list[Input] = []
            for batch in dm.val_dataloader():  # the unsharded loader: every rank sees the same list
                texts += inputs_of(batch)
                if len(texts) >= self.n_examples:
                    break
            self.texts = texts[: self.n_examples]
        return self.texts

    def attribute(self, attributor: L.LightningModule, texts: list[str]) -> list[Attribution]:
        """The attributor's one-pass pAML maps of ``texts`` (records on the explained model's tokens)."""
        from amlx.methods.aml import PAML

        if not texts:
            return []
        return PAML(attributor=attributor, internal_batch_size=self.batch_size).attribute(texts, attributor.explained)

    def values(self, attributor: L.LightningModule, records: list[Attribution]) -> np.ndarray:
        """The metric on each record: [len(records)] (``Evaluator`` with this metric and its options)."""
        if not records:
            return np.zeros(0)
        metric = metric_registry.get(self.metric, **self.metric_options)
        return Evaluator(attributor.explained, [metric], max_tokens=self.max_tokens).evaluate(records)[self.metric]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        texts = self.validation_texts(trainer)
        records = self.attribute(pl_module, texts[trainer.global_rank :: trainer.world_size])
        for i, r in zip(range(trainer.global_rank, len(texts), trainer.world_size), records):
            r.example_id = str(i)  # the text's place among the validation texts (W&B's table names it)
        mine = self.values(pl_module, records)
        if self.log_examples:
            n = self.log_examples
            log_attributions(trainer, f"{self.key}_attributions", records[:n], mine[:n], self.metric)
        stats = torch.tensor([mine.sum(), len(mine)], dtype=torch.float64, device=pl_module.device)
        total, count = trainer.strategy.reduce(stats, reduce_op="sum").tolist()
        # already the same on every rank; sync_dist only tells Lightning so (a mean of equal values)
        pl_module.log(self.key, total / max(count, 1.0), prog_bar=True, sync_dist=True)


class MetricCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` on ``val/<metric>`` (mode from the metric's direction); ``export_to`` gets the best file.

    ``export_to`` (an ``amlx:<name>`` → ``<amlx cache>/attributors/<name>.ckpt``, or a path) receives a copy of the
    best checkpoint when fit ends, so ``paml`` / ``faml`` load it by that name. Other arguments: ``ModelCheckpoint``.
    The default file name carries the metric (``epoch=E-step=S-best-<metric>.ckpt``), so one run can keep one best
    checkpoint per metric of interest (one ``MetricValidation`` + ``MetricCheckpoint`` pair per metric).
    """

    def __init__(self, metric: str = "comp", export_to: str | None = None, **kwargs) -> None:
        key, mode = monitor(metric)
        if kwargs.get("filename") is None:
            kwargs["filename"] = "{epoch}-{step}-best-" + metric
        super().__init__(monitor=key, mode=mode, **kwargs)
        self.metric = metric
        self.export_to = export_to

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        _require_validation(trainer, self.metric, type(self).__name__)
        super().setup(trainer, pl_module, stage)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.export_to and self.best_model_path and trainer.is_global_zero:
            dest = checkpoint_path(self.export_to)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.copyfile(self.best_model_path, tmp)
            tmp.replace(dest)  # atomic: a reader never sees half a checkpoint
            rank_zero_info(f"best checkpoint ({self.monitor} = {float(self.best_model_score):.4f}): "
                           f"{self.best_model_path}, exported as {self.export_to} → {dest}")  # fmt: skip
        trainer.strategy.barrier()


class MetricEarlyStopping(EarlyStopping):
    """``EarlyStopping`` on ``val/<metric>`` with the mode from the metric's direction; other arguments as its parent."""

    def __init__(self, metric: str = "comp", patience: int = 2, **kwargs) -> None:
        key, mode = monitor(metric)
        super().__init__(monitor=key, mode=mode, patience=patience, **kwargs)
        self.metric = metric

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        _require_validation(trainer, self.metric, type(self).__name__)
        super().setup(trainer, pl_module, stage)


def _require_validation(trainer: L.Trainer, metric: str, who: str) -> None:
    if not any(isinstance(c, MetricValidation) and c.metric == metric for c in trainer.callbacks):
        raise ValueError(
            f"{who}(metric={metric!r}) monitors val/{metric}, which only MetricValidation(metric={metric!r}) logs; "
            "add it to trainer.callbacks (see configs/aml/paml_minilm_movies.yaml)"
        )
