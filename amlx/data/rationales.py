"""Human rationales (e-SNLI's highlighted words, ERASER evidence) as character spans and as ground-truth tokens.

A rationale column holds, per row, the highlighted words of one segment (the text, or a pair's text_pair) as
indices of its whitespace-separated words, in any of these forms: a list of indices ``[0, 3]``; e-SNLI's
comma-separated string ``"0,3"`` (``"{}"``, ``""`` or null: none highlighted); ERASER evidence token spans
``[[start, end], ...]`` (end exclusive) or ``[{"start_token": s, "end_token": e, ...}, ...]``. A highlighted word is
the character span of that whitespace-separated word without the punctuation around it ("truck." → "truck").
Tables keep them as ``rationale``: ``[[segment, start, end], ...]``, character spans relative to each segment, so
that they stay right when the explained model truncates a segment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from amlx.errors import UserError
from amlx.records import Attribution

_INNER = re.compile(r"\w(?:.*\w)?", re.DOTALL)  # a whitespace-separated word from its first to its last word character


class DatasetRationaleError(UserError, ValueError):
    """A rationale column value that is not a list of word indices or spans, or points past its segment's words."""


def word_indices(value, where: str) -> list[int]:
    """The highlighted word indices of one rationale value (see module docstring), sorted and unique."""
    if value is None or (isinstance(value, float) and math.isnan(value)):  # an empty CSV cell
        return []
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):  # a CSV column of single indices
        return [int(value)]
    if isinstance(value, str):
        value = value.strip().strip("{}[]")
        try:
            return sorted({int(v) for v in value.split(",") if v.strip()})
        except ValueError:
            raise DatasetRationaleError(
                f"{where}: rationale {value!r} is not a comma-separated list of word indices (e-SNLI form: '0,3,5')"
            ) from None
    out: set[int] = set()
    for item in value:
        if isinstance(item, dict) and {"start_token", "end_token"} <= item.keys():
            item = (item["start_token"], item["end_token"])
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            out.add(int(item))
        elif isinstance(item, Sequence) and len(item) == 2 and all(isinstance(v, (int, np.integer)) for v in item):
            out.update(range(int(item[0]), int(item[1])))
        else:
            raise DatasetRationaleError(
                f"{where}: rationale item {item!r} is neither a word index, a [start, end) word span nor an ERASER "
                "evidence with start_token / end_token"
            )
    return sorted(out)


def highlighted_spans(text: str, indices: list[int], where: str) -> list[tuple[int, int]]:
    """Character spans [start, end) in ``text`` of its whitespace-separated words ``indices``, punctuation trimmed."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    bad = [i for i in indices if not 0 <= i < len(words)]
    if bad:
        raise DatasetRationaleError(
            f"{where}: rationale word index {bad[0]} is out of range: {text[:60]!r} has {len(words)} "
            f"whitespace-separated words (indices 0..{len(words) - 1})"
        )
    spans = []
    for i in indices:
        s, e = words[i]
        inner = _INNER.search(text, s, e)
        spans.append(inner.span() if inner else (s, e))
    return spans


def rationale_tokens(record: Attribution, spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Bool [tokens]: the record's attributable tokens covered by ``spans`` ([segment, start, end] per segment).

    Spans move into the record's text by its segments (a pair's joined text); parts a truncation cut off are dropped.
    """
    bounds = record.segments or [(0, len(record.text))]
    chars = []
    for seg, s, e in spans:
        if seg >= len(bounds):
            raise DatasetRationaleError(
                f"{record.where()}: a rationale of segment {seg} for a record with {len(bounds)} segment(s)"
            )
        start, end = bounds[seg]
        if start + s < end:
            chars.append((start + s, min(start + e, end)))
    return record.spans_to_tokens(chars)
