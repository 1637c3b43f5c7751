"""Attention as attribution: last-layer attention (A-Last), average attention, and attention rollout.

All three read one row of a [tokens, tokens] attention map: the row of the position the prediction is read at,
i.e. the first token ([CLS] / <s>) for encoders and the last real token for decoders and prompted LMs. The
target class plays no role (attention does not depend on it). Cost: one forward pass with attentions per batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from amlx.methods.base import AttributionMethod, register_method
from amlx.models.explained import Encoded, last_positions


def prediction_rows(enc: Encoded, kind: str) -> Tensor:
    """Index of the position each example's prediction is read at: [batch] (the first real token for encoders —
    [CLS] / <s>, position 0 under amlx's right padding, and still the right one for a left-padded batch)."""
    if kind == "encoder":
        return enc.attention_mask.long().argmax(1)
    return last_positions(enc.attention_mask)


def rollout(layers: list[Tensor]) -> Tensor:
    """Abnar & Zuidema (2020): Ã_l = renorm(0.5·A_l + 0.5·I), rollout = Ã_L ⋯ Ã_1; layers [batch, tokens, tokens]."""
    eye = torch.eye(layers[0].shape[-1], dtype=layers[0].dtype, device=layers[0].device)
    out = eye.expand_as(layers[0])
    for a in layers:
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        out = a @ out
    return out


class AttentionMethod(AttributionMethod):
    """Shared part: reads the prediction row of ``attention_map`` (one [batch, tokens, tokens] map per batch)."""

    sort_by_length = True  # an example's scores do not depend on its batch-mates

    def attention_map(self, attentions: tuple[Tensor, ...]) -> Tensor:
        raise NotImplementedError

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        with torch.inference_mode():
            att = model.attentions(
                enc.input_ids, enc.attention_mask
            )  # layers × [batch, heads, tokens, tokens]
            amap = self.attention_map(tuple(a.float().nan_to_num(0.0) for a in att))
        rows = prediction_rows(enc, model.kind)
        return amap[torch.arange(len(enc), device=amap.device), rows].clone()


@register_method("attention_last")
class AttentionLast(AttentionMethod):
    """A-Last (Hollenstein & Beinborn, 2021): last layer's attention, mean over heads, prediction row."""

    def attention_map(self, attentions):
        return attentions[-1].mean(1)


@register_method("attention_mean")
class AttentionMean(AttentionMethod):
    """Average attention: mean over all layers and heads, prediction row."""

    def attention_map(self, attentions):
        return torch.stack(attentions).mean((0, 2))


@register_method("attention_rollout")
class AttentionRollout(AttentionMethod):
    """Attention rollout (Abnar & Zuidema, 2020) of head-averaged layers with residual 0.5·I, prediction row."""

    def attention_map(self, attentions):
        return rollout([a.mean(1) for a in attentions])
