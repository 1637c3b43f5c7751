"""Gradient×Input (Shrikumar et al., 2016): ∂out_ŷ/∂x_i · x_i summed over the hidden dimension."""

from __future__ import annotations

import torch
from torch import Tensor

from amlx.methods.base import class_outputs, register_method
from amlx.methods.saliency import EmbeddingGradientMethod, embedding_gradients
from amlx.models.explained import Encoded


@register_method("gradient_x_input")
class GradientXInput(EmbeddingGradientMethod):
    """Scores = Σ_h (∂out_target/∂x)_h · x_h on the input embeddings, one batched backward pass per batch.

    ``output``: the explained quantity — ``logit`` (default, the common choice), ``log_prob`` or ``prob``
    (see ``class_outputs``); non-default outputs appear in the variant.
    """

    def __init__(self, output: str = "logit", internal_batch_size: int = 16) -> None:
        super().__init__(internal_batch_size)
        class_outputs(torch.zeros(1, 2), output)  # validates the option
        self.output = output
        self.variant = "" if output == "logit" else output

    def scores_from_embeds(self, embeds: Tensor, enc: Encoded, model, target: Tensor) -> Tensor:
        types = model.token_type_ids(enc.input_ids, enc.attention_mask)
        return (embedding_gradients(embeds, enc.attention_mask, model, target, self.output, types) * embeds).sum(-1)
