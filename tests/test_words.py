"""Specification of word segmentation (``word_spans``) and token → word grouping (``token_word_ids``)."""

from __future__ import annotations

import numpy as np
import pytest

from amlx.words import token_word_ids, word_spans


def words(text: str) -> list[str]:
    return [text[s:e] for s, e in word_spans(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("don't stop", [(0, 5), (6, 10)]),  # contraction: one word
        ("It’s fine", [(0, 4), (5, 9)]),  # typographic apostrophe too
        ("a well-made, well-acted film", [(0, 1), (2, 11), (11, 12), (13, 23), (24, 28)]),  # hyphenated words
        ("Wow!!! Really?!", [(0, 3), (3, 6), (7, 13), (13, 15)]),  # a punctuation run is one word
        ("x -- y", [(0, 1), (2, 4), (5, 6)]),  # a dash between spaces is punctuation, not a joiner
        ("2 hours, 10/10", [(0, 1), (2, 7), (7, 8), (9, 11), (11, 12), (12, 14)]),  # numbers are words
        ("café naïve", [(0, 4), (5, 10)]),  # non-ASCII letters are word characters
        ("cafe\u0301 nai\u0308ve", [(0, 5), (6, 12)]),  # decomposed accents stay inside their word
        ("a   b", [(0, 1), (4, 5)]),  # repeated spaces
        ("  padded  ", [(2, 8)]),  # leading and trailing spaces
        ("tab\tnew\nline", [(0, 3), (4, 7), (8, 12)]),
        ("great 😀", [(0, 5), (6, 7)]),  # a symbol is a word of its own
        ("", []),
        ("   ", []),
    ],
)
def test_word_spans_exact(text, expected):
    assert word_spans(text) == expected


def test_word_spans_of_a_review_sentence():
    text = "I didn't like it: the café's 2 hours were   dull -- well-made, though!"
    assert words(text) == [
        "I", "didn't", "like", "it", ":", "the", "café's", "2", "hours", "were", "dull", "--", "well-made", ",",
        "though", "!",
    ]  # fmt: skip


def test_word_spans_are_ordered_disjoint_and_cover_every_non_space_character():
    text = "A slow,   dull   and   forgettable sequel... 1/10, ça alors!"
    spans = word_spans(text)
    assert all(s < e for s, e in spans)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    covered = {i for s, e in spans for i in range(s, e)}
    assert covered == {i for i, ch in enumerate(text) if not ch.isspace()}


def ids(offsets, spans, valid=None) -> list[int]:
    offsets = np.array(offsets, dtype=np.int64).reshape(-1, 2)
    valid = np.ones(len(offsets), bool) if valid is None else np.array(valid, bool)
    return token_word_ids(offsets, spans, valid).tolist()


# "unforgettable film!" words: unforgettable (0, 13), film (14, 18), ! (18, 19)
SPANS = [(0, 13), (14, 18), (18, 19)]


def test_token_word_ids_group_word_pieces():
    # [CLS] un ##forget ##table film ! [SEP]
    offsets = [(0, 0), (0, 2), (2, 8), (8, 13), (14, 18), (18, 19), (0, 0)]
    valid = [False, True, True, True, True, True, False]
    assert ids(offsets, SPANS, valid) == [-1, 0, 0, 0, 1, 2, -1]


def test_token_with_leading_space_belongs_to_the_following_word():
    # byte-level BPE without trimmed offsets: "Ġfilm" covers the space before "film"
    assert ids([(0, 13), (13, 18), (18, 19)], SPANS) == [0, 1, 2]


def test_whitespace_only_and_empty_tokens_belong_to_no_word():
    # "a   b": words (0, 1), (4, 5); a "ĠĠ" piece (1, 3) and a zero-width piece (3, 3)
    assert ids([(0, 1), (1, 3), (3, 3), (3, 5)], [(0, 1), (4, 5)]) == [0, -1, -1, 1]


def test_token_spanning_two_words_belongs_to_the_first():
    assert ids([(10, 16)], SPANS) == [0]


def test_invalid_tokens_belong_to_no_word_even_when_they_overlap_one():
    assert ids([(0, 2), (2, 8)], SPANS, [False, True]) == [-1, 0]


def test_tokens_past_the_last_word_belong_to_no_word():
    assert ids([(18, 19), (19, 21)], SPANS) == [2, -1]


def test_no_words_or_no_tokens():
    assert ids([(0, 3)], []) == [-1]
    assert ids([], SPANS) == []


def test_token_word_ids_agree_with_word_spans_on_a_text():
    text = "don't   stop"
    # pieces: "don" "'t" "ĠĠ" "Ġstop" (offsets of a byte-level tokenizer with untrimmed offsets)
    assert ids([(0, 3), (3, 5), (5, 7), (7, 12)], word_spans(text)) == [0, 0, -1, 1]
