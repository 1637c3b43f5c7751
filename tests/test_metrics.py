"""Every metric against a value computed by hand on the bag-of-words model (tests/bow.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from amlx import metrics
from amlx.evaluation import Evaluator
from amlx.metrics.perturb import n_units_for
from tests.bow import PERTURBATION_METRICS, WEIGHTS, bow_explained, bow_record, p_positive

# ten one-token words; true ranking for "positive": good great fun movie the was plot slow dull bad
TEXT = "good great fun movie the plot was slow dull bad"
RANKED = ["good", "great", "fun", "movie", "the", "was", "plot", "slow", "dull", "bad"]
CLS, SEP = "[CLS]", "[SEP]"


@pytest.fixture(scope="module")
def model():
    return bow_explained()


@pytest.fixture(scope="module")
def rec(model):
    r = bow_record(model, TEXT)
    assert r.target == 1 and r.n_attributable == 10
    return r


def p(tokens):
    return p_positive([CLS, *tokens, SEP])


def without(top):
    return [t for t in RANKED if t not in top]


def value(name, rec, model, **opts):
    return metrics.get(name, **opts)(rec, model)


P_X = p(RANKED)


def test_registry_lists_every_schema_metric_with_a_direction():
    schema = ["suff", "comp", "log_odds", "aopc_suff", "aopc_comp", "as_auc", "ias_auc", "gt_overlap",
              "mean_rank_pct", "token_f1", "iou_f1", "auprc", "spearman_cascading"]  # fmt: skip
    assert set(schema) <= set(metrics.names())
    lower = {
        "suff",
        "log_odds",
        "aopc_suff",
        "ias_auc",
        "mean_rank_pct",
        "spearman_cascading",
        "spearman_independent",
        "marc_suff",
        "naopc_suff",
    }
    for name in metrics.names():
        assert metrics.direction(name) == ("lower" if name in lower else "higher"), name
    with pytest.raises(KeyError, match="registered metrics"):
        metrics.get("compp")


def test_direction_of_an_unregistered_name_is_none():
    assert metrics.direction("compp") is None and metrics.direction("comp") == "higher"


def test_a_second_metric_class_under_a_taken_name_is_refused(monkeypatch):
    comp = type(metrics.get("comp"))
    monkeypatch.setitem(metrics._REGISTRY, "comp", comp)  # put back after the test, whatever happens

    class Impostor(metrics.Metric):
        name, direction = "comp", "lower"

    with pytest.raises(ValueError, match="two metrics are registered as 'comp'"):
        metrics.register_metric(Impostor)
    assert type(metrics.get("comp")) is comp
    assert metrics.register_metric(comp) is comp  # registering the same class again is harmless


def test_comp_equals_prob_drop_when_top_20pct_deleted(rec, model):
    assert value("comp", rec, model) == pytest.approx(P_X - p(without(["good", "great"])), abs=1e-6)


def test_suff_equals_prob_drop_when_only_top_20pct_kept(rec, model):
    assert value("suff", rec, model) == pytest.approx(P_X - p(["good", "great"]), abs=1e-6)


def test_log_odds_replaces_top_20pct_by_mask(rec, model):
    expected = math.log(p(["[MASK]", "[MASK]", *without(["good", "great"])])) - math.log(P_X)
    assert value("log_odds", rec, model) == pytest.approx(expected, abs=1e-5)


def test_aopc_averages_over_1_5_10_20_50_percent_with_floor(rec, model):
    counts = [0, 0, 1, 2, 5]  # ⌊10·k/100⌋
    comp = [P_X - p(RANKED[c:]) for c in counts]
    suff = [P_X - p(RANKED[:c]) for c in counts]
    assert value("aopc_comp", rec, model) == pytest.approx(sum(comp) / 5, abs=1e-6)
    assert value("aopc_suff", rec, model) == pytest.approx(sum(suff) / 5, abs=1e-6)
    assert value("aopc_comp", rec, model, divisor=6) == pytest.approx(sum(comp) / 6, abs=1e-6)


def test_marc_averages_5_to_95_percent_with_pad_replacement(rec, model):
    counts = [n_units_for(10, k) for k in range(5, 100, 5)]
    assert counts[:4] == [0, 1, 1, 2]
    comp = [P_X - p(["[PAD]"] * c + RANKED[c:]) for c in counts]
    suff = [P_X - p(RANKED[:c] + ["[PAD]"] * (10 - c)) for c in counts]
    assert value("marc_comp", rec, model) == pytest.approx(np.mean(comp), abs=1e-6)
    assert value("marc_suff", rec, model) == pytest.approx(np.mean(suff), abs=1e-6)


def test_activation_auc_adds_words_to_a_fully_masked_input(rec, model):
    def auc(order):
        curve = [p(order[:j] + ["[MASK]"] * (10 - j)) for j in range(11)]
        return sum((curve[j] + curve[j + 1]) / 2 * 0.1 for j in range(10))

    assert value("as_auc", rec, model) == pytest.approx(auc(RANKED), abs=1e-6)
    assert value("ias_auc", rec, model) == pytest.approx(auc(RANKED[::-1]), abs=1e-6)


def test_perturbation_modes_delete_mask_pad_differ_by_replacement_weight(rec, model):
    rest = without(["good", "great"])
    assert value("comp", rec, model, perturbation="delete") == pytest.approx(P_X - p(rest), abs=1e-6)
    assert value("comp", rec, model, perturbation="mask") == pytest.approx(
        P_X - p(["[MASK]"] * 2 + rest), abs=1e-6
    )
    assert value("comp", rec, model, perturbation="pad") == pytest.approx(
        P_X - p(["[PAD]"] * 2 + rest), abs=1e-6
    )
    # [MASK] weighs −0.5 and [PAD] +0.25: mask removes more evidence for "positive" than delete, pad less
    assert WEIGHTS["[MASK]"] < 0 < WEIGHTS["[PAD]"]


def test_rounding_floor_vs_ceil(rec, model):
    assert [n_units_for(10, k) for k in (1, 5, 10, 15)] == [0, 0, 1, 1]
    assert [n_units_for(10, k, "ceil") for k in (1, 5, 10, 15)] == [1, 1, 1, 2]
    assert n_units_for(3, 20, "ceil") == 1 and n_units_for(3, 20) == 0
    counts = [1, 1, 1, 2, 5]
    expected = sum(P_X - p(RANKED[c:]) for c in counts) / 5
    assert value("aopc_comp", rec, model, rounding="ceil") == pytest.approx(expected, abs=1e-6)


def test_k_100_percent_removes_every_unit(rec, model):
    for n in range(1, 13):
        assert n_units_for(n, 100) == n_units_for(n, 100, "ceil") == n
    everything = metrics.get("comp")
    everything.percents = (100,)  # Comp(100): the variant keeps only [CLS] [SEP]
    assert everything(rec, model) == pytest.approx(P_X - p([]), abs=1e-6)
    assert Evaluator(model, [everything]).evaluate([rec])["comp"][0] == pytest.approx(P_X - p([]), abs=1e-6)
    words = bow_record(model, "good badly slow", target=1)  # 3 words, 4 tokens: every word goes, "##ly" with "bad"
    everything.unit = "word"
    assert everything(words, model) == pytest.approx(p(["good", "bad", "##ly", "slow"]) - p([]), abs=1e-6)


def test_ceil_of_a_tiny_k_is_exactly_one_unit():
    for n in range(1, 13):
        assert n_units_for(n, 0.01, "ceil") == 1
        assert n_units_for(n, 0.01) == 0
    assert n_units_for(0, 100) == n_units_for(0, 0.01, "ceil") == 0  # nothing to remove


def test_too_few_tokens_comp_is_zero_and_suff_keeps_only_specials(model):
    short = bow_record(model, "good movie")  # 20% of 2 tokens rounds down to 0
    px = p(["good", "movie"])
    assert value("comp", short, model) == 0.0
    assert value("suff", short, model) == pytest.approx(px - p([]), abs=1e-6)
    ev = Evaluator(model, ["comp", "suff"]).evaluate([short])
    assert ev["comp"][0] == 0.0  # exactly: the variant is deduplicated with the input itself
    assert value("comp", short, model, rounding="ceil") == pytest.approx(px - p(["movie"]), abs=1e-6)


def test_word_unit_removes_every_token_of_the_top_words(model):
    # "badly" = bad ##ly; word score = max(−(−2), −0.4) for target negative
    r = bow_record(model, "good badly slow", target=0)
    assert r.tokens[1:-1] == ["good", "bad", "##ly", "slow"]
    assert np.allclose(r.word_scores("max"), [-2.0, 2.0, 0.6])
    assert np.allclose(r.word_scores("sum"), [-2.0, 1.6, 0.6])
    assert np.allclose(r.word_scores("mean"), [-2.0, 0.8, 0.6])
    p_neg = 1 - p(["good", "bad", "##ly", "slow"])
    # token unit, ceil: remove 1 token ("bad"); word unit: remove "bad" and "##ly"
    tok = value("comp", r, model, rounding="ceil")
    word = value("comp", r, model, rounding="ceil", unit="word")
    assert tok == pytest.approx(p_neg - (1 - p(["good", "##ly", "slow"])), abs=1e-6)
    assert word == pytest.approx(p_neg - (1 - p(["good", "slow"])), abs=1e-6)


def test_true_weights_beat_random_and_reversed_rankings_on_every_faithfulness_metric(model):
    from amlx.methods import get

    texts = ["good great fun movie the plot was slow dull bad", "the bad movie was awful and dull and slow .",
             "a great fun plot , good movie", "slow and dull , the plot was bad"]  # fmt: skip
    true = [bow_record(model, t) for t in texts]
    reverse = [
        bow_record(model, t, scores=-r.scores[r.attributable], target=r.target) for t, r in zip(texts, true)
    ]
    rand = get("random", seed=0).attribute(texts, model)
    names = list(PERTURBATION_METRICS)
    ev = Evaluator(model, names)
    t, r, v = ev.evaluate(true), ev.evaluate(rand), ev.evaluate(reverse)
    for name in names:
        sign = 1 if metrics.direction(name) == "higher" else -1
        assert sign * (t[name].mean() - r[name].mean()) > 0, name
        assert sign * (t[name].mean() - v[name].mean()) > 0, name


# ------------------------------------------------------------------------------------------ agreement
def test_ground_truth_overlap_and_mean_rank_percentage(model):
    top = bow_record(model, TEXT, ground_truth=["good"])
    last = bow_record(model, TEXT, ground_truth=["bad"])
    two = bow_record(model, TEXT, ground_truth=["good", "slow"])
    assert metrics.get("gt_overlap")(top) == 1.0 and metrics.get("mean_rank_pct")(top) == pytest.approx(0.1)
    assert metrics.get("gt_overlap")(last) == 0.0 and metrics.get("mean_rank_pct")(last) == pytest.approx(1.0)
    assert metrics.get("gt_overlap")(two) == 0.5  # top-2 = good, great
    assert metrics.get("mean_rank_pct")(two) == pytest.approx(0.8)  # slow is 8th of 10


def test_token_f1_iou_f1_and_auprc(model):
    r = bow_record(model, TEXT, ground_truth=["good", "slow"])  # positions 0 and 7 of 10
    assert metrics.get("token_f1")(r) == pytest.approx(0.5)  # top-2 {good, great}: P = R = 1/2
    assert metrics.get("token_f1", k=30)(r) == pytest.approx(2 * 1 / (3 + 2))
    # predicted span [good great] has IoU 1/2 with [good]: P = 1/1, R = 1/2
    assert metrics.get("iou_f1")(r) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert metrics.get("iou_f1", k=30)(r) == 0.0  # IoU 1/3 < 0.5
    assert metrics.get("auprc")(r) == pytest.approx(
        0.5 * 1 / 1 + 0.5 * 2 / 8
    )  # good at rank 1, slow at rank 8
    tied = bow_record(model, TEXT, scores=[1.0] * 10, ground_truth=["good", "slow"])
    assert metrics.get("auprc")(tied) == pytest.approx(0.2)  # one threshold: precision = prevalence


def test_agreement_without_ground_truth_raises_and_empty_ground_truth_is_nan(model):
    with pytest.raises(ValueError, match="ground truth"):
        metrics.get("gt_overlap")(bow_record(model, TEXT))
    assert math.isnan(metrics.get("auprc")(bow_record(model, TEXT, ground_truth=["awful"])))


# ------------------------------------------------------------------------------------------ sanity
def test_spearman_randomization_gives_one_rho_per_step_and_example_and_leaves_the_model_intact(explained):
    from amlx.methods import get
    from amlx.metrics.sanity import spearman_randomization
    from tests.tiny import TEXTS

    model = explained("bert", "encoder")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = get("gradient_x_input")
    steps, rho = spearman_randomization(method, model, list(TEXTS), "cascading")
    assert steps[0] == "classifier" and len(steps) == 3 and rho.shape == (3, len(TEXTS))
    assert np.all(np.abs(rho) <= 1)
    assert all(torch_equal(before[k], v) for k, v in model.state_dict().items())
    ind = metrics.get("spearman_independent")(method, model, list(TEXTS))
    assert ind.shape == (len(TEXTS),)
    with pytest.raises(ValueError, match="re-runs"):
        Evaluator(model, ["spearman_cascading"])


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
