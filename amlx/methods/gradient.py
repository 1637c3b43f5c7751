"""Gradient×Input (Shrikumar et al., 2016): ∂logit_ŷ/∂x_i · x_i summed over the hidden dimension."""

from __future__ import annotations

import torch
from torch import Tensor

from amlx.methods.base import AttributionMethod, register_method
from amlx.models.explained import Encoded


@register_method("gradient_x_input")
class GradientXInput(AttributionMethod):
    """Scores = Σ_h (∂logit_target/∂x)_h · x_h on the input embeddings, one batched backward pass per batch.

    Logits, not probabilities, are differentiated (the usual choice; avoids softmax saturation).
    """

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        with torch.enable_grad():
            x = model.embed(enc.input_ids).detach().requires_grad_(True)  # [batch, tokens, hidden]
            logits = model.logits(inputs_embeds=x, attention_mask=enc.attention_mask)  # [batch, classes]
            chosen = logits.gather(1, target[:, None]).sum()  # rows are independent: one backward for all
            (grad,) = torch.autograd.grad(chosen, x)
        return (grad * x).sum(-1).detach()
