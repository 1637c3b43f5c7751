"""NAOPC: bounds of amlx's own AOPC over orderings, exact and by beam search, and the normalized metric."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from amlx import methods
from amlx import metrics as metric_registry
from amlx.evaluation import Evaluator
from amlx.metrics.naopc import NaopcComp, NaopcSuff, aopc_levels, beam_bounds, exact_bounds
from amlx.metrics.perturb import replacement_id, single_prob, variant_ids

WORDS = "good bad movie plot cast score fun".split()  # one tiny-BERT token each


def _drive(search, g):
    """Run a pure bound search with the set function ``g(bitmask) -> float``."""
    try:
        sets = next(search)
        while True:
            sets = search.send(np.array([g(s) for s in sets]))
    except StopIteration as done:
        return done.value


def _record(model, n: int):
    """A record of the first ``n`` words (n attributable tokens), scores 0."""
    return methods.get("random").attribute(" ".join(WORDS[:n]), model)[0]


def _with_order(rec, order):
    """``rec`` with scores that rank its attributable tokens in ``order`` (first = most attributed)."""
    scores = np.zeros(len(rec))
    pos = np.flatnonzero(rec.attributable)
    scores[pos[list(order)]] = np.arange(len(order), 0, -1)
    out = copy.copy(rec)  # not dataclasses.replace: 5040 re-validations would dominate the test
    out.scores = scores
    return out


def _all_orderings_aopc(rec, model, naopc):
    """AOPC of every ordering of the record's units by the AOPC metric's own variants (brute force)."""
    aopc = naopc.aopc
    ids, rid, cache = torch.tensor(rec.input_ids), replacement_id(model, aopc.perturbation), {}

    def p(keep):
        key = tuple(keep.tolist())
        if key not in cache:
            cache[key] = single_prob(model, variant_ids(ids, keep, aopc.perturbation, rid), rec.target)
        return cache[key]

    p0 = p(torch.ones(len(rec), dtype=torch.bool))
    out = {}
    for order in itertools.permutations(range(rec.n_attributable)):
        keep = aopc.keep_masks(_with_order(rec, order))
        out[order] = aopc.reduce(p0, np.array([p(k) for k in keep]))
    return out


@pytest.mark.parametrize("cls", [NaopcComp, NaopcSuff])
@pytest.mark.parametrize("n,rounding", [(2, "floor"), (4, "floor"), (5, "floor"), (7, "floor"), (5, "ceil"), (6, "ceil")])
def test_exact_bounds_equal_brute_force_over_all_orderings(explained, cls, n, rounding):
    model = explained("bert", "encoder")
    rec = _record(model, n)
    naopc = cls(rounding=rounding)
    brute = _all_orderings_aopc(rec, model, naopc)
    aopc, lo, hi = naopc.bounds(rec, model)
    assert lo == pytest.approx(min(brute.values()), abs=1e-9)
    assert hi == pytest.approx(max(brute.values()), abs=1e-9)
    assert hi > lo  # the tiny model is not indifferent to the order
    # every ordering lies within the bounds
    assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in brute.values())
    # a beam that can hold every set at every size is exact
    beam = cls(rounding=rounding, beam_size=max(1, len(brute)), exact_max_units=0).bounds(rec, model)
    assert beam[1:] == pytest.approx((lo, hi), abs=1e-9)


@pytest.mark.parametrize("cls", [NaopcComp, NaopcSuff])
def test_naopc_is_one_for_the_best_ordering_and_zero_for_the_worst(explained, cls):
    model = explained("bert", "encoder")
    rec = _record(model, 6)
    naopc = cls()
    brute = _all_orderings_aopc(rec, model, naopc)
    best, worst = max(brute, key=brute.get), min(brute, key=brute.get)
    values = Evaluator(model, [naopc]).evaluate([_with_order(rec, best), _with_order(rec, worst)])[naopc.name]
    assert values == pytest.approx([1.0, 0.0], abs=1e-6)


def test_levels_are_the_distinct_prefix_sizes_with_their_multiplicity():
    counts = metric_registry.get("aopc_comp").counts(24)  # ⌊24·k/100⌋ for k = 1, 5, 10, 20, 50
    assert counts.tolist() == [0, 1, 2, 4, 12]
    assert aopc_levels(counts) == [(0, 1), (1, 1), (2, 1), (4, 1), (12, 1)]
    assert aopc_levels(metric_registry.get("aopc_comp").counts(7)) == [(0, 3), (1, 1), (3, 1)]


def test_greedy_beam_is_exact_for_an_additive_set_function():
    # g(S) = Σ_{i∈S} v_i: the best chain takes the largest v first, which a beam of one finds
    v = np.array([0.3, -0.2, 0.9, 0.1, -0.7, 0.5, 0.05, -0.4, 0.2])
    levels = [(0, 2), (1, 1), (3, 1), (6, 1)]

    def g(s):
        return float(sum(v[u] for u in range(len(v)) if (s >> u) & 1))

    exact = _drive(exact_bounds(len(v), levels), g)
    assert _drive(beam_bounds(len(v), levels, beam_size=1), g) == pytest.approx(exact)
    top = np.sort(v)[::-1]
    assert exact[1] == pytest.approx(top[:1].sum() + top[:3].sum() + top[:6].sum())


def test_beam_bounds_lie_inside_the_exact_bounds():
    rng = np.random.default_rng(0)
    n, levels = 8, [(0, 1), (1, 1), (2, 1), (4, 2)]
    table = rng.normal(size=2**n)
    exact = _drive(exact_bounds(n, levels), lambda s: table[s])
    for b in (1, 2, 5):
        lo, hi = _drive(beam_bounds(n, levels, beam_size=b), lambda s: table[s])
        assert exact[0] <= lo + 1e-12 and hi <= exact[1] + 1e-12


def test_naopc_lies_in_unit_interval_on_every_example_and_batched_equals_reference(explained):
    model = explained("bert", "encoder")
    texts = ["a good movie", "bad plot and bad acting", "a slow dull and forgettable sequel with bad acting and a weak plot",
             "great music, great cast, great fun and a clever twist at the end"]  # fmt: skip
    recs = methods.get("gradient_x_input").attribute(texts, model) + methods.get("random").attribute(texts, model)
    assert max(r.n_attributable for r in recs) > NaopcComp().exact_max_units  # the beam path is covered too
    ev = Evaluator(model, ["naopc_comp", "naopc_suff", "aopc_comp"])
    values = ev.evaluate(recs)
    for name in ("naopc_comp", "naopc_suff"):
        assert np.all((values[name] >= 0) & (values[name] <= 1)), values[name]
    assert ev.stats["search_rounds"] > 2 and ev.stats["search_unique"] < ev.stats["search_variants"]
    short = [r for r in recs if r.n_attributable <= 5]
    reference = ev.evaluate_one_by_one(short)
    batched = ev.evaluate(short)
    for name in ("naopc_comp", "naopc_suff"):
        # float32 padding noise of a batched pass (~1e-6 in p) is divided by U − L, which can be ~0.05: 1e-4 on NAOPC
        np.testing.assert_allclose(batched[name], reference[name], atol=1e-4)
    np.testing.assert_allclose(batched["aopc_comp"], reference["aopc_comp"], atol=1e-5)


def test_bounds_are_searched_once_per_example_and_shared_by_every_method(explained):
    model = explained("bert", "encoder")
    texts = ["bad plot and bad acting", "a slow dull and forgettable sequel with bad acting and a weak plot"]
    ev = Evaluator(model, ["naopc_comp"])
    ev.evaluate(methods.get("gradient_x_input").attribute(texts, model))
    first = ev.stats["search_unique"]
    recs = methods.get("random").attribute(texts, model)
    shared = ev.evaluate(recs)["naopc_comp"]
    assert ev.stats["search_unique"] <= 6 * len(texts) < first  # each record's input and own 5 AOPC variants only
    for rec, value in zip(recs, shared):
        aopc, lo, hi = NaopcComp().bounds(rec, model)  # no memo: searched afresh
        assert value == pytest.approx((aopc - lo) / (hi - lo), abs=1e-5)
