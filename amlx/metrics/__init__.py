"""Metric registry: every metric is a small callable class with a ``name`` and a ``direction``.

``get("comp", perturbation="mask")`` returns a configured instance; ``names()`` lists what is registered;
``direction("suff")`` says whether higher or lower is better (for result tables and Optuna). A new metric is one
file with a class decorated by ``@register_metric``, imported at the bottom of this module.

Three families (see docs/evaluation.md):
- perturbation metrics (``PerturbationMetric``: suff, comp, log_odds, aopc_*, marc_*, as_auc, ias_auc; and
  ``SearchMetric``s, whose variants depend on earlier ones: naopc_*) run the explained model on perturbed
  inputs; evaluate many records at once with ``amlx.evaluation.Evaluator``;
- agreement metrics (gt_overlap, mean_rank_pct, token_f1, iou_f1, auprc) compare scores with a record's
  ground truth and need no model;
- sanity checks (spearman_cascading, spearman_independent) re-run a method on randomized copies of the model,
  so they take ``(method, model, texts)`` instead of a record.
"""

from __future__ import annotations

from typing import ClassVar

from amlx.errors import UserError
from amlx.records import Attribution

DIRECTIONS = ("higher", "lower")
_REGISTRY: dict[str, type[Metric]] = {}


class Metric:
    """A per-record score. Subclasses set ``name`` and ``direction`` ('higher' | 'lower' is better)."""

    name: ClassVar[str]
    direction: ClassVar[str]
    kind: ClassVar[str] = (
        "agreement"  # "perturbation" (needs the model) | "agreement" | "sanity" (re-runs a method)
    )

    def __call__(self, record: Attribution, model=None) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


class UnknownMetricError(UserError, KeyError):
    """A metric name that is not registered."""


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make ``cls`` available as ``get(cls.name)``."""
    if cls.direction not in DIRECTIONS:
        raise ValueError(f"metric {cls.name!r} has direction {cls.direction!r}; use one of {DIRECTIONS}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two metrics are registered as {cls.name!r}: {_REGISTRY[cls.name]} and {cls}")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str, **options) -> Metric:
    """A configured metric by registered name; ``options`` go to its constructor."""
    check_names([name])
    return _REGISTRY[name](**options)


def check_names(metrics) -> None:
    """Refuse the first metric name (of names or ``Metric`` instances) that is not registered."""
    for name in metrics:
        if isinstance(name, str) and name not in _REGISTRY:
            raise UnknownMetricError(f"unknown metric {name!r}; registered metrics: {', '.join(names())}")


def names() -> list[str]:
    return sorted(_REGISTRY)


def direction(name: str) -> str | None:
    """'higher' | 'lower' for a registered metric, None otherwise (usable as ``write_results(direction=...)``)."""
    cls = _REGISTRY.get(name)
    return cls.direction if cls else None


# registration happens on import
from amlx.metrics import activation, agreement, faithfulness, naopc, sanity  # noqa: E402, F401
