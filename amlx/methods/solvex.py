"""Solvex (Zhou & Shah 2023, arXiv 2205.08696, methods.md "Additions" §2): beam search over orderings of the units.

An explanation is an order π of the L units (first = most important). With S_k = the first k units of π and
F = p_target, the search maximizes the cumulative score Σ_{k=1..L} s(S_k) of the chosen ``metric``:
``comp`` s(S) = F(x) − F(x_{∖S}); ``suff`` s(S) = F(x_S) − F(x) (maximizing it minimizes amlx's suff);
``comp-suff`` s(S) = F(x_S) − F(x_{∖S}). Each step extends every partial order of the beam by every unused unit and
keeps the best ``beam_size``; partial orders with the same set have the same future, so only the best of them is kept
(exact pruning). Units and perturbations are those of amlx's metrics (``amlx.metrics.perturb``): tokens or words,
``delete`` by default, so "searched for comp" is the reference the comp of other methods can be held against.

Output (§2): unit π_r (r = 1..L) scores L − r minus an offset o ∈ {k − ½ : k = 0..L}, the o whose signs best agree
with the occlusion drops F(x) − F(x_{∖{i}}) (the smallest such o on ties); each token gets its unit's score.

Batching: the searches of all examples of an internal batch advance in lock-step; every F a step needs that is not
known yet (forwards are deduplicated by the set of units kept, so F(x_S) and F(x_{∖(U∖S)}) are one row) goes
through the model in one call of ``amlx.evaluation.variant_probs`` (passes of ≤ ``max_rows`` rows, ≤ ``max_tokens``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from amlx.evaluation import variant_probs
from amlx.methods.base import AttributionMethod, register_method
from amlx.methods.perturbation import word_units
from amlx.metrics.perturb import FILL, MODES, UNITS, build_variants, replacement_id
from amlx.models.explained import Encoded

OBJECTIVES = ("comp", "suff", "comp-suff")


def search_units(enc: Encoded, unit: str) -> Tensor:
    """Unit index of every token (0..L-1 per row), -1 where not attributable: [batch, tokens]."""
    if unit == "word":
        return word_units(enc)
    return torch.where(enc.attributable, enc.attributable.long().cumsum(1) - 1, torch.full_like(enc.input_ids, -1))


def forwards_bound(n_units: int, beam_size: int, metric: str) -> int:
    """Upper bound on the forward rows of one search (§2 "Cost"): m·Σ_k min(B(L−k+1), C(L,k)) (+ L for suff's shift)."""
    sets = sum(min(beam_size * (n_units - k + 1), math.comb(n_units, k)) for k in range(1, n_units + 1))
    return (2 if metric == "comp-suff" else 1) * sets + (n_units if metric == "suff" else 0)


def fitting_beam(n_units: int, beam_size: int, metric: str, max_forwards: int | None) -> int:
    """The largest beam ≤ ``beam_size`` whose bound fits ``max_forwards`` (1 when none does: a greedy search)."""
    if max_forwards is None:
        return beam_size
    lo, hi = 1, beam_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if forwards_bound(n_units, mid, metric) <= max_forwards:
            lo = mid
        else:
            hi = mid - 1
    return lo


def offset_scores(order: list[int], occlusion: np.ndarray) -> np.ndarray:
    """Unit scores [L] from the order π and the occlusion drops [L]: L − r minus the best half-integer offset."""
    n = len(order)
    ranks = np.empty(n)
    ranks[np.asarray(order)] = np.arange(n - 1, -1, -1)
    offsets = np.arange(n + 1) - 0.5  # [L + 1]
    agree = (np.sign(ranks[None] - offsets[:, None]) == np.sign(occlusion)[None]).sum(1)
    return ranks - offsets[int(np.argmax(agree))]


class BeamSearch:
    """One example's search state: the beam and F of every kept-unit set evaluated so far (keyed by its bytes)."""

    def __init__(self, n_units: int, f_input: float, metric: str, beam_size: int) -> None:
        self.n_units, self.f_input, self.metric, self.beam_size = n_units, f_input, metric, beam_size
        everything = np.ones(n_units, dtype=bool)
        self.known: dict[bytes, float] = {everything.tobytes(): f_input}  # F(x) itself: every unit kept
        self.beam: list[tuple[float, tuple[int, ...], np.ndarray]] = [(0.0, (), ~everything)]
        self.children: list[tuple[float, tuple[int, ...], np.ndarray]] = []

    @property
    def done(self) -> bool:
        return len(self.beam[0][1]) == self.n_units

    def kept_sets(self, chosen: np.ndarray) -> list[np.ndarray]:
        """The kept-unit sets whose F scores the chosen set S: U∖S (comp), S (suff) or both."""
        return {"comp": [~chosen], "suff": [chosen], "comp-suff": [chosen, ~chosen]}[self.metric]

    def expand(self) -> list[np.ndarray]:
        """Extend every partial order by every unused unit; return the kept-unit sets [L] whose F is still unknown."""
        self.children, missing = [], {}
        for score, order, chosen in self.beam:
            for u in np.flatnonzero(~chosen):
                child = chosen.copy()
                child[u] = True
                self.children.append((score, (*order, int(u)), child))
                for kept in self.kept_sets(child):
                    key = kept.tobytes()
                    if key not in self.known:
                        missing.setdefault(key, kept)
        return list(missing.values())

    def gain(self, chosen: np.ndarray) -> float:
        """s(S) of the chosen set S (module docstring)."""
        f = self.known
        if self.metric == "comp":
            return self.f_input - f[(~chosen).tobytes()]
        if self.metric == "suff":
            return f[chosen.tobytes()] - self.f_input
        return f[chosen.tobytes()] - f[(~chosen).tobytes()]

    def select(self) -> None:
        """Score the children, keep the best order per set, then the best ``beam_size`` (stable on ties)."""
        best: dict[bytes, tuple[float, tuple[int, ...], np.ndarray]] = {}
        for score, order, chosen in self.children:
            total = score + self.gain(chosen)
            key = chosen.tobytes()
            if key not in best or total > best[key][0]:
                best[key] = (total, order, chosen)
        self.beam = sorted(best.values(), key=lambda entry: -entry[0])[: self.beam_size]

    def occlusion_sets(self) -> list[np.ndarray]:
        """Kept-unit sets U∖{i} of the occlusion drops the offset is chosen by (§2 "Output")."""
        return [np.arange(self.n_units) != i for i in range(self.n_units)]

    def unit_scores(self) -> np.ndarray:
        """Scores [L] of the best order found."""
        occlusion = np.array([self.f_input - self.known[kept.tobytes()] for kept in self.occlusion_sets()])
        return offset_scores(list(self.beam[0][1]), occlusion)


@register_method("solvex")
class Solvex(AttributionMethod):
    """Solvex (module docstring): beam search over unit orders that maximizes ``metric``'s cumulative score.

    Options: ``metric`` (comp | suff | comp-suff; the variant says which it searched), ``beam_size`` B (50, the
    paper's), ``max_forwards`` (forward rows per example beyond F(x); None = no cap; else B is lowered per example
    to the largest whose bound m·Σ_k min(B(L−k+1), C(L,k)) fits, never below 1), ``unit`` (token | word, as the
    metrics' ``unit``; default token), ``perturbation`` (delete | mask | pad, default delete), ``max_tokens`` /
    ``max_rows`` (per forward pass). Black box, no gradients. Cost ≤ B·L(L+1) forward rows (+ L for suff).
    """

    takes_probs = True
    sort_by_length = True  # an example's search does not depend on its batch-mates

    def __init__(
        self, metric: str = "comp", beam_size: int = 50, max_forwards: int | None = None, unit: str = "token",
        perturbation: str = "delete", max_tokens: int = 8192, max_rows: int = 64, internal_batch_size: int = 16,
    ) -> None:  # fmt: skip
        super().__init__(internal_batch_size)
        if metric not in OBJECTIVES:
            raise ValueError(f"solvex: metric must be one of {OBJECTIVES}, got {metric!r}")
        if unit not in UNITS or perturbation not in MODES:
            raise ValueError(f"solvex: unit must be one of {UNITS} and perturbation one of {MODES}")
        if beam_size < 1 or (max_forwards is not None and max_forwards < 1):
            raise ValueError(f"solvex: beam_size and max_forwards must be ≥ 1, got {beam_size}, {max_forwards}")
        self.metric, self.beam_size, self.max_forwards = metric, beam_size, max_forwards
        self.unit, self.perturbation, self.max_tokens, self.max_rows = unit, perturbation, max_tokens, max_rows
        parts = [f"searched for {metric}", f"B={beam_size}"]
        parts += [f"≤{max_forwards} fwd"] if max_forwards is not None else []
        parts += [p for p, default in ((unit, "token"), (perturbation, "delete")) if p != default]
        self.variant = ", ".join(parts)

    def scores(self, enc: Encoded, model, target: Tensor, probs: Tensor) -> Tensor:
        rid = replacement_id(model, self.perturbation)
        units = search_units(enc, self.unit).cpu()  # [batch, tokens]
        lengths = enc.attention_mask.sum(1).tolist()
        rows = [(enc.input_ids[b, :n].cpu(), units[b, :n]) for b, n in enumerate(lengths)]  # ids, units [tokens]
        targets = target.tolist()
        f_input = probs.gather(1, target[:, None])[:, 0].tolist()
        searches = []
        for b in range(len(enc)):
            n_units = int(units[b].max()) + 1
            beam = fitting_beam(n_units, self.beam_size, self.metric, self.max_forwards)
            searches.append(BeamSearch(n_units, f_input[b], self.metric, beam))
        active = [b for b, s in enumerate(searches) if s.n_units > 0]
        while active:
            self._evaluate(model, rows, targets, rid, searches, {b: searches[b].expand() for b in active})
            for b in active:
                searches[b].select()
            active = [b for b in active if not searches[b].done]
        wanted = {b: [k for k in s.occlusion_sets() if k.tobytes() not in s.known] for b, s in enumerate(searches)}
        self._evaluate(model, rows, targets, rid, searches, wanted)
        scores = torch.zeros(enc.input_ids.shape, dtype=torch.float32)
        for b, s in enumerate(searches):
            if s.n_units:
                has = units[b] >= 0
                scores[b, has] = torch.from_numpy(s.unit_scores()).float()[units[b, has]]
        return scores.to(enc.input_ids.device)

    def _evaluate(
        self, model, rows: list[tuple[Tensor, Tensor]], targets: list[int], rid: int, searches: list[BeamSearch],
        wanted: dict[int, list[np.ndarray]],
    ) -> None:  # fmt: skip
        """F of every wanted kept-unit set [L] of every example b (``rows[b]`` = its ids and units), in one call."""
        variants, owners = [], []
        for b, kept_sets in wanted.items():
            if not kept_sets:
                continue
            ids, units = rows[b]
            has = units >= 0
            keep = torch.ones(len(kept_sets), len(ids), dtype=torch.bool)  # [sets, tokens]
            keep[:, has] = torch.from_numpy(np.stack(kept_sets))[:, units[has]]
            variants.append(build_variants(ids, keep, self.perturbation, rid))
            owners += [(b, k.tobytes()) for k in kept_sets]
        if not variants:
            return
        width = max(v.shape[1] for v in variants)
        allrows = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1]), value=FILL) for v in variants])
        p, _ = variant_probs(model, allrows, self.max_tokens, self.max_rows)  # [rows, classes]
        values = p[torch.arange(len(owners)), torch.tensor([targets[b] for b, _ in owners])].tolist()
        for (b, key), v in zip(owners, values):
            searches[b].known[key] = v
