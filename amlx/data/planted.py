"""Planted-token ground truth (thesis §3.1): randomize labels, insert the label's class word, record where.

A classifier trained on such data can only succeed by reading the planted word, so a faithful attribution
must rank it first. The planted span is stored as character offsets ``planted_start`` / ``planted_end``.
"""

from __future__ import annotations

import datasets
import numpy as np

from amlx.words import word_spans


def plant(
    ds: datasets.Dataset,
    class_words: list[str] | tuple[str, ...],
    position: str = "end",
    seed: int = 0,
) -> datasets.Dataset:
    """Return ``ds`` with seeded random labels and the label's class word inserted at the end or at random."""
    if position not in ("end", "random"):
        raise ValueError(f"position must be 'end' or 'random', got {position!r}")
    rng = np.random.default_rng(seed)
    new_labels = rng.integers(0, len(class_words), size=len(ds))
    picks = rng.random(size=len(ds))

    def insert(row: dict, idx: int) -> dict:
        text, word = row["text"], class_words[int(new_labels[idx])]
        if position == "end":
            sep = "" if text.endswith(" ") else " "
            start = len(text) + len(sep)
            out = text + sep + word
        else:
            # insert before a uniformly chosen word boundary (or at the end)
            bounds = [s for s, _ in word_spans(text)] + [len(text)]
            at = bounds[int(picks[idx] * len(bounds))]
            if at == len(text):
                sep = "" if text.endswith(" ") else " "
                start, out = at + len(sep), text + sep + word
            else:
                # a space before the word too when the boundary follows a non-space ("happiness." → "happiness
                # positive ."): glued to its neighbour, the class word would not be a word of its own
                sep = " " if at > 0 and not text[at - 1].isspace() else ""
                start, out = at + len(sep), text[:at] + sep + word + " " + text[at:]
        return {"text": out, "label": int(new_labels[idx]), "planted_start": start, "planted_end": start + len(word)}

    return ds.map(insert, with_indices=True)
