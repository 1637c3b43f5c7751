"""Sentence pairs (NLI premise and hypothesis) as model inputs and as one display text.

An explained model reads a ``TextPair`` the way it was fine-tuned on pairs: ``tokenizer(text, text_pair)`` for
classifiers (specials and separators from the tokenizer's own pair template), the template's ``{text}`` and
``{text_pair}`` slots for prompted LMs. Records, renderers, word spans and the attributors' own tokenizers see one
string, ``pair.joined = text + PAIR_JOIN + text_pair``, with the character spans of the two segments kept as
``segments`` (``Encoded.segments``, ``Attribution.segments``): offsets of hypothesis tokens point into the joined
string, and no word ever straddles the two segments (the join is whitespace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PAIR_JOIN = "\n"

Segments = tuple[tuple[int, int], tuple[int, int]]  # character spans [start, end) of text and text_pair in joined


@dataclass(frozen=True)
class TextPair:
    """A sentence pair: ``text`` (premise, first segment) and ``text_pair`` (hypothesis, second segment)."""

    text: str
    text_pair: str

    @property
    def joined(self) -> str:
        """The one string records and renderers show: ``text + PAIR_JOIN + text_pair``."""
        return self.text + PAIR_JOIN + self.text_pair

    @property
    def segments(self) -> Segments:
        """Character spans of the two segments in ``joined``."""
        start = len(self.text) + len(PAIR_JOIN)
        return (0, len(self.text)), (start, start + len(self.text_pair))

    @classmethod
    def from_joined(cls, joined: str, segments: Sequence[Sequence[int]]) -> TextPair:
        """Inverse of ``joined`` / ``segments`` (e.g. from a record's ``text`` and ``segments``)."""
        (s0, e0), (s1, e1) = segments
        return cls(joined[s0:e0], joined[s1:e1])


Input = str | TextPair  # one example as an explained model reads it


def display_text(item: Input) -> str:
    """The string shown and stored for an input: the text itself, or a pair's joined text."""
    return item.joined if isinstance(item, TextPair) else item


def inputs_of(rows: Mapping) -> list[Input]:
    """The inputs of a table or a batch with a ``text`` column and, for pairs, a ``text_pair`` column."""
    texts = list(rows["text"])
    has_pair = "text_pair" in (rows.column_names if hasattr(rows, "column_names") else rows)
    if not has_pair:
        return texts
    return [TextPair(t, p) for t, p in zip(texts, rows["text_pair"])]
