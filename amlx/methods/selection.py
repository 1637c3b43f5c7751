"""One map per example from a pool of candidate maps: by a metric on that very example (an oracle) or their mean.

``metric``: the candidate with the best value of a perturbation metric on the example it explains — the RPI
paper's protocol (seed 001, Eq. 5), an oracle, labelled ``oracle-selected:<metric>``; candidates are scored in one
batched ``amlx.evaluation.Evaluator`` call, as fAML's oracle does. ``mean``: the mean candidate map, a proxy that
never sees the evaluation perturbations, labelled ``proxy:mean``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from amlx.models.explained import Encoded

SELECTIONS = ("metric", "mean")


def selection_metric(selection: str, metric: str):
    """The registered perturbation metric an oracle selection optimises (None for ``mean``); validates both."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "mean":
        return None
    from amlx import metrics

    m = metrics.get(metric)
    if getattr(m, "kind", None) != "perturbation":
        raise ValueError(f"selection='metric' needs a perturbation metric (comp, suff, ...), got {metric!r}")
    return m


def selection_label(selection: str, metric: str) -> str:
    """The variant label that says how the map was chosen: ``oracle-selected:<metric>`` or ``proxy:mean``."""
    return f"oracle-selected:{metric}" if selection == "metric" else "proxy:mean"


def metric_values(model, enc: Encoded, maps: Tensor, target: Tensor, probs: Tensor, metric) -> Tensor:
    """``metric`` (a registered perturbation metric) of every candidate map [B, C, tokens] → [B, C] (float64)."""
    from amlx.evaluation import Evaluator

    return Evaluator(model, [metric]).score_maps(enc, maps, target, probs, "candidate")[metric.name]


def select_maps(model, enc: Encoded, maps: Tensor, target: Tensor, probs: Tensor, selection: str, metric) -> Tensor:
    """One map [B, tokens] from candidates [B, C, tokens]: the mean (``metric`` None) or the best by ``metric``."""
    if selection == "mean":
        return maps.mean(1)
    values = metric_values(model, enc, maps, target, probs, metric).to(maps.device)
    best = values.argmax(1) if metric.direction == "higher" else values.argmin(1)
    return maps[torch.arange(len(enc), device=maps.device), best]
