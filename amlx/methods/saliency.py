"""Saliency (Simonyan et al., 2013): the gradient of the target logit w.r.t. each input embedding, reduced over hidden."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from amlx.methods.base import AttributionMethod, class_outputs, register_method
from amlx.models.explained import Encoded

REDUCTIONS = ("l2", "l1", "sum")


def embedding_gradients(
    embeds: Tensor, attention_mask: Tensor, model, target: Tensor, output: str = "logit",
    token_type_ids: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """∂out_target/∂x at the input embeddings ``embeds`` [batch, tokens, hidden] (``class_outputs``), same shape.

    ``token_type_ids`` [batch, tokens]: the rows' segments (``ExplainedModel.token_type_ids``; pairs on BERT-style F).

    One batched backward pass. When ``embeds`` requires grad (the top-k attack), the gradient keeps its graph, so it
    is itself differentiable w.r.t. ``embeds`` (double backprop); attention then runs on the plain-math kernel, as
    the fused ones (flash, memory-efficient) have no double backward.
    """
    second_order = sdpa_kernel(SDPBackend.MATH) if embeds.requires_grad else contextlib.nullcontext()
    with torch.enable_grad(), second_order:
        x = embeds if embeds.requires_grad else embeds.detach().requires_grad_(True)
        logits = model.logits(inputs_embeds=x, attention_mask=attention_mask, token_type_ids=token_type_ids)
        out = class_outputs(logits, output)
        chosen = out.gather(1, target[:, None]).sum()  # rows are independent: one backward for all
        (grad,) = torch.autograd.grad(chosen, x, create_graph=embeds.requires_grad)
    return grad


class EmbeddingGradientMethod(AttributionMethod):
    """Shared part of saliency and G×I: scores are a function of ∂out/∂x at the word embeddings x."""

    sort_by_length = True  # an example's scores do not depend on its batch-mates

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        return self.scores_from_embeds(model.embed(enc.input_ids).detach(), enc, model, target).detach()


@register_method("saliency")
class Saliency(EmbeddingGradientMethod):
    """Scores = ‖∂logit_target/∂x_i‖ over the hidden dimension: ``l2`` (default), ``l1``, or ``sum`` = Σ_h ∂/∂x_ih.

    ``sum`` is signed (the gradient summed over hidden, MaRC's "Saliency_s"); ``l1``/``l2`` are magnitudes.
    Cost: one forward and one backward pass per batch.
    """

    def __init__(self, reduction: str = "l2", output: str = "logit", internal_batch_size: int = 16) -> None:
        super().__init__(internal_batch_size)
        if reduction not in REDUCTIONS:
            raise ValueError(f"saliency reduction must be one of {REDUCTIONS}, got {reduction!r}")
        class_outputs(torch.zeros(1, 2), output)  # validates the option
        self.reduction, self.output = reduction, output
        self.variant = reduction if output == "logit" else f"{reduction},{output}"

    def scores_from_embeds(self, embeds: Tensor, enc: Encoded, model, target: Tensor) -> Tensor:
        types = model.token_type_ids(enc.input_ids, enc.attention_mask)
        grad = embedding_gradients(embeds, enc.attention_mask, model, target, self.output, types)  # [b, tokens, h]
        if self.reduction == "sum":
            return grad.sum(-1)
        return grad.norm(p=2 if self.reduction == "l2" else 1, dim=-1)
