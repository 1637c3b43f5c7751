"""The ensemble method (thesis §3.4): normalized mean and mean rank of member maps, and reuse in the evaluate job."""

from __future__ import annotations

import numpy as np
import pytest

from amlx import methods
from amlx.jobs.evaluate import evaluate
from amlx.methods.base import AttributionMethod
from amlx.methods.ensemble import Ensemble, average_ranks, combine_maps, member_spec
from amlx.records import load_jsonl
from tests.test_evaluate_job import TEXTS, setup  # noqa: F401  (the evaluate job's tiny model and data)

MEMBERS = ["gradient_x_input", "saliency", {"name": "random", "seed": 3}]


def test_normalized_mean_divides_each_map_by_its_absolute_sum_and_averages():
    maps = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    # by hand: [1, 2, 3] / 6 and [-1, 0, 3] / 4; an all-zero map stays zero; mean over the three members
    expected = (np.array([1 / 6, 2 / 6, 3 / 6]) + np.array([-0.25, 0.0, 0.75]) + 0) / 3
    np.testing.assert_allclose(combine_maps(maps, "mean"), expected)


def test_rank_mean_averages_ranks_over_the_number_of_tokens_with_ties_sharing_their_mean_rank():
    assert average_ranks(np.array([3.0, 0.0, 0.0, 1.0])).tolist() == [4.0, 1.5, 1.5, 3.0]
    maps = np.array([[0.1, 0.5, 0.2], [3.0, 0.0, 0.0]])
    # ranks [1, 3, 2] and [3, 1.5, 1.5], each divided by 3 tokens, then averaged
    np.testing.assert_allclose(combine_maps(maps, "rank"), [(1 + 3) / 6, (3 + 1.5) / 6, (2 + 1.5) / 6])


def test_members_are_names_or_mappings_with_options():
    assert member_spec("lime") == ("lime", {})
    assert member_spec({"name": "lime", "n_samples": 100}) == ("lime", {"n_samples": 100})
    with pytest.raises(ValueError, match="method name or a mapping"):
        member_spec({"n_samples": 100})
    with pytest.raises(ValueError, match="unknown ensemble members"):
        Ensemble(members=["no_such_method"])


@pytest.mark.parametrize("aggregation", ["mean", "rank"])
def test_ensemble_on_a_tiny_model_equals_the_hand_combination_of_its_members(explained, aggregation):
    model = explained("bert", "encoder")
    texts = ["a good movie", "bad plot and bad acting", "the café scene is lovely"]
    recs = Ensemble(members=MEMBERS, aggregation=aggregation).attribute(texts, model)
    parts = [methods.get("gradient_x_input").attribute(texts, model), methods.get("saliency").attribute(texts, model),
             methods.get("random", seed=3).attribute(texts, model)]  # fmt: skip
    for b, rec in enumerate(recs):
        attr = rec.attributable
        maps = [p[b].scores[attr] for p in parts]
        if aggregation == "mean":
            hand = sum(m / np.abs(m).sum() for m in maps) / 3
        else:
            hand = sum(average_ranks(m) / attr.sum() for m in maps) / 3
        np.testing.assert_allclose(rec.scores[attr], hand, atol=1e-12)
        assert np.all(rec.scores[~attr] == 0)
        assert rec.method == "ensemble" and rec.target == parts[0][b].target
    combined = Ensemble(members=MEMBERS, aggregation=aggregation).combine(parts)
    for b, rec in enumerate(combined):
        np.testing.assert_allclose(rec.scores, recs[b].scores, atol=1e-12)
        assert rec.seconds == pytest.approx(sum(p[b].seconds for p in parts))  # an ensemble costs its members


def test_a_member_without_its_own_seed_gets_the_ensembles(explained):
    model = explained("bert", "encoder")
    rec = Ensemble(members=["random"], seed=7).attribute("a good movie", model)[0]
    alone = methods.get("random", seed=7).attribute("a good movie", model)[0]
    attr = rec.attributable
    np.testing.assert_allclose(rec.scores[attr], alone.scores[attr] / alone.scores[attr].sum())


def test_evaluate_job_reuses_records_of_members_it_also_evaluates_and_matches_fresh_maps(setup, monkeypatch):  # noqa: F811
    tmp_path, kw = setup
    members = ["random", "gradient_x_input", "saliency"]
    kw = {**kw, "metrics": ["comp"], "method_options": {"ens": {"members": members}}}
    calls = []
    original = AttributionMethod.attribute

    def counting(self, inputs, model, target=None, **extra):
        calls.append(self.name)
        return original(self, inputs, model, target, **extra)

    monkeypatch.setattr(AttributionMethod, "attribute", counting)
    evaluate(out_dir=str(tmp_path / "shared"), **{**kw, "methods": ["ens=ensemble", "random", "gradient_x_input"]})
    # 7 examples in chunks of 3: each evaluated method runs 3 times and is not run again for the ensemble;
    # saliency, evaluated only inside the ensemble, runs per chunk
    assert sorted(calls) == sorted(["random"] * 3 + ["gradient_x_input"] * 3 + ["saliency"] * 3)
    calls.clear()
    evaluate(out_dir=str(tmp_path / "alone"), **{**kw, "methods": ["ens=ensemble"]})
    assert sorted(calls) == sorted(members * 3)

    shared = load_jsonl(tmp_path / "shared" / "attributions" / "ens.jsonl")
    alone = load_jsonl(tmp_path / "alone" / "attributions" / "ens.jsonl")
    assert [r.meta["reused"] for r in shared] == [[True, True, False]] * 7
    assert [r.meta["reused"] for r in alone] == [[False, False, False]] * 7
    for a, b in zip(shared, alone):
        assert a.example_id == b.example_id and np.array_equal(a.scores, b.scores)
    # and the first chunk equals the ensemble method run directly (seed 0 = the run's seed + chunk start 0)
    from amlx.models import ExplainedModel

    model = ExplainedModel.from_pretrained(kw["model"])
    direct = Ensemble(members=members).attribute([r.text for r in shared[:3]], model)
    for a, b in zip(shared[:3], direct):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
