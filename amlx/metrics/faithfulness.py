"""Removal-based faithfulness metrics: Comp, Suff, AOPC, log-odds (AML/RPI protocol) and the MaRC variants.

Defaults follow methods.md: ranking over attributable tokens, k% → ⌊n·k/100⌋ units (``rounding="ceil"`` gives
⌈n·k/100⌉ with a minimum of 1), perturbation by deletion from ``input_ids`` except where stated.
Too few tokens: when k% of n rounds to 0 units, Comp(k) = 0 exactly (the variant is the input itself) and
Suff(k) = p_ŷ(x) − p_ŷ(specials and prompt only); with ``rounding="ceil"`` at least one unit is always used.
"""

from __future__ import annotations

import numpy as np

from amlx.metrics import register_metric
from amlx.metrics.perturb import PerturbationMetric

AOPC_PERCENTS = (1, 5, 10, 20, 50)
MARC_PERCENTS = tuple(range(5, 100, 5))  # 5, 10, ..., 95
LOG_FLOOR = 1e-30  # p_ŷ is clamped here before the log, so a variant with p = 0 gives a finite log-odds


class _ProbDrop(PerturbationMetric):
    """Mean probability drop p_ŷ(x) − p_ŷ(variant) over the variants."""

    def reduce(self, p_orig: float, p_variants: np.ndarray) -> float:
        return float(np.mean(p_orig - p_variants))


@register_metric
class Comp(_ProbDrop):
    """Comprehensiveness Comp(20) = p_ŷ(x) − p_ŷ(x without its top-20% tokens); default perturbation ``delete``."""

    name, direction, curve, percents = "comp", "higher", "remove", (20,)


@register_metric
class Suff(_ProbDrop):
    """Sufficiency Suff(20) = p_ŷ(x) − p_ŷ(x keeping only its top-20% tokens); default perturbation ``delete``."""

    name, direction, curve, percents = "suff", "lower", "keep", (20,)


class _Aopc(PerturbationMetric):
    """Mean of Comp(k) / Suff(k) over k ∈ {1, 5, 10, 20, 50}, dividing by ``divisor`` (5 = the paper's mean).

    ``divisor=6`` reproduces the seed code, which sums the five terms and divides by 6 (flagged in methods.md:
    numbers are then 5/6 of the paper's definition). Default perturbation ``delete``.
    """

    percents = AOPC_PERCENTS

    def __init__(self, divisor: int = len(AOPC_PERCENTS), **kw) -> None:
        super().__init__(**kw)
        self.divisor = divisor

    def reduce(self, p_orig: float, p_variants: np.ndarray) -> float:
        return float(np.sum(p_orig - p_variants) / self.divisor)


@register_metric
class AopcComp(_Aopc):
    __doc__ = "AOPC-C: " + _Aopc.__doc__
    name, direction, curve = "aopc_comp", "higher", "remove"


@register_metric
class AopcSuff(_Aopc):
    __doc__ = "AOPC-S: " + _Aopc.__doc__
    name, direction, curve = "aopc_suff", "lower", "keep"


@register_metric
class LogOdds(PerturbationMetric):
    """LO = log p_ŷ(x with its top-20% tokens replaced by the mask token) − log p_ŷ(x); default perturbation ``mask``.

    Probabilities are clamped at 1e-30 before the log.
    """

    name, direction, curve, percents = "log_odds", "lower", "remove", (20,)
    default_perturbation = "mask"

    def reduce(self, p_orig: float, p_variants: np.ndarray) -> float:
        return float(np.mean(np.log(np.maximum(p_variants, LOG_FLOOR)) - np.log(max(p_orig, LOG_FLOOR))))


@register_metric
class MarcComp(_ProbDrop):
    """MaRC comprehensiveness: mean of Comp(k) over k = 5, 10, …, 95 %, tokens replaced by [PAD] (``pad``).

    MaRC averages instead of taking an AUC so that negative values keep their meaning (seed 004, appendix).
    """

    name, direction, curve, percents = "marc_comp", "higher", "remove", MARC_PERCENTS
    default_perturbation = "pad"


@register_metric
class MarcSuff(_ProbDrop):
    """MaRC sufficiency: mean of Suff(k) over k = 5, 10, …, 95 %, tokens replaced by [PAD] (``pad``)."""

    name, direction, curve, percents = "marc_suff", "lower", "keep", MARC_PERCENTS
    default_perturbation = "pad"
