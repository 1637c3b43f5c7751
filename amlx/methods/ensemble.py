"""Ensembles of explanations (seed 003, thesis §3.4): one map from the maps of several member methods.

``aggregation="mean"`` (the thesis): EnsembleImportance_j = (1/|A|) Σ_i A_ij, each member's map A_i first
normalized to sum to 1 (the thesis footnote, so that no method weighs more for producing larger numbers). Scores may
be negative (gradients, Kernel SHAP, occlusion), where Σ_j A_ij can be 0 or flip the sign of a map, so each map is
divided by Σ_j |A_ij| over the attributable tokens: the absolute scores sum to 1 and signs are kept (a token that
lowers the prediction still pulls the mean down). A member map that is zero everywhere stays zero.
``aggregation="rank"``: each member's scores become their rank among the attributable tokens divided by their
number (the lowest score 1/n, the highest 1; tied tokens share their mean rank), then the ranks are averaged.

Members are registered methods with options: ``members=["lime", {"name": "kernel_shap", "n_samples": 100}]``. They
run with their own options; a member that takes a ``seed`` and sets none gets the ensemble's ``seed``. Maps are
combined per token, on the tokens of the explained model (a word-level method's score is on each of its tokens).
A record's ``seconds`` is the sum of its members' seconds. ``explain.py evaluate`` reuses the records of members that
the same run also evaluates with the same options (docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from amlx.methods.base import AttributionMethod, Target, get, method_label, names, register_method
from amlx.models.explained import Encoded
from amlx.records import Attribution

AGGREGATIONS = ("mean", "rank")


def member_spec(member: str | Mapping) -> tuple[str, dict]:
    """(name, options) of a member given as a method name or as ``{"name": ..., **options}``."""
    if isinstance(member, str):
        return member, {}
    if isinstance(member, Mapping) and isinstance(member.get("name"), str):
        options = dict(member)
        return options.pop("name"), options
    raise ValueError(
        f"an ensemble member is a method name or a mapping with 'name' and that method's options, e.g. "
        f"{{name: lime, n_samples: 100}}; got {member!r}"
    )


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks [n] of ``x`` [n], 1 = lowest; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    _, first, count = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (count + 1) / 2, count)
    return ranks


def combine_maps(maps: np.ndarray, aggregation: str = "mean") -> np.ndarray:
    """One map [units] from member maps [members, units]: normalized mean or mean rank (module docstring)."""
    if aggregation == "mean":
        total = np.abs(maps).sum(1, keepdims=True)
        normalized = np.divide(maps, total, out=np.zeros_like(maps, dtype=np.float64), where=total > 0)
        return normalized.mean(0)
    if aggregation == "rank":
        if maps.shape[1] == 0:
            return np.zeros(0)
        return np.stack([average_ranks(m) for m in maps]).mean(0) / maps.shape[1]
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


@register_method("ensemble")
class Ensemble(AttributionMethod):
    """Normalized-mean (thesis §3.4) or rank-mean ensemble of member methods' maps.

    Cost: the sum of the members' costs. ``attribute`` accepts ``member_records`` (one list per member, None to
    compute it) so that maps computed elsewhere are combined instead of recomputed.
    """

    def __init__(self, members: Sequence[str | Mapping], aggregation: str = "mean", seed: int = 0,
                 internal_batch_size: int = 16) -> None:  # fmt: skip
        super().__init__(internal_batch_size)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.members = [member_spec(m) for m in members]
        if not self.members:
            raise ValueError("an ensemble needs at least one member, e.g. members: [lime, kernel_shap]")
        unknown = [name for name, _ in self.members if name not in names()]
        if unknown:
            raise ValueError(f"unknown ensemble members {unknown}; registered methods: {', '.join(names())}")
        self.aggregation, self.seed = aggregation, seed
        self.member_labels = [method_label(name, opts) for name, opts in self.members]
        self.variant = f"{aggregation}:" + "+".join(self.member_labels)

    def member(self, i: int) -> AttributionMethod:
        """Member ``i`` configured as it runs inside this ensemble (seeded with ``seed`` unless it sets one)."""
        name, opts = self.members[i]
        method = get(name, **opts)
        if "seed" not in opts:
            method.reseed(self.seed)  # a no-op for members without a seed
        return method

    def reseed(self, seed: int) -> None:
        self.seed = seed  # the members that set no seed of their own get it

    def attribute(self, inputs: str | list[str] | Encoded, model, target: Target = None,
                  member_records: Sequence[list[Attribution] | None] | None = None) -> list[Attribution]:  # fmt: skip
        """Every member's records (computed unless given in ``member_records``), combined per example."""
        enc = inputs if isinstance(inputs, Encoded) else model.encode(inputs)
        given = list(member_records) if member_records is not None else [None] * len(self.members)
        if len(given) != len(self.members):
            raise ValueError(f"member_records has {len(given)} entries for {len(self.members)} members")
        recs = [r if r is not None else self.member(i).attribute(enc, model, target) for i, r in enumerate(given)]
        return self.combine(recs)

    def combine(self, member_records: Sequence[list[Attribution]]) -> list[Attribution]:
        """One record per example from each member's records of the same examples (same tokens and target)."""
        out = []
        for recs in zip(*member_records, strict=True):
            first = recs[0]
            for label, r in zip(self.member_labels, recs):
                if r.input_ids != first.input_ids or r.target != first.target:
                    raise ValueError(
                        f"ensemble member {label} has other tokens or another target than {self.member_labels[0]} "
                        f"on {first.where()}; members must explain the same examples with the same model and target"
                    )
            attributable = first.attributable
            scores = np.zeros(len(first))
            scores[attributable] = combine_maps(np.stack([r.scores[attributable] for r in recs]), self.aggregation)
            out.append(dataclasses.replace(
                first, scores=scores, method=self.name, variant=self.variant, seconds=sum(r.seconds for r in recs),
                meta={"members": self.member_labels},
            ))  # fmt: skip
        return out
