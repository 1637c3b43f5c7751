"""Attribution records as W&B media: a ``wandb.Table`` (one row per map) and the HTML view of ``amlx.render``.

``MetricValidation`` calls ``log_attributions`` at every validation when the trainer has a ``WandbLogger``
(pAML runs through ``train.py``, tuning trials): the W&B run then shows what the attributor's maps look like
next to the metric they scored. wandb is imported only when such a logger is present.
"""

from __future__ import annotations

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from amlx import render
from amlx.records import Attribution

COLUMNS = ("example", "text", "method", "target", "words", "word_scores")


def table_rows(records: list[Attribution], values: np.ndarray | None = None) -> list[list]:
    """One row per record in ``COLUMNS`` order (plus its metric value when ``values`` [records] is given).

    ``word_scores`` are the max over each word's attributable tokens (``Attribution.word_scores``); a word with
    no attributable token (a truncated text) gets 0, the records' convention for tokens that carry no score.
    """
    rows = []
    for i, r in enumerate(records):
        scores = np.nan_to_num(r.word_scores(), nan=0.0).tolist()
        method = f"{r.method}/{r.variant}" if r.variant else r.method
        row = [r.example_id if r.example_id is not None else str(i), r.text, method, r.target_label, r.words, scores]
        rows.append(row if values is None else [*row, float(values[i])])
    return rows


def attribution_table(records: list[Attribution], values: np.ndarray | None = None, metric: str = ""):
    """A ``wandb.Table`` of ``records`` (columns ``COLUMNS``, plus ``metric`` when ``values`` are given)."""
    import wandb

    columns = list(COLUMNS) + ([metric] if values is not None else [])
    return wandb.Table(columns=columns, data=table_rows(records, values))


def log_attributions(
    trainer: L.Trainer, key: str, records: list[Attribution], values: np.ndarray | None = None, metric: str = ""
) -> None:
    """Log ``<key>`` (the table) and ``<key>_html`` (``render.to_html``) to every ``WandbLogger`` of ``trainer``.

    Rank zero only (Lightning's W&B run lives there); the step is the trainer's global step.
    """
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers or not records or not trainer.is_global_zero:
        return
    import wandb

    page = render.to_html(records, title=f"{key} at step {trainer.global_step}")
    for logger in loggers:  # media objects are bound to the run they are logged to: one set per logger
        media = {key: attribution_table(records, values, metric), f"{key}_html": wandb.Html(page, inject=False)}
        logger.log_metrics(media, step=trainer.global_step)
