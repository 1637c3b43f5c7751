"""Normalized AOPC (Edin et al. 2024, arXiv 2408.08137) of amlx's own AOPC: (AOPC − L) / (U − L) per example.

AOPC of an ordering π of the n units (``aopc_comp`` / ``aopc_suff``, faithfulness.py) is
(1/5) Σ_k [p_ŷ(x) − p_ŷ(variant_k)], variant_k = x without (comp) / with only (suff) π's first c_k units,
c_k = k% of n for k ∈ {1, 5, 10, 20, 50}. It depends on π only through the nested prefix sets
S_{c_1} ⊆ … ⊆ S_{c_5}, and every such chain is the prefix chain of some ordering. So, with the distinct sizes
d_1 < … < d_r of the c_k and w_j = how many k give d_j, U = max_π AOPC(π) and L = min_π AOPC(π) are the max / min
over chains S_1 ⊆ … ⊆ S_r, |S_j| = d_j, of (1/5) Σ_j w_j g(S_j), g(S) = p_ŷ(x) − p_ŷ(variant of S).

- Exact (n ≤ ``exact_max_units``, default 12): g on every set of every size d_j (Σ_j C(n, d_j) forward rows), then
  a dynamic programme over the chain (Σ_j C(n, d_j)·C(d_j, d_{j−1}) steps). With floor rounding the sizes are
  {0, 1, 2, ⌊n/2⌋} for n = 10..12: 1003 rows at n = 12.
- Beam (longer inputs): a max-beam and a min-beam grow sets one unit at a time up to d_r, deduplicated by set,
  ``beam_size`` (default 5, Edin et al.'s NAOPC_beam) sets each; a set is scored by its chain value so far plus, at
  a size that is no d_j, the next level's weight times its own g (a look-ahead). At most 2·B·n·d_r forward rows
  (fewer after deduplication). With B ≥ C(n, s) at every size it keeps every set and equals the exact bounds.
  Beam bounds are achievable orderings, so U_beam ≤ U and L_beam ≥ L; the record's own ordering is one of them too,
  so U and L are widened to include its AOPC and NAOPC always lies in [0, 1].

U and L depend on the example (ids, target), not on the explanation: the Evaluator keeps them per example in its
``search_memo``, so every method scored by one Evaluator pays for them once (and all get the same bounds).
NAOPC = 0 when U = L (every ordering scores the same, as Edin et al.). Both metrics use the same formula;
``naopc_suff`` keeps aopc_suff's direction (lower is better: 0 = the ordering with the least drop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from itertools import combinations
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from amlx.metrics import register_metric
from amlx.metrics.faithfulness import AOPC_PERCENTS, AopcComp, AopcSuff, _Aopc
from amlx.metrics.perturb import SearchMetric, unit_index
from amlx.records import Attribution

# A bound search yields a list of unit sets (bitmasks over units), is sent g of each set [sets] and returns
# (lowest, highest) chain value Σ_j w_j g(S_j).
BoundSearch = Generator[list[int], np.ndarray, tuple[float, float]]
DEGENERATE = 1e-12  # U − L at or below this: every ordering scores the same


def aopc_levels(counts: Tensor) -> list[tuple[int, int]]:
    """Distinct prefix sizes of AOPC's variants and how many variants have each: [(size, weight)], ascending."""
    return sorted(Counter(int(c) for c in counts).items())


def _bitmask(units: tuple[int, ...]) -> int:
    return sum(1 << u for u in units)


def exact_bounds(n_units: int, levels: list[tuple[int, int]]) -> BoundSearch:
    """Exact min and max over chains: g of every set of every level size, then a DP from the smallest level up."""
    combos = [[c for c in combinations(range(n_units), d)] for d, _ in levels]
    sets = [_bitmask(c) for level in combos for c in level]
    g = dict(zip(sets, (yield sets)))
    lo: dict[int, float] = {}
    hi: dict[int, float] = {}
    prev = None
    for (d, w), level in zip(levels, combos):
        cur_lo, cur_hi = {}, {}
        for c in level:
            s = _bitmask(c)
            if prev is None:
                below_lo = below_hi = 0.0
            else:
                subs = [_bitmask(t) for t in combinations(c, prev)]
                below_lo, below_hi = min(lo[t] for t in subs), max(hi[t] for t in subs)
            cur_lo[s], cur_hi[s] = below_lo + w * g[s], below_hi + w * g[s]
        lo, hi, prev = cur_lo, cur_hi, d
    return min(lo.values()), max(hi.values())


