"""Load a labelled text-classification table from an ``amlx:`` dataset, a local CSV/JSONL file or the hub.

Every source becomes a ``datasets.Dataset`` with columns ``text`` (str) and ``label`` (int index into the
label names), plus whatever else the source carries (``id``, ``score``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import datasets

from amlx import assets
from amlx.errors import UserError

log = logging.getLogger(__name__)
datasets.disable_progress_bars()

SENTIMENT_LABELS = ("negative", "positive")
# amlx: datasets that carry a mean human rating in ``score``; binarized by its sign, neutral (0) dropped.
SCORED = {"amlx:movies", "amlx:tweets", "amlx:amazon", "amlx:nyt", "amlx:movies-long"}
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")


class DatasetLabelError(UserError, ValueError):
    """A label in the data is not in the configured label set."""


def load_table(
    name: str,
    labels: tuple[str, ...] | list[str] = SENTIMENT_LABELS,
    text_column: str | None = None,
    label_column: str = "label",
    split: str | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load ``name`` as a table of ``text`` / ``label`` rows (see module docstring)."""
    if assets.is_amlx_name(name):
        ds = datasets.load_dataset("json", data_files=str(assets.dataset_file(name)), split="train")
        if name in SCORED:
            n0 = len(ds)
            ds = ds.filter(lambda r: r["score"] != 0)
            if len(ds) < n0:
                log.info("%s: dropped %d neutral rows (score 0)", name, n0 - len(ds))
            ds = ds.map(lambda r: {"label": int(r["score"] > 0)})
        return _clean(ds, labels, "text", "label")
    path = Path(name)
    if path.suffix in {".csv", ".tsv", ".jsonl", ".json"}:
        if not path.exists():
            raise FileNotFoundError(f"data file {name} does not exist")
        builder = "csv" if path.suffix in {".csv", ".tsv"} else "json"
        kw = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kw)
        return _clean(ds, labels, text_column, label_column)
    dsd = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
    if isinstance(dsd, datasets.Dataset):
        return _clean(dsd, labels, text_column, label_column)
    return datasets.DatasetDict({k: _clean(v, labels, text_column, label_column) for k, v in dsd.items()})


def _clean(ds: datasets.Dataset, labels, text_column: str | None, label_column: str) -> datasets.Dataset:
    """Rename to ``text``/``label``, map label names to indices, check the label set, drop empty texts."""
    text_column = text_column or next((c for c in TEXT_COLUMNS if c in ds.column_names), None)
    if text_column is None or text_column not in ds.column_names:
        raise ValueError(f"no text column in {ds.column_names}; set text_column in the data config")
    if label_column not in ds.column_names:
        raise ValueError(f"no label column {label_column!r} in {ds.column_names}; set label_column")
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    if label_column != "label":
        ds = ds.rename_column(label_column, "label")
    labels = list(labels)
    if len(ds) and isinstance(ds[0]["label"], str):
        ds = ds.map(
            lambda r: {"_label": labels.index(r["label"]) if r["label"] in labels else -1}, remove_columns=["label"]
        ).rename_column("_label", "label")
    bad = sorted({v for v in ds.unique("label") if v is None or not 0 <= int(v) < len(labels)}, key=str)
    if bad:
        raise DatasetLabelError(
            f"labels {bad[:10]} are outside the label set {labels} (indices 0..{len(labels) - 1}); "
            "set `labels` in the data config, or drop unlabelled rows (e.g. a hub test split with label -1)"
        )
    n0 = len(ds)
    ds = ds.filter(lambda r: isinstance(r["text"], str) and r["text"].strip() != "")
    if len(ds) < n0:
        warnings.warn(f"dropped {n0 - len(ds)} rows with empty or whitespace-only text", stacklevel=2)
    return ds
