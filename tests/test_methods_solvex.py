"""Solvex (methods.md "Additions" §2) against brute force over all orders, on models whose output is known.

``AdditiveProb`` is the bag-of-words model of tests/bow.py with p(positive) = ½ + SCALE·Σ w over the present tokens:
the explained probability itself is additive in the present words, so comp(S) = SCALE·Σ_{i∈S} w_i under deletion.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from amlx.methods import get
from amlx.methods.solvex import fitting_beam, forwards_bound
from amlx.metrics.perturb import replacement_id, single_prob, variant_ids
from amlx.models.explained import ExplainedModel
from tests.bow import WEIGHTS, BowClassifier, bow_tokenizer

SCALE = 0.05
TEXT7 = "good movie , bad plot and fun"  # 7 tokens, all weights distinct: 2, .1, -.01, -2, -.2, .03, 1


class AdditiveProb(BowClassifier):
    """logits = log[1 − q, q] with q = ½ + SCALE·Σ_i attention_i·w_i: p(positive) = q, additive in the tokens."""

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        q = 0.5 + SCALE * (x[..., 0] * attention_mask.to(x.dtype)).sum(-1)
        return SimpleNamespace(logits=torch.stack([torch.log1p(-q), torch.log(q)], -1))


@pytest.fixture(scope="module")
def additive():
    return ExplainedModel(AdditiveProb(), bow_tokenizer(), "encoder", name="bow-additive-prob")


def order_of(rec) -> list[int]:
    """The searched order π as attributable-token indices (scores are distinct: rank − offset)."""
    s = rec.scores[rec.attributable]
    return [int(i) for i in np.argsort(-s, kind="stable")]


def weights_of(rec) -> np.ndarray:
    return np.array([WEIGHTS[t] for t, a in zip(rec.tokens, rec.attributable) if a])


def kept_set_probs(model, rec) -> dict[tuple[bool, ...], float]:
    """F of the record with each subset of its attributable tokens kept (deletion), each run on its own."""
    ids = torch.tensor(rec.input_ids)
    pos = np.flatnonzero(rec.attributable)
    rid = replacement_id(model, "delete")
    f = {}
    for kept in itertools.product([False, True], repeat=len(pos)):
        keep = torch.ones(len(ids), dtype=torch.bool)
        keep[pos] = torch.tensor(kept)
        f[kept] = single_prob(model, variant_ids(ids, keep, "delete", rid), rec.target)
    return f


def brute_force_best(f: dict[tuple[bool, ...], float], metric: str) -> tuple[int, ...]:
    """The order of the L units maximizing Σ_k s(S_k), over all L! orders, from F of every kept set."""
    n = len(next(iter(f)))
    full = (True,) * n

    def s(chosen: set[int]) -> float:
        with_s = f[tuple(i in chosen for i in range(n))]
        without_s = f[tuple(i not in chosen for i in range(n))]
        return {"comp": f[full] - without_s, "suff": with_s - f[full], "comp-suff": with_s - without_s}[metric]

    return max(itertools.permutations(range(n)), key=lambda order: sum(s(set(order[: k + 1])) for k in range(n)))


def test_full_beam_finds_the_brute_force_order_maximizing_comp_on_an_additive_model(additive):
    (rec,) = get("solvex", metric="comp", beam_size=math.factorial(7)).attribute([TEXT7], additive)
    assert rec.attributable.sum() == 7 and rec.target == 1
    assert tuple(order_of(rec)) == brute_force_best(kept_set_probs(additive, rec), "comp")


def test_full_beam_equals_brute_force_for_every_metric_on_a_nonlinear_tiny_bert(explained):
    model = explained("bert", "encoder")
    f = None
    for metric in ("comp", "suff", "comp-suff"):
        (rec,) = get("solvex", metric=metric, beam_size=24).attribute(["good bad movie plot"], model)
        assert rec.attributable.sum() == 4
        f = f or kept_set_probs(model, rec)
        assert tuple(order_of(rec)) == brute_force_best(f, metric), metric


@pytest.mark.parametrize("metric", ["comp", "suff", "comp-suff"])
def test_beam_of_one_gives_weight_descending_order_on_an_additive_model(additive, metric):
    (rec,) = get("solvex", metric=metric, beam_size=1).attribute([TEXT7], additive)
    assert order_of(rec) == list(np.argsort(-weights_of(rec)))


def test_output_is_a_permutation_minus_a_half_integer_offset(additive, explained):
    recs = get("solvex", beam_size=3).attribute([TEXT7, "bad plot", "fun"], additive)
    recs += get("solvex", beam_size=3).attribute(["good bad movie plot"], explained("bert", "encoder"))
    for rec in recs:
        s = rec.scores[rec.attributable]
        offset = len(s) - 1 - s.max()  # s = rank − o with ranks 0..L−1 and o ∈ {k − ½ : k = 0..L}
        assert offset + 0.5 in range(len(s) + 1)
        assert sorted((s + offset).tolist()) == list(range(len(s)))
        assert np.all(rec.scores[~rec.attributable] == 0)


def test_offset_makes_exactly_the_words_whose_occlusion_helps_the_target_positive(additive):
    (rec,) = get("solvex", beam_size=4).attribute([TEXT7], additive)
    np.testing.assert_array_equal(rec.scores[rec.attributable] > 0, weights_of(rec) > 0)


def test_word_units_give_every_token_of_a_word_its_score(additive):
    (rec,) = get("solvex", unit="word", beam_size=2).attribute(["good movie slowly bad"], additive)
    i = rec.tokens.index("slow")
    assert rec.tokens[i + 1] == "##ly" and rec.scores[i] == rec.scores[i + 1]
    assert len(set(rec.scores[rec.attributable].tolist())) == 4  # four words, four ranks
    assert "word" in rec.variant


def test_batched_search_equals_one_example_at_a_time(explained):
    model = explained("bert", "encoder")
    texts = ["A good movie.", "good bad movie plot", "bad"]
    together = get("solvex", metric="comp-suff", beam_size=3, internal_batch_size=3).attribute(texts, model)
    alone = get("solvex", metric="comp-suff", beam_size=3, internal_batch_size=1).attribute(texts, model)
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.scores, b.scores)


def test_forward_budget_caps_the_rows_and_falls_back_to_a_greedy_search(additive, monkeypatch):
    rows = []
    probs = additive.probs
    monkeypatch.setattr(additive, "probs", lambda **kw: rows.append(len(kw["input_ids"])) or probs(**kw))
    budget = forwards_bound(7, 1, "comp")  # 28: B = 1 at most
    (capped,) = get("solvex", beam_size=50, max_forwards=budget).attribute([TEXT7], additive)
    assert sum(rows) - 1 <= budget  # the one row beyond the search is F(x)
    monkeypatch.undo()
    (greedy,) = get("solvex", beam_size=1).attribute([TEXT7], additive)
    np.testing.assert_array_equal(capped.scores, greedy.scores)
    assert "≤28 fwd" in capped.variant


def test_fitting_beam_is_the_largest_beam_within_the_budget():
    assert forwards_bound(3, 1, "comp") == 3 + 2 + 1
    assert forwards_bound(3, 50, "comp-suff") == 2 * (3 + 3 + 1)
    assert forwards_bound(3, 1, "suff") == 6 + 3  # + the L occlusion rows of the offset
    assert fitting_beam(10, 50, "comp", None) == 50
    assert fitting_beam(10, 50, "comp", forwards_bound(10, 7, "comp")) == 7
    assert fitting_beam(10, 50, "comp", 1) == 1


def test_variant_names_the_metric_it_searched():
    assert get("solvex").variant == "searched for comp, B=50"
    assert get("solvex", metric="suff", beam_size=5, perturbation="mask").variant == "searched for suff, B=5, mask"
    with pytest.raises(ValueError, match="metric must be one of"):
        get("solvex", metric="aopc_comp")
