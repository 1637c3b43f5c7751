"""ALTI — Aggregation of Layer-wise Token-to-token Interactions (Ferrando, Gállego & Costa-jussà 2022, arXiv
2203.04212; methods.md "Additions" §3) for BERT-family encoders.

Per layer, with T_i(x_j) and y_i (the LN1 output) from ``amlx.methods.decomposition.attention_block_parts``:

    d_ij = ‖y_i − T_i(x_j)‖₁,     c_ij = max(0, ‖y_i‖₁ − d_ij) / Σ_k max(0, ‖y_i‖₁ − d_ik),

padded tokens excluded from k. Rollout without identity A¹ = C¹, A^l = C^l A^{l−1}; the attribution is A^L's [CLS]
row (token level; amlx's word aggregation groups sub-tokens). FFN and LN2 are ignored. No hyper-parameters.
"""

from __future__ import annotations

from torch import Tensor

from amlx.methods.base import register_method
from amlx.methods.decomposition import Block, DecompositionMethod, attention_block_parts


def contributions(block: Block, mask: Tensor) -> Tensor:
    """C^l [batch, i, j] of one layer (§3): rows ≥ 0 summing to 1 over the real tokens j; padded rows are 0."""
    parts, rest = attention_block_parts(block)
    y = parts.sum(2) + rest  # LN1 output [b, i, d]
    d = (y[:, :, None] - parts).abs().sum(-1)  # d_ij [b, i, j]
    c = (y.abs().sum(-1)[:, :, None] - d).clamp(min=0) * mask[:, None, :]
    c = c / c.sum(-1, keepdim=True).clamp(min=1e-30)
    return c * mask[:, :, None]


@register_method("alti")
class Alti(DecompositionMethod):
    """ALTI (module docstring). Options: ``internal_batch_size`` (8; memory grows as batch · tokens² · hidden)."""

    def layer_matrix(self, block: Block, mask: Tensor) -> Tensor:
        return contributions(block, mask)
