"""Load a labelled text-classification table from an ``amlx:`` dataset, a local CSV/JSONL file or the hub.

Every source becomes a ``datasets.Dataset`` with columns ``text`` (str) and ``label`` (int index into the
label names), plus whatever else the source carries (``id``, ``score``). Sentence-pair sources (NLI: ``premise``
and ``hypothesis``, or ``sentence1`` and ``sentence2``, or the columns given as ``text_column`` /
``text_pair_column``) get ``text`` and ``text_pair``; rationale columns (``rationale_columns``, by default
``<text column>_rationale`` when present) become one ``rationale`` column (``amlx.data.rationales``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import datasets

from amlx import assets
from amlx.data.rationales import highlighted_spans, word_indices
from amlx.errors import UserError

log = logging.getLogger(__name__)
datasets.disable_progress_bars()

SENTIMENT_LABELS = ("negative", "positive")
# amlx: datasets that carry a mean human rating in ``score``; binarized by its sign, neutral (0) dropped.
SCORED = {"amlx:movies", "amlx:tweets", "amlx:amazon", "amlx:nyt", "amlx:movies-long"}
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
PAIR_COLUMNS = (("premise", "hypothesis"), ("sentence1", "sentence2"))  # (text, text_pair) found without a config


class DatasetLabelError(UserError, ValueError):
    """A label in the data is not in the configured label set."""


class DatasetColumnError(UserError, ValueError):
    """A text, text-pair, label or rationale column that the data does not have."""


def load_table(
    name: str,
    labels: tuple[str, ...] | list[str] = SENTIMENT_LABELS,
    text_column: str | None = None,
    label_column: str = "label",
    split: str | None = None,
    text_pair_column: str | None = None,
    rationale_columns: list[str] | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load ``name`` as a table of ``text`` (and ``text_pair``) / ``label`` rows (see module docstring)."""
    columns = {"text_column": text_column, "label_column": label_column, "text_pair_column": text_pair_column,
               "rationale_columns": rationale_columns}  # fmt: skip
    if assets.is_amlx_name(name):
        ds = datasets.load_dataset("json", data_files=str(assets.dataset_file(name)), split="train")
        if name in SCORED:
            n0 = len(ds)
            ds = ds.filter(lambda r: r["score"] != 0)
            if len(ds) < n0:
                log.info("%s: dropped %d neutral rows (score 0)", name, n0 - len(ds))
            ds = ds.map(lambda r: {"label": int(r["score"] > 0)})
        return _clean(ds, labels, text_column="text", label_column="label")
    path = Path(name)
    if path.suffix in {".csv", ".tsv", ".jsonl", ".json"}:
        if not path.exists():
            raise FileNotFoundError(f"data file {name} does not exist")
        builder = "csv" if path.suffix in {".csv", ".tsv"} else "json"
        kw = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kw)
        return _clean(ds, labels, where=name, **columns)
    dsd = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
    if isinstance(dsd, datasets.Dataset):
        return _clean(dsd, labels, where=name, **columns)
    return datasets.DatasetDict({k: _clean(v, labels, where=f"{name}[{k}]", **columns) for k, v in dsd.items()})


