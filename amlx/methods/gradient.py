"""Gradient×Input (Shrikumar et al., 2016): ∂out_ŷ/∂x_i · x_i summed over the hidden dimension."""

from __future__ import annotations

import torch
from torch import Tensor

from amlx.methods.base import AttributionMethod, class_outputs, register_method
from amlx.methods.saliency import input_gradients
from amlx.models.explained import Encoded


@register_method("gradient_x_input")
class GradientXInput(AttributionMethod):
    """Scores = Σ_h (∂out_target/∂x)_h · x_h on the input embeddings, one batched backward pass per batch.

    ``output``: the explained quantity — ``logit`` (default, the common choice), ``log_prob`` or ``prob``
    (see ``class_outputs``); non-default outputs appear in the variant.
    """

    sort_by_length = True  # an example's scores do not depend on its batch-mates

    def __init__(self, output: str = "logit", internal_batch_size: int = 16) -> None:
        super().__init__(internal_batch_size)
        class_outputs(torch.zeros(1, 2), output)  # validates the option
        self.output = output
        self.variant = "" if output == "logit" else output

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        grad, x = input_gradients(enc, model, target, self.output)
        return (grad * x).sum(-1)
