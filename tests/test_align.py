"""Tokenizer mapping by character offsets (amlx/align.py; methods.md "Tokenizer mapping")."""

from __future__ import annotations

import pytest
import torch

from amlx.align import align_scores, alignment
from tests.tiny import TEXTS, TOKENIZERS, tiny_tokenizer

TEXT = "I don't  like the 21st café!!"


def spans(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets [batch, tokens, 2] and valid text tokens [batch, tokens] of a fresh tokenizer copy (right padding)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    enc = tok(list(texts), return_offsets_mapping=True, return_special_tokens_mask=True, padding=True,
              return_tensors="pt")  # fmt: skip
    off = enc["offset_mapping"]
    valid = ~enc["special_tokens_mask"].bool() & enc["attention_mask"].bool() & (off[..., 1] > off[..., 0])
    return off, valid


def numbered_scores(valid: torch.Tensor) -> torch.Tensor:
    """s_i = i / 100 on the i-th valid token (1-based), 0 elsewhere: [batch, tokens]."""
    return valid.long().cumsum(-1) * valid / 100.0


def wordpiece_source(text: str = TEXT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # WordPiece valid tokens of TEXT: i don ' t l ##i ##k ##e the 2 ##1 ##s ##t cafe ! !  → s1 … s16
    off, valid = spans(tiny_tokenizer("bert"), [text])
    assert int(valid.sum()) == 16
    return off, valid, numbered_scores(valid)


def mapped(tgt_tok, reduce: str = "max") -> list[float]:
    src_off, src_valid, scores = wordpiece_source()
    tgt_off, tgt_valid = spans(tgt_tok, [TEXT])
    out = align_scores(scores, src_off, src_valid, tgt_off, tgt_valid, reduce)
    return [round(v * 100, 4) for v in out[0][tgt_valid[0]].tolist()]  # back to source indices


@pytest.mark.parametrize("arch", sorted(TOKENIZERS))
def test_identical_tokenizers_map_exactly_to_identity(arch):
    off, valid = spans(tiny_tokenizer(arch), list(TEXTS) + [TEXT])
    scores = torch.rand(valid.shape) * valid
    out = align_scores(scores, off, valid, off, valid)
    assert torch.equal(out, scores)


def test_wordpiece_to_byte_level_bpe_replicates_splits_maxes_merges_and_fills_whitespace_from_next_token():
    # byte-level BPE: I Ġd on 't Ġ Ġl i k e Ġthe Ġ2 1 st Ġca fé !!
    # "don" → Ġd, on (replicate); "'t" ← ', t (max); lone "Ġ" (extra space) overlaps nothing → next token Ġl;
    # "st" ← ##s, ##t (max); "café" → Ġca, fé; "!!" ← !, ! (max)
    assert mapped(tiny_tokenizer("gpt2")) == [1, 2, 2, 4, 5, 5, 6, 7, 8, 9, 10, 11, 13, 14, 14, 16]


def test_wordpiece_to_metaspace_unigram_replicates_into_smaller_pieces():
    # Metaspace unigram: <s> ▁I ▁d o n't ▁ ▁l i k e ▁t he ▁2 1 st ▁ca fé !!
    # "don" → ▁d, o and "the" → ▁t, he (replicate); "n't" ← don, ', t (max); "▁" → next token ▁l
    assert mapped(tiny_tokenizer("mistral")) == [1, 2, 2, 4, 5, 5, 6, 7, 8, 9, 9, 10, 11, 13, 14, 14, 16]


def test_wordpiece_to_metaspace_bpe_takes_max_or_mean_of_merged_tokens():
    # Metaspace BPE: <s> ▁I ▁d on't ▁ ▁l i k e ▁the ▁2 1 st ▁ca fé !!   ("on't" ← don, ', t)
    assert mapped(tiny_tokenizer("llama")) == [1, 2, 4, 5, 5, 6, 7, 8, 9, 10, 11, 13, 14, 14, 16]
    mean = mapped(tiny_tokenizer("llama"), reduce="mean")
    assert mean[2] == 3.0  # (s2 + s3 + s4) / 3
    assert mean[11] == 12.5  # "st": (s12 + s13) / 2
    assert mean[-1] == 15.5  # (s15 + s16) / 2


def test_unaligned_target_tokens_take_the_nearest_aligned_neighbour_ties_to_the_right():
    src = torch.tensor([[0, 3], [6, 9]])
    tgt = torch.tensor([[0, 3], [3, 4], [4, 5], [5, 6], [6, 9], [9, 10], [10, 11]])
    scores = torch.tensor([0.2, 0.7])
    out = align_scores(scores, src, torch.ones(2, dtype=torch.bool), tgt, torch.ones(7, dtype=torch.bool))
    # [3,4] is nearer the left token, [4,5] ties (→ right), [5,6] is nearer the right one; the tail copies the left
    assert out.tolist() == pytest.approx([0.2, 0.2, 0.7, 0.7, 0.7, 0.7, 0.7])


def test_invalid_target_tokens_get_zero_and_padding_changes_nothing():
    src_off, src_valid = spans(tiny_tokenizer("bert"), [TEXT, "A good movie."])
    tgt_off, tgt_valid = spans(tiny_tokenizer("gpt2"), [TEXT, "A good movie."])
    scores = numbered_scores(src_valid)
    out = align_scores(scores, src_off, src_valid, tgt_off, tgt_valid)
    assert (out[~tgt_valid] == 0).all()
    n_src, n_tgt = int(src_valid[1].sum()) + 2, int(tgt_valid[1].sum())  # WordPiece row: [CLS] … [SEP]
    alone = align_scores(scores[1:, :n_src], src_off[1:, :n_src], src_valid[1:, :n_src], tgt_off[1:, :n_tgt],
                         tgt_valid[1:, :n_tgt])  # fmt: skip
    assert torch.equal(out[1:, :n_tgt], alone)


def test_gradient_reaches_each_source_token_once_per_target_token_it_feeds():
    src_off, src_valid, scores = wordpiece_source()
    scores = scores.clone().requires_grad_(True)
    tgt_off, tgt_valid = spans(tiny_tokenizer("gpt2"), [TEXT])
    align_scores(scores, src_off, src_valid, tgt_off, tgt_valid)[tgt_valid].sum().backward()
    grad = scores.grad[src_valid].tolist()
    # s2 feeds Ġd, on; s3 loses the max to s4 in 't; s5 feeds Ġ, Ġl; s12 loses to s13 in st; s14 feeds Ġca, fé;
    # s15 loses to s16 in !!
    assert grad == [1, 2, 0, 1, 2, 1, 1, 1, 1, 1, 1, 0, 1, 2, 0, 1]


def test_alignment_matrix_is_batched_and_boolean():
    src_off, src_valid = spans(tiny_tokenizer("bert"), list(TEXTS))
    tgt_off, tgt_valid = spans(tiny_tokenizer("llama"), list(TEXTS))
    a = alignment(src_off, src_valid, tgt_off, tgt_valid)
    assert a.shape == (len(TEXTS), tgt_off.shape[1], src_off.shape[1]) and a.dtype == torch.bool
    assert torch.equal(a.any(-1), tgt_valid)  # every text token reads something, nothing else does


def test_identical_spans_pair_one_to_one_even_when_byte_pieces_share_a_character():
    # byte-level BPE can split "é" into two byte tokens with the same span; identity must still hold exactly
    off = torch.tensor([[0, 3], [3, 4], [3, 4], [4, 6]])
    valid = torch.ones(4, dtype=torch.bool)
    scores = torch.tensor([0.1, 0.9, 0.3, 0.5])
    assert torch.equal(align_scores(scores, off, valid, off, valid), scores)


def test_mean_merge_gives_finite_gradients_where_target_tokens_read_nothing():
    # AML trains through the mapping: target rows with no source token (specials, padding) must not make NaNs
    src_off, src_valid = spans(tiny_tokenizer("bert"), [TEXT, "A good movie."])
    tgt_off, tgt_valid = spans(tiny_tokenizer("roberta"), [TEXT, "A good movie."])  # <s> … </s> and padding
    assert not tgt_valid.all()
    scores = numbered_scores(src_valid).requires_grad_(True)
    out = align_scores(scores, src_off, src_valid, tgt_off, tgt_valid, reduce="mean")
    out.sum().backward()
    assert torch.isfinite(scores.grad).all() and (out[~tgt_valid] == 0).all()
    assert (scores.grad[src_valid] > 0).all()  # every source token feeds some target token
