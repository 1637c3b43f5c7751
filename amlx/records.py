"""The one attribution record every method produces and every metric, renderer and file reads.

An ``Attribution`` describes one example as the explained model saw it: its tokens (specials included, padding
stripped), one score per token, which tokens are attributable, how tokens group into words, the target class
and the model's original probabilities. Records are saved as JSONL, one record per line, each line carrying
``"schema": "amlx.attribution/1"`` (fields are listed in docs/evaluation.md). A sentence pair is one record: ``text``
is the pair's joined text and ``segments`` the character spans of its two segments (``amlx.pairs``); records of
single texts have ``segments`` None and are written exactly as before the field existed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from amlx.words import word_spans as text_word_spans

SCHEMA = "amlx.attribution/1"
SCHEMA_PREFIX = "amlx.attribution/"
AGGREGATIONS = ("max", "mean", "sum")


def aggregate(groups: np.ndarray, values: np.ndarray, n_groups: int, agg: str = "max") -> np.ndarray:
    """Reduce ``values`` [items] by ``groups`` [items] (0..n_groups-1) with max | mean | sum: [n_groups], NaN if empty."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"token→word aggregation must be one of {AGGREGATIONS}, got {agg!r}")
    count = np.bincount(groups, minlength=n_groups)
    if agg == "max":
        acc = np.full(n_groups, -np.inf)
        np.maximum.at(acc, groups, values)
    else:
        acc = np.bincount(groups, weights=values, minlength=n_groups).astype(np.float64)
        if agg == "mean":
            acc = acc / np.maximum(count, 1)
    return np.where(count > 0, acc, np.nan)


class SchemaError(ValueError):
    """A JSONL line is not an amlx attribution record of a version this amlx can read."""


@dataclass
class Attribution:
    """Scores of one method on one example. Per-token arrays are ``[tokens]``; only attributable tokens carry meaning.

    Construction validates: every per-token field has ``len(tokens)`` entries, and scores are finite (a NaN or
    inf score raises ``ValueError`` naming the method and the example, since a ranking over NaN is undefined).
    """

    text: str
    tokens: list[str]  # token strings as the explained model's tokenizer writes them, specials included
    input_ids: list[int]  # the explained model's ids for ``tokens``, no padding
    scores: np.ndarray  # float [tokens]; non-attributable positions are 0 by convention
    attributable: np.ndarray  # bool [tokens]: text tokens (no specials, prompt or padding)
    offsets: np.ndarray  # int [tokens, 2]: character spans into ``text``; (0, 0) where not attributable
    word_ids: np.ndarray  # int [tokens]: index into ``word_spans``, -1 where the token is in no word
    target: int  # class index the scores explain
    target_label: str
    probs: np.ndarray  # float [classes]: the explained model's probabilities on the unperturbed input
    method: str
    variant: str = ""
    seconds: float = 0.0  # wall-clock seconds the method spent on this example
    word_spans: list[tuple[int, int]] | None = None  # [start, end) per word; computed from ``text`` when None
    ground_truth: np.ndarray | None = None  # bool [tokens]: planted tokens or a human rationale
    example_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    segments: list[tuple[int, int]] | None = None  # a pair's [start, end) of text and text_pair in ``text``

    def __post_init__(self) -> None:
        self.tokens = list(self.tokens)
        self.input_ids = [int(i) for i in self.input_ids]
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.attributable = np.asarray(self.attributable, dtype=bool).reshape(-1)
        self.offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1, 2)
        self.word_ids = np.asarray(self.word_ids, dtype=np.int64).reshape(-1)
        self.probs = np.asarray(self.probs, dtype=np.float64).reshape(-1)
        self.target = int(self.target)
        if self.word_spans is None:
            self.word_spans = text_word_spans(self.text)
        self.word_spans = [(int(s), int(e)) for s, e in self.word_spans]
        if self.ground_truth is not None:
            self.ground_truth = np.asarray(self.ground_truth, dtype=bool).reshape(-1)
        if self.segments is not None:
            self.segments = [(int(s), int(e)) for s, e in self.segments]
            bounds = [b for span in self.segments for b in span]
            if len(self.segments) != 2 or bounds != sorted(bounds) or bounds[0] < 0 or bounds[-1] > len(self.text):
                raise ValueError(
                    f"{self.where()}: segments {self.segments} are not the two ordered spans of a pair inside its "
                    f"text of {len(self.text)} characters"
                )
        n = len(self.tokens)
        per_token = {"scores": self.scores, "input_ids": self.input_ids, "attributable": self.attributable,
                     "offsets": self.offsets, "word_ids": self.word_ids}  # fmt: skip
        if self.ground_truth is not None:
            per_token["ground_truth"] = self.ground_truth
        for name, arr in per_token.items():
            if len(arr) != n:
                raise ValueError(
                    f"{self.where()}: {name} has {len(arr)} entries but the example has {n} tokens; an attribution "
                    "needs exactly one value per token of the explained model (specials included, padding excluded)"
                )
        if not np.isfinite(self.scores).all():
            bad = int((~np.isfinite(self.scores)).sum())
            raise ValueError(
                f"{self.where()}: {bad} of {n} scores are NaN or infinite; the method produced an undefined "
                "attribution (check its numerics, e.g. a division by zero or an fp16 overflow)"
            )
        if not 0 <= self.target < len(self.probs):
            raise ValueError(
                f"{self.where()}: target {self.target} is not a class of probs ({len(self.probs)} classes)"
            )
        if self.word_ids.max(initial=-1) >= len(self.word_spans):
            raise ValueError(
                f"{self.where()}: word_ids refer to word {self.word_ids.max()} of {len(self.word_spans)}"
            )

    def where(self) -> str:
        """'method <name> on example <id or text start>', for error messages."""
        example = repr(self.example_id if self.example_id is not None else self.text[:40])
        name = f"{self.method}/{self.variant}" if self.variant else self.method
        return f"method {name!r} on example {example}"

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_attributable(self) -> int:
        return int(self.attributable.sum())

    @property
    def words(self) -> list[str]:
        return [self.text[s:e] for s, e in self.word_spans]

    def word_scores(self, agg: str = "max") -> np.ndarray:
        """Scores aggregated over each word's attributable tokens: [words]; NaN for a word with no token."""
        sel = self.attributable & (self.word_ids >= 0)
        return aggregate(self.word_ids[sel], self.scores[sel], len(self.word_spans), agg)

    def segment_ids(self) -> np.ndarray:
        """Int [tokens]: the segment (0 = text, 1 = text_pair) of each attributable token, -1 elsewhere; 0 for a text."""
        out = np.where(self.attributable, 0, -1)
        if self.segments is not None:
            out[self.attributable & (self.offsets[:, 0] >= self.segments[1][0])] = 1
        return out

    def spans_to_tokens(self, spans: list[tuple[int, int]]) -> np.ndarray:
        """Bool [tokens]: attributable tokens overlapping any character span ``[start, end)`` of ``text``."""
        mask = np.zeros(len(self), dtype=bool)
        for s, e in spans:
            mask |= (self.offsets[:, 0] < e) & (self.offsets[:, 1] > s)
        return mask & self.attributable

    # ------------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """A JSON-ready dict in schema ``amlx.attribution/1`` (``segments`` only for pairs)."""
        d = {
            "schema": SCHEMA,
            "example_id": self.example_id,
            "text": self.text,
            "tokens": self.tokens,
            "input_ids": self.input_ids,
            "scores": self.scores.tolist(),
            "attributable": self.attributable.astype(int).tolist(),
            "offsets": self.offsets.tolist(),
            "word_ids": self.word_ids.tolist(),
            "word_spans": [list(s) for s in self.word_spans],
            "target": self.target,
            "target_label": self.target_label,
            "probs": self.probs.tolist(),
            "method": self.method,
            "variant": self.variant,
            "seconds": self.seconds,
            "ground_truth": None if self.ground_truth is None else self.ground_truth.astype(int).tolist(),
            "meta": self.meta,
        }
        if self.segments is not None:
            d["segments"] = [list(s) for s in self.segments]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Attribution:
        """Inverse of ``to_dict``; rejects records of another schema version."""
        check_schema(d.get("schema"))
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}  # unknown fields (later additive versions) are ignored
        if kw.get("word_spans") is not None:
            kw["word_spans"] = [tuple(s) for s in kw["word_spans"]]
        return cls(**kw)


