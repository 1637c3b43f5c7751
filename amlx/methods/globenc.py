"""GlobEnc — global token attribution through whole encoder layers (Modarressi et al. 2022, arXiv 2205.03286;
methods.md "Additions" §4) for BERT-family encoders.

Per layer, with z_ij from ``amlx.methods.decomposition.mixed_parts`` (b_O and β dropped):

    u_ij = γ₁⊙(z_ij − mean z_ij)/√(Var(preLN1_i) + ε),   w_ij = γ₂⊙(u_ij − mean u_ij)/√(Var(preLN2_i) + ε),

preLN2_i = FFN(ỹ_i) + ỹ_i the input of the layer's second LayerNorm (the FFN only sets the scale; it is not
decomposed), and N^l_ij = ‖w_ij‖₂ ("N-Enc"). Rollout on the raw norms, no identity, no row normalisation: G¹ = N¹,
G^l = N^l G^{l−1}, padded rows and columns zero; the attribution is G^L's [CLS] row. G's scale drifts with depth:
compare ranks, not values, across models.
"""

from __future__ import annotations

from torch import Tensor

from amlx.methods.base import register_method
from amlx.methods.decomposition import Block, DecompositionMethod, attention_block_parts, layer_norm_parts


def encoder_parts(block: Block) -> Tensor:
    """w_ij [batch, i, j, d] of one layer (§4)."""
    u, _ = attention_block_parts(block)  # u_ij = ALTI's T_i(x_j)
    return layer_norm_parts(u, block.pre_ln2, block.layer.output.LayerNorm)


@register_method("globenc")
class GlobEnc(DecompositionMethod):
    """GlobEnc (module docstring). Options: ``internal_batch_size`` (8; memory grows as batch · tokens² · hidden)."""

    def layer_matrix(self, block: Block, mask: Tensor) -> Tensor:
        return encoder_parts(block).norm(dim=-1) * mask[:, :, None] * mask[:, None, :]
