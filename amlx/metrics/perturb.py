"""Ranking, perturbed-variant construction and the base class of every perturbation metric.

Vocabulary. A *unit* is a token (``unit="token"``) or a word (``unit="word"``: all attributable tokens of a word;
an attributable token outside every word is a unit of its own). Units are ranked by score, ties broken by
position (earlier first). A *variant* is the record's ``input_ids`` with some units perturbed:
``delete`` removes their tokens from ``input_ids`` (seed-code default for suff/comp/aopc; a variant left
empty becomes one mask token, see ``replacement_id``), ``mask`` replaces them
by the model's ``mask_token_id`` (default for log_odds and AS/IAS), ``pad`` replaces them by the pad id with the
attention mask kept at 1 (MaRC). Specials and prompt tokens are never perturbed. A variant is a 1-D row of ids
with full attention; batches of variants are ``[variants, tokens]`` rows right-filled with ``FILL`` (-1).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from amlx.metrics import Metric
from amlx.records import Attribution, aggregate

MODES = ("delete", "mask", "pad")
UNITS = ("token", "word")
ROUNDINGS = ("floor", "ceil")
FILL = -1  # "no token here" in a row of variant ids


def n_units_for(n: int, percent: float, rounding: str = "floor") -> int:
    """How many of ``n`` units make ``percent`` %: ⌊n·k/100⌋ (seed code) or ⌈n·k/100⌉ with a minimum of 1."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if n == 0:
        return 0
    exact = n * percent / 100
    # round() guards against 0.1-style float error before floor/ceil (n·k/100 is rational with denominator 100)
    exact = round(exact, 9)
    k = int(np.floor(exact)) if rounding == "floor" else max(1, int(np.ceil(exact)))
    return min(k, n)