def check_schema(schema: str | None, where: str = "record") -> None:
    if schema == SCHEMA:
        return
    if isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX):
        raise SchemaError(
            f"{where} has schema {schema!r}, but this amlx reads only {SCHEMA!r}; it was written by another amlx "
            "version — upgrade amlx (pip install -U amlx) or re-run the method to regenerate the file"
        )
    raise SchemaError(
        f"{where} is not an amlx attribution record (schema field {schema!r}, expected {SCHEMA!r})"
    )


def save_jsonl(records: list[Attribution], path: str | Path, append: bool = False) -> Path:
    """Write records as JSONL (one ``amlx.attribution/1`` object per line); ``append`` adds to an existing file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    return path


def load_jsonl(path: str | Path) -> list[Attribution]:
    """Read records written by ``save_jsonl``; an unknown schema version raises ``SchemaError`` naming the line."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            check_schema(d.get("schema"), where=f"{path}:{i}")
            out.append(Attribution.from_dict(d))
    return out


def records_from_encoded(
    enc,
    tokenizer,
    scores: Tensor,
    targets: Tensor,
    probs: Tensor,
    labels: list[str],
    method: str,
    variant: str = "",
    seconds: float | list[float] = 0.0,
    meta: dict | None = None,
) -> list[Attribution]:
    """One record per row of an ``Encoded`` batch; ``scores``: [batch, tokens], padding stripped (right padding).

    Non-attributable positions get score 0, so records never carry meaning outside the text.
    """
    scores = (scores.detach().double().cpu() * enc.attributable.cpu()).numpy()
    lengths = enc.attention_mask.sum(1).tolist()
    secs = seconds if isinstance(seconds, list) else [float(seconds)] * len(enc)
    out = []
    for b, n in enumerate(lengths):
        ids = enc.input_ids[b, :n].tolist()
        t = int(targets[b])
        out.append(
            Attribution(
                text=enc.texts[b],
                tokens=tokenizer.convert_ids_to_tokens(ids),
                input_ids=ids,
                scores=scores[b, :n],
                attributable=enc.attributable[b, :n].cpu().numpy(),
                offsets=enc.offsets[b, :n].cpu().numpy(),
                word_ids=enc.word_ids[b, :n].cpu().numpy(),
                target=t,
                target_label=labels[t],
                probs=probs[b].detach().float().cpu().numpy(),
                method=method,
                variant=variant,
                seconds=secs[b],
                meta=dict(meta or {}),
                segments=None if enc.segments is None else enc.segments[b],
            )
        )
    return out
