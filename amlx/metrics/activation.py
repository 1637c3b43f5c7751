"""Activation study (AS) and inverse activation study (IAS) of Progressive Inference (seed 000).

Start from the input with every word masked and add words back, most attributed first (AS) or least attributed
first (IAS). The curve p_ŷ(x with its first j units added), j = 0..n, is integrated by the trapezoid rule over
the fraction j/n of units added (n+1 points), so values lie in [0, 1]. Defaults: ``unit="word"`` (words ranked by
their max token score), perturbation ``mask`` (the model's mask token). AS: higher is better; IAS: lower.
With no attributable token (n = 0) the curve is the single point p_ŷ(x) and the value is p_ŷ(x).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from amlx.metrics import register_metric
from amlx.metrics.perturb import PerturbationMetric


class _Activation(PerturbationMetric):
    curve = "keep"
    default_perturbation = "mask"
    default_unit = "word"

    def counts(self, n_units: int) -> Tensor:
        return torch.arange(n_units + 1)  # units added: 0 (fully masked) .. n (the input itself)

    def reduce(self, p_orig: float, p_variants: np.ndarray) -> float:
        n = len(p_variants) - 1
        if n == 0:
            return float(p_variants[0])
        return float(np.trapezoid(p_variants, dx=1.0 / n))

    def curve_points(self, p_orig: float, p_variants: np.ndarray) -> list[tuple[float, float]]:
        """(% of units added, p_ŷ) at each of the n + 1 points the AUC integrates."""
        n = max(len(p_variants) - 1, 1)
        return [(100.0 * j / n, float(p)) for j, p in enumerate(p_variants)]

    def curve_axes(self) -> tuple[str, str]:
        order = "least" if self.ascending else "most"
        return f"% of {self.unit}s added back ({order} attributed first)", "p(x̃)"


@register_metric
class ActivationAUC(_Activation):
    """AS AUC: add units from the most attributed; area under p_ŷ over the fraction added (higher is better)."""

    name, direction = "as_auc", "higher"


@register_metric
class InverseActivationAUC(_Activation):
    """IAS AUC: add units from the least attributed; area under p_ŷ over the fraction added (lower is better)."""

    name, direction, ascending = "ias_auc", "lower", True
