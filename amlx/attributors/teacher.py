"""Amortization from a teacher: fit the attributor's map to the saved maps of any registered method.

Stochastic amortization (methods.md "Additions" §6; Covert et al. 2024, Yang et al. 2023) fits an explainer
φ(x; θ) to per-instance estimates ã(x) of another method, min_θ E‖φ(x; θ) − ã(x)‖². Here φ is the AML head's
pre-sigmoid score s (its sigmoid is the AML mask a, so both rank tokens alike) and the teacher maps are
attribution records (JSONL, ``amlx.attribution/1``) that ``explain.py explain`` computed once on the training
split. A teacher's scale is arbitrary (occlusion is a probability drop, Kernel SHAP a Shapley value), so both
sides are standardized per example over the attributor's text tokens before they are compared:

- ``zmse``: mean over tokens of (z(s) − z(t))² — zero iff s = α·t + β with α > 0 (Yang et al.'s normalized target);
- ``listnet``: KL(softmax(z(t)/τ) ‖ softmax(z(s)/τ)) over the tokens of an example — a listwise rank loss, zero
  iff z(s) = z(t);
- ``zmse+listnet``: their sum (regression on the values plus the order of the top of the list).

Teacher scores live on the explained model's tokens; they are moved to the attributor's tokens by character
offsets (``amlx.align``), so an attributor with another tokenizer (MiniLM explaining SmolLM2) reads them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from amlx.align import align_scores
from amlx.records import Attribution, load_jsonl

TEACHER_LOSSES = ("zmse", "listnet", "zmse+listnet")
_STD_EPS = 1e-6


class TeacherMismatchError(ValueError):
    """Teacher records that were made for another explained model, another text, or another split."""


def standardize(x: Tensor, valid: Tensor) -> Tensor:
    """Per-row z-scores over the ``valid`` entries of ``x`` [batch, n] (0 elsewhere; 0 for a constant row)."""
    v = valid.to(x.dtype)
    n = v.sum(-1, keepdim=True).clamp_min(1)
    mean = (x * v).sum(-1, keepdim=True) / n
    var = (((x - mean) * v) ** 2).sum(-1, keepdim=True) / n
    return (x - mean) / (var + _STD_EPS).sqrt() * v


def teacher_loss(scores: Tensor, teacher: Tensor, valid: Tensor, kind: str = "zmse", temperature: float = 1.0) -> Tensor:
    """Per-example distance between the attributor's ``scores`` and the ``teacher`` map, both [batch, n]: [batch].

    ``valid`` [batch, n] bool marks the tokens compared; rows with fewer than two valid tokens, or a constant
    teacher, carry no ranking and give 0. The teacher is a constant target: no gradient flows into it.
    """
    if kind not in TEACHER_LOSSES:
        raise ValueError(f"teacher_loss must be one of {TEACHER_LOSSES}, got {kind!r}")
    if temperature <= 0:
        raise ValueError(f"teacher_temperature must be > 0, got {temperature}")
    valid = valid.bool()
    teacher = teacher.detach().to(scores.dtype)
    zt = standardize(teacher, valid)
    informative = (valid.sum(-1) >= 2) & (zt.abs() * valid).sum(-1).gt(0)  # [batch]
    zs = standardize(scores, valid)
    n = valid.sum(-1).clamp_min(1)
    loss = torch.zeros_like(n, dtype=scores.dtype)
    if kind in ("zmse", "zmse+listnet"):
        loss = loss + ((zs - zt) ** 2 * valid).sum(-1) / n
    if kind in ("listnet", "zmse+listnet"):
        neg = torch.finfo(scores.dtype).min
        log_p = (zt / temperature).masked_fill(~valid, neg).log_softmax(-1)
        log_q = (zs / temperature).masked_fill(~valid, neg).log_softmax(-1)
        loss = loss + (log_p.exp() * (log_p - log_q) * valid).sum(-1)
    return torch.where(informative, loss, torch.zeros_like(loss))


@dataclass
class TeacherBatch:
    """Teacher maps of a batch on the explained model's tokens, padded: ``scores`` / ``valid`` [batch, tokens]."""

    scores: Tensor
    offsets: Tensor  # [batch, tokens, 2] character spans into each text
    valid: Tensor  # bool: attributable tokens of the teacher's record

    @classmethod
    def from_rows(cls, rows: list[dict]) -> TeacherBatch:
        """From the ``teacher`` entries of a data-module batch (``teacher_row`` dicts)."""
        width = max(len(r["scores"]) for r in rows)
        scores = torch.zeros(len(rows), width)
        offsets = torch.zeros(len(rows), width, 2, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            k = len(r["scores"])
            scores[i, :k] = torch.tensor(r["scores"], dtype=torch.float32)
            offsets[i, :k] = torch.tensor(r["offsets"], dtype=torch.long).reshape(k, 2)
            valid[i, :k] = torch.tensor(r["attributable"], dtype=torch.bool)
        return cls(scores, offsets, valid)

    def on_tokens(self, offsets: Tensor, valid: Tensor) -> Tensor:
        """The teacher scores moved onto other tokens (``offsets`` [batch, n, 2], ``valid`` [batch, n]): [batch, n]."""
        dev = offsets.device
        return align_scores(self.scores.to(dev), self.offsets.to(dev), self.valid.to(dev), offsets, valid, "mean")


def teacher_row(record: Attribution) -> dict:
    """What a data-module row carries of a teacher record (plain lists, so the default collate keeps them)."""
    return {
        "scores": record.scores.tolist(),
        "offsets": record.offsets.tolist(),
        "attributable": record.attributable.tolist(),
        "input_ids": list(record.input_ids),
        "model": record.meta.get("model"),
        "method": record.method,
        "text": record.text,
    }


def teacher_files(path: str | Path) -> list[Path]:
    """``path`` and the files the other ranks of a distributed ``explain`` wrote beside it.

    ``explain.py explain --trainer.devices N --trainer.strategy ddp`` writes ``attributions.jsonl`` from rank 0 and
    ``attributions.rank<r>.jsonl`` from rank r; the teacher is all of them, so naming rank 0's file is enough.
    """
    from amlx.jobs.run_files import rank_files

    p = Path(path)
    found = rank_files(p.parent, p.name[: -len(".jsonl")]) if p.name.endswith(".jsonl") else []
    return found if p in found else [p, *found]  # a missing path: load_jsonl names it


def load_teacher(path: str, method: str | None = None) -> dict[str, Attribution]:
    """Teacher records by example id from an attribution JSONL and its rank files (``teacher_files``); ``method``
    picks one method of a mixed file. An example id met twice with different maps is refused."""
    records = [r for f in teacher_files(path) for r in load_jsonl(f)]
    methods = sorted({r.method for r in records})
    if method is None:
        if len(methods) > 1:
            raise TeacherMismatchError(f"{path} holds maps of several methods {methods}: set teacher_method to one")
    else:
        if method not in methods:
            raise TeacherMismatchError(f"{path} has no maps of method {method!r}; it holds {methods}")
        records = [r for r in records if r.method == method]
    out: dict[str, Attribution] = {}
    for r in records:
        if r.example_id is None:
            raise TeacherMismatchError(
                f"a record in {path} has no example_id: teacher maps must come from `explain.py explain` over a "
                "dataset split (dataset=..., split=train), which stamps <dataset>/<split>/<index> ids"
            )
        if r.meta.get("model") is None:
            raise TeacherMismatchError(
                f"record {r.example_id} in {path} does not name the model it explains (meta.model); recompute the "
                "teacher maps with `explain.py explain`"
            )
        seen = out.get(r.example_id)
        if seen is not None and not (seen.method == r.method and np.array_equal(seen.scores, r.scores)):
            raise TeacherMismatchError(
                f"example {r.example_id} has two different teacher maps in {[str(f) for f in teacher_files(path)]}; "
                "keep one file per run (a concatenation of shards beside the rank files of a distributed run?)"
            )
        out[r.example_id] = r
    return out


def check_teacher(rows: list[dict], explained, enc) -> None:
    """Refuse teacher rows made for another explained model or text than the batch ``enc`` of ``explained``."""
    for i, r in enumerate(rows):
        if r["model"] != explained.name:
            raise TeacherMismatchError(
                f"teacher maps ({r['method']}) were computed for {r['model']!r}, but this attributor explains "
                f"{explained.name!r}; compute them with `explain.py explain --model {explained.name}`"
            )
        if r["text"] != enc.texts[i]:
            raise TeacherMismatchError(
                f"a teacher record's text {r['text'][:60]!r} differs from the training text {enc.texts[i][:60]!r}"
            )
        ids = enc.input_ids[i][enc.attention_mask[i].bool()].tolist()
        if ids != r["input_ids"]:
            raise TeacherMismatchError(
                f"the teacher record of {r['text'][:60]!r} holds other token ids than {explained.name!r} gives: it "
                "was computed for another tokenizer or model; recompute the teacher maps for this model"
            )