def beam_bounds(n_units: int, levels: list[tuple[int, int]], beam_size: int) -> BoundSearch:
    """Approximate min and max over chains by a min-beam and a max-beam that add one unit per step."""
    weight = dict(levels)
    top = levels[-1][0]
    ahead = {s: next(w for d, w in levels if d >= s) for s in range(top + 1)}  # next level's weight
    beams = {1: {0: 0.0}, -1: {0: 0.0}}  # sign (+1 max, −1 min) → {set: chain value so far}
    if 0 in weight:
        g0 = float((yield [0])[0])
        beams = {sign: {0: weight[0] * g0} for sign in beams}
    for size in range(1, top + 1):
        grown = {}  # sign → {set: best chain value of a predecessor}
        for sign, beam in beams.items():
            best: dict[int, float] = {}
            for s, value in beam.items():
                for u in range(n_units):
                    if not (s >> u) & 1:
                        t = s | (1 << u)
                        if t not in best or sign * value > sign * best[t]:
                            best[t] = value
            grown[sign] = best
        request = sorted(set(grown[1]) | set(grown[-1]))
        g = dict(zip(request, (float(v) for v in (yield request))))
        for sign, best in grown.items():
            if size in weight:
                values = {t: v + weight[size] * g[t] for t, v in best.items()}
                score = values
            else:
                values = best
                score = {t: v + ahead[size] * g[t] for t, v in best.items()}
            keep = sorted(values, key=lambda t: (-sign * score[t], t))[:beam_size]
            beams[sign] = {t: values[t] for t in keep}
    return min(beams[-1].values()), max(beams[1].values())


class _Naopc(SearchMetric):
    """NAOPC of amlx's AOPC (module docstring): exact bounds up to ``exact_max_units`` units, beam search above.

    ``beam_size`` (default 5) sets per beam; the other options are the AOPC metric's (default perturbation
    ``delete``, unit ``token``, floor rounding).
    """

    aopc_metric: ClassVar[type[_Aopc]]
    percents = AOPC_PERCENTS

    def __init__(self, beam_size: int = 5, exact_max_units: int = 12, perturbation: str | None = None,
                 unit: str | None = None, rounding: str = "floor", word_agg: str = "max") -> None:  # fmt: skip
        super().__init__(perturbation, unit, rounding, word_agg)
        if beam_size < 1:
            raise ValueError(f"{self.name}: beam_size must be ≥ 1, got {beam_size}")
        self.beam_size, self.exact_max_units = beam_size, exact_max_units
        self.aopc = self.aopc_metric(perturbation=self.perturbation, unit=self.unit, rounding=rounding,
                                     word_agg=word_agg)  # fmt: skip

    def unit_keep_masks(self, sets: list[int], units: np.ndarray, n_units: int) -> Tensor:
        """Keep-masks [sets, tokens] of the unit sets (bitmasks): the set removed (comp) or only it kept (suff)."""
        width = max(1, (n_units + 7) // 8)
        packed = np.frombuffer(b"".join(s.to_bytes(width, "little") for s in sets), dtype=np.uint8)
        member = np.unpackbits(packed.reshape(len(sets), width), axis=1, bitorder="little")[:, :n_units].astype(bool)
        attributable = units >= 0
        in_set = np.zeros((len(sets), len(units)), dtype=bool)
        in_set[:, attributable] = member[:, units[attributable]]
        keep = ~in_set if self.curve == "remove" else ~attributable[None] | in_set
        return torch.from_numpy(keep)

    def bound_search(self, record: Attribution, memo: dict | None = None) -> Generator[Tensor, np.ndarray, tuple[float, float, float]]:
        """Search generator (see ``SearchMetric``) that returns (AOPC of the record's ordering, L, U).

        The bounds depend on the example (ids, target), not on its scores: with a ``memo`` they are searched once per
        example and reused for every other record of it (and every method then has the same U and L).
        """
        p = yield torch.cat([torch.ones(1, len(record), dtype=torch.bool), self.aopc.keep_masks(record)])
        p0, aopc = p[0], self.aopc.reduce(p[0], p[1:])
        key = (repr(self), tuple(record.input_ids), record.target)
        if memo is not None and key in memo:
            lo, hi = memo[key]
        else:
            units, n = unit_index(record, self.unit)
            levels = aopc_levels(self.aopc.counts(n))
            if n <= self.exact_max_units:
                bounds = exact_bounds(n, levels)
            else:
                bounds = beam_bounds(n, levels, self.beam_size)
            try:
                sets = next(bounds)
                while True:
                    p = yield self.unit_keep_masks(sets, units, n)
                    sets = bounds.send(p0 - p)
            except StopIteration as done:
                lo, hi = (v / self.aopc.divisor for v in done.value)
            if memo is not None:
                memo[key] = lo, hi
        return aopc, min(lo, aopc), max(hi, aopc)

    def bounds(self, record: Attribution, model) -> tuple[float, float, float]:
        """(AOPC, L, U) of one record, every variant through the model alone (reference path)."""
        return self.drive(self.bound_search(record), record, model)

    def search(self, record: Attribution, memo: dict | None = None):
        aopc, lo, hi = yield from self.bound_search(record, memo)
        return 0.0 if hi - lo <= DEGENERATE else (aopc - lo) / (hi - lo)


@register_metric
class NaopcComp(_Naopc):
    __doc__ = "NAOPC-C: (AOPC-C − L) / (U − L). " + _Naopc.__doc__
    name, direction, curve = "naopc_comp", "higher", "remove"
    aopc_metric = AopcComp


@register_metric
class NaopcSuff(_Naopc):
    __doc__ = "NAOPC-S: (AOPC-S − L) / (U − L); lower is better, as AOPC-S. " + _Naopc.__doc__
    name, direction, curve = "naopc_suff", "lower", "keep"
    aopc_metric = AopcSuff
