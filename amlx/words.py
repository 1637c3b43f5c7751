"""Word segmentation with character offsets, and token → word grouping by offsets."""

from __future__ import annotations

import re
import unicodedata

import numpy as np

# Python's \w leaves out combining marks (category M), which would split decomposed "cafe\u0301" or Hindi
# "हिन्दी" at every accent or vowel sign: word characters are \w plus the marks of the Basic Multilingual Plane.
_MARKS = "".join(chr(c) for c in range(0x10000) if unicodedata.category(chr(c))[0] == "M")
_W = rf"[\w{_MARKS}]"
# A word is a run of word characters, optionally joined by apostrophes or hyphens ("don't", "well-made");
# every other non-space run (punctuation, symbols) is a word of its own.
WORD_RE = re.compile(rf"{_W}+(?:['’\-]{_W}+)*|[^\w\s{_MARKS}]+", re.UNICODE)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the words of ``text``, in order."""
    return [m.span() for m in WORD_RE.finditer(text)]


def token_word_ids(offsets: np.ndarray, spans: list[tuple[int, int]], valid: np.ndarray) -> np.ndarray:
    """Word index of each token (the word its span starts in or first overlaps), -1 where none.

    offsets: [tokens, 2] character spans; valid: [tokens] bool (False for specials, prompt and padding).
    """
    out = np.full(len(offsets), -1, dtype=np.int64)
    if not spans or len(offsets) == 0:
        return out
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    tok_s, tok_e = offsets[:, 0], offsets[:, 1]
    # first word whose end lies after the token's start; it overlaps the token iff it starts before its end
    idx = np.searchsorted(ends, tok_s, side="right")
    inside = idx < len(spans)
    idx_c = np.minimum(idx, len(spans) - 1)
    overlaps = inside & (starts[idx_c] < tok_e) & (tok_e > tok_s) & valid
    out[overlaps] = idx_c[overlaps]
    return out