def _text_columns(names: list[str], text_column: str | None, text_pair_column: str | None, where: str):
    """(text column, text-pair column or None) of a table with columns ``names``; see the module docstring."""
    if text_column is None and text_pair_column is None:
        single = next((c for c in TEXT_COLUMNS if c in names), None)
        if single is not None:
            return single, None
        pair = next(((a, b) for a, b in PAIR_COLUMNS if a in names and b in names), None)
        if pair is not None:
            return pair
        half = next(((a, b) for a, b in PAIR_COLUMNS if a in names or b in names), None)
        if half is not None:
            have, missing = half if half[0] in names else half[::-1]
            raise DatasetColumnError(
                f"{where} has a {have!r} column but no {missing!r} column, so it is neither a sentence-pair table "
                f"nor a single-text one (columns: {names}); set text_column and text_pair_column (pairs) or "
                "text_column alone (single texts) in the data config"
            )
    if text_column is None:
        firsts = [a for a, _ in PAIR_COLUMNS] if text_pair_column else []
        text_column = next((c for c in firsts + list(TEXT_COLUMNS) if c in names), None)
        if text_column is None:
            raise DatasetColumnError(
                f"no text column in {names} of {where}; set text_column (and text_pair_column for sentence pairs) "
                "in the data config"
            )
    if text_column not in names:
        raise DatasetColumnError(f"no text column {text_column!r} in {names} of {where}; set text_column")
    if text_pair_column is not None and text_pair_column not in names:
        raise DatasetColumnError(
            f"no text_pair column {text_pair_column!r} (the second segment, e.g. the hypothesis) in {names} of "
            f"{where}; set text_pair_column in the data config"
        )
    return text_column, text_pair_column


def _clean(
    ds: datasets.Dataset,
    labels,
    text_column: str | None,
    label_column: str,
    text_pair_column: str | None = None,
    rationale_columns: list[str] | None = None,
    where: str = "the data",
) -> datasets.Dataset:
    """Rename to ``text``/``text_pair``/``label``, map label names to indices, check the label set, drop empty texts."""
    text_column, text_pair_column = _text_columns(ds.column_names, text_column, text_pair_column, where)
    if label_column not in ds.column_names:
        raise DatasetColumnError(f"no label column {label_column!r} in {ds.column_names} of {where}; set label_column")
    segments = [text_column] + ([text_pair_column] if text_pair_column else [])
    ds = _with_rationales(ds, segments, rationale_columns, where)
    for old, new in zip(segments + [label_column], ["text", "text_pair", "label"][: len(segments)] + ["label"]):
        if old != new:
            if new in ds.column_names:  # e.g. a "text" column beside the chosen premise column
                ds = ds.remove_columns(new)
            ds = ds.rename_column(old, new)
    labels = list(labels)
    names = getattr(ds.features["label"], "names", None)  # a hub ClassLabel: its ids follow its own name order
    if names and set(names) <= set(labels) and list(names) != labels[: len(names)]:
        # e.g. esnli (entailment, neutral, contradiction) explained by a model whose labels are in another order
        ds = ds.cast_column("label", datasets.Value("int64"))
        ds = ds.map(lambda r: {"label": labels.index(names[r["label"]]) if 0 <= r["label"] < len(names) else r["label"]})
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
    cols = ["text", "text_pair"][: len(segments)]
    ds = ds.filter(lambda r: all(isinstance(r[c], str) and r[c].strip() != "" for c in cols))
    if len(ds) < n0:
        warnings.warn(f"dropped {n0 - len(ds)} rows with empty or whitespace-only text", stacklevel=2)
    return ds


def _with_rationales(ds: datasets.Dataset, segments: list[str], columns: list[str] | None, where: str):
    """``ds`` with a ``rationale`` column ([[segment, start, end], ...]) from one rationale column per segment."""
    if columns is None:
        columns = [f"{c}_rationale" for c in segments]
        if not all(c in ds.column_names for c in columns):
            return ds
    if len(columns) != len(segments):
        raise DatasetColumnError(
            f"rationale_columns {columns} for {len(segments)} text column(s) {segments} of {where}: give one "
            "rationale column per segment (text, then text_pair)"
        )
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DatasetColumnError(f"no rationale column {missing[0]!r} in {ds.column_names} of {where}; set rationale_columns")

    def spans(row: dict, i: int) -> dict:
        out = []
        for seg, (text_col, col) in enumerate(zip(segments, columns)):
            at = f"{where}, row {i}, column {col}"
            text = row[text_col] if isinstance(row[text_col], str) else ""
            out += [[seg, s, e] for s, e in highlighted_spans(text, word_indices(row[col], at), at)]
        return {"rationale": out}

    features = ds.features.copy()
    features["rationale"] = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
    return ds.map(spans, with_indices=True, features=features)