def unit_index(record: Attribution, unit: str = "token") -> tuple[np.ndarray, int]:
    """Unit of each token, numbered by first appearance (0..n_units-1), -1 where not attributable.

    Returns ``(units: int64 [tokens], n_units)``.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    idx = np.flatnonzero(record.attributable)
    units = np.full(len(record), -1, dtype=np.int64)
    if len(idx) == 0:
        return units, 0
    if unit == "token":
        groups = np.arange(len(idx))
    else:
        w = record.word_ids[idx].copy()
        loose = w < 0  # attributable tokens in no word: one unit each
        w[loose] = w.max(initial=-1) + 1 + np.arange(loose.sum())
        _, first, groups = np.unique(w, return_index=True, return_inverse=True)
        by_position = np.empty(len(first), dtype=np.int64)
        by_position[np.argsort(first)] = np.arange(len(first))
        groups = by_position[groups]  # unit index = order of first appearance, so ties break by position
    units[idx] = groups
    return units, int(groups.max()) + 1


def unit_ranks(
    record: Attribution, unit: str = "token", agg: str = "max", ascending: bool = False
) -> tuple[Tensor, int]:
    """Rank of each token's unit (0 = most attributed; ``ascending`` = least first), -1 where not attributable.

    Returns ``(rank: LongTensor [tokens], n_units)``.
    """
    units, n = unit_index(record, unit)
    rank = np.full(len(record), -1, dtype=np.int64)
    if n == 0:
        return torch.from_numpy(rank), 0
    idx = np.flatnonzero(units >= 0)
    groups = units[idx]
    unit_scores = aggregate(groups, record.scores[idx], n, agg)
    order = np.argsort(unit_scores if ascending else -unit_scores, kind="stable")
    unit_rank = np.empty(n, dtype=np.int64)
    unit_rank[order] = np.arange(n)
    rank[idx] = unit_rank[groups]
    return torch.from_numpy(rank), n


def remove_top(rank: Tensor, counts: Tensor) -> Tensor:
    """Keep-masks [variants, tokens] that drop the top ``counts[v]`` units of variant v."""
    return ~((rank >= 0) & (rank < counts[:, None]))


def keep_top(rank: Tensor, counts: Tensor) -> Tensor:
    """Keep-masks [variants, tokens] that keep non-attributable tokens and only the top ``counts[v]`` units."""
    return (rank < 0) | (rank < counts[:, None])


def replacement_id(model, mode: str) -> int:
    """Token id that replaces perturbed tokens in ``mode``; for ``delete``, the one token an empty variant becomes.

    Deleting every token of an input without specials (e.g. GPT-2) would leave nothing to classify, so such a
    variant is a single mask token (pad when the model has no mask id) instead.
    """
    if mode not in MODES:
        raise ValueError(f"perturbation must be one of {MODES}, got {mode!r}")
    if mode == "delete":
        tid = model.mask_token_id if model.mask_token_id is not None else model.tokenizer.pad_token_id
        return int(tid)
    tid = model.mask_token_id if mode == "mask" else model.tokenizer.pad_token_id
    if tid is None:
        raise ValueError(
            f"perturbation {mode!r} needs a {mode} token id but the explained model has none (mask strategy "
            f"{getattr(model, 'mask_spec', '?')!r}); use perturbation='delete' or 'pad', or load the model with "
            "mask='mask' | 'unk' | 'pad' | 'id:N'"
        )
    return int(tid)


def build_variants(input_ids: Tensor, keep: Tensor, mode: str, replace_id: int) -> Tensor:
    """Variant rows [variants, tokens] (right-filled with FILL) from ``input_ids`` [tokens] and ``keep`` [variants, tokens]."""
    ids = input_ids[None].expand_as(keep)
    if mode != "delete":
        return torch.where(keep, ids, torch.full_like(ids, replace_id))
    t = keep.shape[1]
    pos = (
        torch.where(keep, torch.arange(t), torch.full_like(ids, t)).sort(dim=1).values
    )  # kept positions first
    rows = torch.cat([input_ids, input_ids.new_full((1,), FILL)])[pos]
    rows[~keep.any(1), 0] = replace_id
    return rows


def variant_ids(input_ids: Tensor, keep: Tensor, mode: str, replace_id: int) -> Tensor:
    """One variant the plain way, for the reference path: ``input_ids`` [tokens], ``keep`` [tokens] → ids."""
    if mode == "delete":
        kept = input_ids[keep]
        return kept if len(kept) else input_ids.new_full((1,), replace_id)
    return torch.where(keep, input_ids, torch.full_like(input_ids, replace_id))


class PerturbationMetric(Metric):
    """A metric computed from p_ŷ on perturbed variants of the record's input (ŷ = ``record.target``).

    Subclasses set ``percents`` (or override ``counts``), ``curve`` ("remove": drop the top units, "keep": keep
    only the top units), the defaults ``perturbation`` / ``unit`` and implement ``reduce``.
    """

    kind = "perturbation"
    curve: ClassVar[str] = "remove"
    percents: ClassVar[tuple[float, ...]] = ()
    ascending: ClassVar[bool] = False  # rank least-attributed first (IAS)
    default_perturbation: ClassVar[str] = "delete"
    default_unit: ClassVar[str] = "token"

    def __init__(self, perturbation: str | None = None, unit: str | None = None, rounding: str = "floor",
                 word_agg: str = "max") -> None:  # fmt: skip
        self.perturbation = perturbation or self.default_perturbation
        self.unit = unit or self.default_unit
        self.rounding = rounding
        self.word_agg = word_agg
        if self.perturbation not in MODES:
            raise ValueError(f"{self.name}: perturbation must be one of {MODES}, got {self.perturbation!r}")
        if self.unit not in UNITS:
            raise ValueError(f"{self.name}: unit must be one of {UNITS}, got {self.unit!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"{self.name}: rounding must be one of {ROUNDINGS}, got {rounding!r}")

    def counts(self, n_units: int) -> Tensor:
        """Number of units removed (curve 'remove') or kept (curve 'keep') per variant: [variants]."""
        return torch.tensor([n_units_for(n_units, k, self.rounding) for k in self.percents], dtype=torch.long)

    def keep_masks(self, record: Attribution) -> Tensor:
        """Bool [variants, tokens]: True where the token stays as it is."""
        rank, n = unit_ranks(record, self.unit, self.word_agg, self.ascending)
        counts = self.counts(n)
        return remove_top(rank, counts) if self.curve == "remove" else keep_top(rank, counts)

    def reduce(self, p_orig: float, p_variants: np.ndarray) -> float:
        """The metric value from p_ŷ(x) and p_ŷ of each variant [variants] (float64)."""
        raise NotImplementedError

    def curve_points(self, p_orig: float, p_variants: np.ndarray) -> list[tuple[float, float]] | None:
        """(k, p_ŷ(x) − p_ŷ(variant at k%)) per variant: the curve the metric averages; None for a single variant."""
        if len(self.percents) < 2:
            return None
        return [(float(k), float(p_orig - p)) for k, p in zip(self.percents, p_variants)]

    def curve_axes(self) -> tuple[str, str]:
        """Axis titles (x, y) of ``curve_points``."""
        done = "removed" if self.curve == "remove" else "kept"
        return f"% of {self.unit}s {done} (most attributed first)", "p(x) − p(x̃)"

    def __call__(self, record: Attribution, model=None) -> float:
        """Plain reference path: every variant through the model on its own (use ``Evaluator`` for speed)."""
        if model is None:
            raise ValueError(f"{self.name} runs the explained model on perturbed inputs: pass model=")
        ids = torch.tensor(record.input_ids)
        rid = replacement_id(model, self.perturbation)
        p0 = single_prob(model, ids, record.target)
        pv = [single_prob(model, variant_ids(ids, k, self.perturbation, rid), record.target)
              for k in self.keep_masks(record)]  # fmt: skip
        return self.reduce(p0, np.asarray(pv, dtype=np.float64))


@torch.inference_mode()
def single_prob(model, ids: Tensor, target: int) -> float:
    """p_target of one unpadded id sequence [tokens], batch of one."""
    ids = ids[None].to(model.device)
    return float(model.probs(input_ids=ids, attention_mask=torch.ones_like(ids))[0, target])


class SearchMetric(PerturbationMetric):
    """A perturbation metric whose later variants depend on p_ŷ of earlier ones (several rounds of forward passes).

    ``search(record, memo)`` is a generator: it yields keep-masks [variants, tokens], is sent p_ŷ of those variants
    [variants] (float64) and returns the metric value. ``memo`` is a dict that the caller keeps for one explained
    model (or None): a search may store there what depends only on the example, not on its scores (NAOPC's
    bounds), so that every method scored on the same examples shares it. ``Evaluator.evaluate`` drives the searches
    of all records in lockstep, one batched, deduplicated set of forward passes per round, with the Evaluator's
    memo; ``__call__`` drives one record alone, without a memo.
    """

    def search(self, record: Attribution, memo: dict | None = None):
        raise NotImplementedError

    def __call__(self, record: Attribution, model=None) -> float:
        """Plain reference path: every variant of every round through the model on its own."""
        return self.drive(self.search(record), record, model)

    def drive(self, search, record: Attribution, model=None):
        """Run one record's generator ``search`` to its end, each variant alone; returns its return value."""
        if model is None:
            raise ValueError(f"{self.name} runs the explained model on perturbed inputs: pass model=")
        ids = torch.tensor(record.input_ids)
        rid = replacement_id(model, self.perturbation)
        try:
            keep = next(search)
            while True:
                p = [single_prob(model, variant_ids(ids, k, self.perturbation, rid), record.target) for k in keep]
                keep = search.send(np.asarray(p, dtype=np.float64))
        except StopIteration as done:
            return done.value
