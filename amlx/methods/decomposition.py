"""Norm-based decomposition of BERT-family attention blocks, shared by ALTI and GlobEnc (methods.md "Additions" §3–4).

Layer l with input x [tokens, d], head-h attention α^h, values v^h_j = x_j W^h_V + b^h_V (b_V included) and W^h_O
the head-h slice of the output projection: the attention block's LayerNorm input splits into one part per input
token (§3),

    z_ij = Σ_h α^h_ij v^h_j W^h_O + δ_ij x_i,      preLN1_i = Σ_j z_ij + b_O,

and a LayerNorm γ⊙(· − mean)/σ_i + β is linear once σ_i = √(Var(preLN_i) + ε) of the whole input is fixed, so it
maps the parts to parts (``layer_norm_parts``; the biased variance and ε of LayerNorm itself, so the parts add up to
its output exactly — the reference ALTI code uses torch's unbiased ``std``, methods.md §3 "Pitfalls").

Everything is read from the Hugging Face modules in one forward pass: the layer inputs and the LN2 inputs by forward
pre-hooks, the attention probabilities by ``output_attentions`` (eager attention), the weights from the modules.
No modeling file is patched. Supported: the encoders whose layers are ``encoder.layer[l]`` with ``attention.self``,
``attention.output`` and ``output`` as in BERT (``SUPPORTED``; MiniLM is a BERT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from amlx.methods.attention import prediction_rows
from amlx.methods.base import AttributionMethod
from amlx.models.explained import Encoded

SUPPORTED = ("bert", "roberta")


@dataclass
class Block:
    """One encoder layer and what it saw: ``x`` its input [batch, tokens, d], ``attention`` α [batch, heads, tokens,
    tokens], ``pre_ln2`` the input of its second LayerNorm, FFN(ỹ) + ỹ [batch, tokens, d] (float32)."""

    layer: nn.Module
    x: Tensor
    attention: Tensor
    pre_ln2: Tensor


def encoder_layers(model, method: str) -> nn.ModuleList:
    """The encoder layers of a supported explained model; a clear error for any other."""
    model_type = getattr(model.hf.config, "model_type", None)
    if model.kind != "encoder" or model_type not in SUPPORTED:
        raise ValueError(
            f"{method} decomposes the attention blocks of BERT-family encoders (model types: {', '.join(SUPPORTED)}, "
            f"MiniLM included); {model.name or 'this model'} is a {model_type!r} {model.kind}. Explain it with "
            "attention_rollout, a gradient or a perturbation method instead"
        )
    return model.hf.base_model.encoder.layer


def trace_blocks(model, enc: Encoded, method: str) -> list[Block]:
    """Every layer's ``Block`` for the batch ``enc``, from one forward pass with hooks."""
    layers = encoder_layers(model, method)
    inputs: dict[int, Tensor] = {}
    pre_ln2: dict[int, Tensor] = {}

    def keep_input(i: int, store: dict[int, Tensor]):
        def hook(module, args, kwargs):
            store[i] = (args[0] if args else kwargs["hidden_states"]).float()

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.attention.register_forward_pre_hook(keep_input(i, inputs), with_kwargs=True))
        handles.append(layer.output.LayerNorm.register_forward_pre_hook(keep_input(i, pre_ln2), with_kwargs=True))
    try:
        attentions = model.attentions(enc.input_ids, enc.attention_mask)
    finally:
        for h in handles:
            h.remove()
    return [
        Block(layer, inputs[i], attentions[i].float().nan_to_num(0.0), pre_ln2[i]) for i, layer in enumerate(layers)
    ]


def mixed_parts(block: Block) -> Tensor:
    """z_ij = Σ_h α^h_ij v^h_j W^h_O + δ_ij x_i (§3): [batch, i, j, d]."""
    sa, dense = block.layer.attention.self, block.layer.attention.output.dense
    heads, size = sa.num_attention_heads, sa.attention_head_size
    v = F.linear(block.x, sa.value.weight.float(), sa.value.bias.float()).unflatten(-1, (heads, size))  # [b, j, h, e]
    w_o = dense.weight.float().unflatten(1, (heads, size))  # [d, h, e]: W^h_O as columns of the output projection
    vo = torch.einsum("bjhe,dhe->bhjd", v, w_o)  # v^h_j W^h_O
    z = torch.einsum("bhij,bhjd->bijd", block.attention, vo)
    diag = torch.arange(z.shape[1], device=z.device)
    z[:, diag, diag] += block.x
    return z


def layer_norm_parts(parts: Tensor, pre: Tensor, ln: nn.LayerNorm) -> Tensor:
    """γ⊙(parts_ij − mean parts_ij)/√(Var(pre_i) + ε), no β: parts [batch, i, j, d], pre [batch, i, d] → [b, i, j, d]."""
    sigma = (pre.var(-1, unbiased=False) + ln.eps).sqrt()[:, :, None, None]
    return ln.weight.float() * (parts - parts.mean(-1, keepdim=True)) / sigma


def attention_block_parts(block: Block) -> tuple[Tensor, Tensor]:
    """ALTI's T_i(x_j) [batch, i, j, d] and the rest γ⊙(b_O − mean b_O)/σ_i + β [batch, i, d] (§3): y_i = Σ_j T_i(x_j)
    + rest_i is the output of the block's LayerNorm (LN1)."""
    out = block.layer.attention.output
    z = mixed_parts(block)
    b_o = out.dense.bias.float()
    pre = z.sum(2) + b_o  # preLN1 [b, i, d]
    parts = layer_norm_parts(z, pre, out.LayerNorm)
    rest = layer_norm_parts(b_o.expand_as(pre)[:, :, None], pre, out.LayerNorm)[:, :, 0] + out.LayerNorm.bias.float()
    return parts, rest


def chain(matrices: list[Tensor]) -> Tensor:
    """The rollout without identity: M^L ⋯ M^1 of [batch, tokens, tokens] matrices (§3 A^l = C^l A^{l−1}, §4 G)."""
    out = matrices[0]
    for m in matrices[1:]:
        out = m @ out
    return out


class DecompositionMethod(AttributionMethod):
    """Shared part: ``layer_matrix`` per layer from one traced pass, chained over layers, the [CLS] row read out.

    The target class plays no role. Cost: 1 forward row with attentions; memory O(batch · tokens² · d) per layer.
    """

    sort_by_length = True  # an example's scores do not depend on its batch-mates

    def __init__(self, internal_batch_size: int = 8) -> None:
        super().__init__(internal_batch_size)

    def layer_matrix(self, block: Block, mask: Tensor) -> Tensor:
        """The layer's token-to-token matrix [batch, i, j], zero on padded rows and columns (``mask`` [batch, tokens])."""
        raise NotImplementedError

    @torch.inference_mode()
    def layer_matrices(self, enc: Encoded, model) -> list[Tensor]:
        """One matrix [batch, tokens, tokens] per layer, first layer first."""
        mask = enc.attention_mask.float()
        return [self.layer_matrix(b, mask) for b in trace_blocks(model, enc, self.name)]

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        rolled = chain(self.layer_matrices(enc, model))
        rows = prediction_rows(enc, "encoder")
        return rolled[torch.arange(len(enc), device=rolled.device), rows].clone()
