"""Map token scores from one tokenizer to another by character offsets (methods.md, "Tokenizer mapping").

Both sides tokenize the same text; each token is a character span ``[start, end)``. A target token takes
the scores of the source tokens its span overlaps: one source token split into several target tokens gives
each of them its score (replicate); several source tokens merged into one target token give the max (or the
mean). A valid target token that overlaps no source token (a whitespace-only BPE piece, a byte-fallback
piece) takes the score of the nearest aligned target token, the following one on a tie (byte-level BPE and
Metaspace attach spaces to the next word). When both sides hold the same sequence of spans (identical
tokenizers) tokens are paired one to one, so the mapping is exactly the identity.

Everything is a dense boolean alignment ``[batch, target, source]`` built with tensor ops, and the scores
are reduced over it, so the mapping is differentiable with respect to the source scores (AML trains
through it).
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("max", "mean")


def alignment(src_offsets: Tensor, src_valid: Tensor, tgt_offsets: Tensor, tgt_valid: Tensor) -> Tensor:
    """Which source tokens each target token reads: bool ``[batch, target, source]`` (unbatched inputs too).

    ``*_offsets``: ``[batch, tokens, 2]`` character spans into the same texts; ``*_valid``: bool
    ``[batch, tokens]``, the tokens that carry scores (text tokens: no specials, prompt or padding).
    """
    if src_offsets.dim() == 2:
        return alignment(src_offsets[None], src_valid[None], tgt_offsets[None], tgt_valid[None])[0]
    src_valid = src_valid.bool() & (src_offsets[..., 1] > src_offsets[..., 0])
    tgt_valid = tgt_valid.bool()
    s0, s1 = src_offsets[..., 0][:, None, :], src_offsets[..., 1][:, None, :]  # [batch, 1, source]
    t0, t1 = tgt_offsets[..., 0][:, :, None], tgt_offsets[..., 1][:, :, None]  # [batch, target, 1]
    overlap = (torch.maximum(s0, t0) < torch.minimum(s1, t1)) & src_valid[:, None, :] & tgt_valid[:, :, None]

    aligned = overlap.any(-1)  # [batch, target]
    orphan = tgt_valid & ~aligned
    if orphan.any():
        overlap = _borrow_from_nearest(overlap, aligned, orphan)

    same = _same_spans(src_offsets, src_valid, tgt_offsets, tgt_valid)  # [batch]
    if same.any():
        rank_s = src_valid.long().cumsum(-1)[:, None, :]  # 1-based rank among valid source tokens
        rank_t = tgt_valid.long().cumsum(-1)[:, :, None]
        one_to_one = (rank_s == rank_t) & src_valid[:, None, :] & tgt_valid[:, :, None]
        overlap = torch.where(same[:, None, None], one_to_one, overlap)
    return overlap


def map_scores(align: Tensor, scores: Tensor, reduce: str = "max") -> Tensor:
    """Reduce source scores ``[batch, source]`` over an ``alignment`` → target scores ``[batch, target]``.

    Target rows that read no source token (padding, specials, texts with no valid source token) get 0.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"the alignment reduction must be one of {REDUCTIONS}, got {reduce!r}")
    if scores.dim() == 1:
        return map_scores(align[None], scores[None], reduce)[0]
    hit = align.any(-1)  # [batch, target]
    if reduce == "max":
        picked = torch.where(align, scores[:, None, :], scores.new_tensor(float("-inf")))
        out = picked.amax(-1)
    else:
        w = align.to(scores.dtype)
        out = (w @ scores[..., None])[..., 0] / w.sum(-1).clamp_min(1)
    return torch.where(hit, out, torch.zeros_like(out))


def align_scores(
    scores: Tensor,
    src_offsets: Tensor,
    src_valid: Tensor,
    tgt_offsets: Tensor,
    tgt_valid: Tensor,
    reduce: str = "max",
) -> Tensor:
    """Source-token scores ``[batch, source]`` → target-token scores ``[batch, target]`` (module docstring)."""
    return map_scores(alignment(src_offsets, src_valid, tgt_offsets, tgt_valid), scores, reduce)


def _borrow_from_nearest(overlap: Tensor, aligned: Tensor, orphan: Tensor) -> Tensor:
    """Give each orphan target token the alignment row of its nearest aligned target token (ties → next)."""
    n = overlap.shape[1]
    pos = torch.arange(n, device=overlap.device)
    gap = (pos[:, None] - pos[None, :]).abs() * 2 + (pos[None, :] < pos[:, None])  # [target, target]; tie → right
    gap = torch.where(aligned[:, None, :], gap[None], torch.full_like(gap[None], 4 * n))  # [batch, target, target]
    nearest = gap.argmin(-1)  # [batch, target]
    borrowed = overlap.gather(1, nearest[..., None].expand_as(overlap))
    return torch.where(orphan[..., None], borrowed, overlap)


def _same_spans(src_offsets: Tensor, src_valid: Tensor, tgt_offsets: Tensor, tgt_valid: Tensor) -> Tensor:
    """Per example: do both sides hold the same sequence of valid spans? bool ``[batch]``."""
    same = []
    for b in range(src_offsets.shape[0]):
        s, t = src_offsets[b][src_valid[b]], tgt_offsets[b][tgt_valid[b]]
        same.append(s.shape == t.shape and bool((s == t).all()))
    return torch.tensor(same, device=src_offsets.device)
