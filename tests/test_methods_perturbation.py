"""Occlusion, LIME, Kernel SHAP and Shapley sampling on a model whose logit is additive in the present words.

With the [UNK] mask (weight 0), masking a word removes exactly its weights from the bag-of-words sum, so the
positive logit ½(b + Σ w) is additive in word presence and each word's Shapley value is ½·Σ_{its tokens} w.
"""

from __future__ import annotations

import numpy as np
import pytest

from amlx.methods import get
from amlx.methods.perturbation import word_units
from amlx.models.explained import ExplainedModel
from tests.bow import WEIGHTS, BowClassifier, bow_tokenizer, p_positive
from tests.tiny import TEXTS, tiny_explained

TEXT = "good movie , badly slow and dull but great fun"  # "badly" = bad + ##ly; "but" is [UNK]
PERTURBATION_METHODS = ("occlusion", "lime", "kernel_shap", "shapley_sampling")


@pytest.fixture(scope="module")
def additive():
    return ExplainedModel(BowClassifier(), bow_tokenizer(), "encoder", name="bow-unk", mask="unk")


def true_word_values(rec) -> np.ndarray:
    """Per token: ½ Σ w over the tokens of its word (the Shapley value of the word), 0 outside the text."""
    out = np.zeros(len(rec))
    for w in set(rec.word_ids[rec.attributable].tolist()):
        tokens = (rec.word_ids == w) & rec.attributable
        out[tokens] = 0.5 * sum(WEIGHTS.get(rec.tokens[i], 0.0) for i in np.flatnonzero(tokens))
    return out


def test_kernel_shap_recovers_the_true_shapley_values_within_1e_3(additive):
    (rec,) = get("kernel_shap", output="logit", n_samples=300).attribute([TEXT], additive, target="positive")
    np.testing.assert_allclose(rec.scores, true_word_values(rec), atol=1e-3)
    assert rec.scores[rec.tokens.index("bad")] == rec.scores[rec.tokens.index("##ly")]  # one word, one score


def test_shapley_sampling_is_exact_on_an_additive_model(additive):
    (rec,) = get("shapley_sampling", output="logit", n_samples=5).attribute([TEXT], additive, target=1)
    np.testing.assert_allclose(rec.scores, true_word_values(rec), atol=1e-5)


def test_occlusion_of_an_additive_logit_equals_each_words_weight(additive):
    recs = get("occlusion", output="logit").attribute([TEXT, "the plot was dull", "fun"], additive, target=1)
    for rec in recs:
        np.testing.assert_allclose(rec.scores, true_word_values(rec), atol=1e-6)


def test_occlusion_of_the_probability_is_the_drop_of_p_target(additive):
    (rec,) = get("occlusion").attribute(["good movie"], additive, target=1)
    full = p_positive(["good", "movie"])
    assert rec.scores[1] == pytest.approx(full - p_positive(["movie"]), abs=1e-6)
    assert rec.scores[2] == pytest.approx(full - p_positive(["good"]), abs=1e-6)


def test_lime_ranks_words_in_the_order_of_their_weights(additive):
    text = "good great fun dull awful bad"
    (rec,) = get("lime", output="logit", n_samples=300).attribute([text], additive, target=1)
    ranked = [rec.tokens[i] for i in np.argsort(-rec.scores[rec.attributable]) + 1]
    assert ranked == sorted(text.split(), key=lambda t: -WEIGHTS[t])


@pytest.mark.parametrize("method", PERTURBATION_METHODS)
def test_specials_and_prompt_are_never_perturbed_and_score_zero(explained, method):
    model = explained("llama", "prompted")
    opts = {} if method == "occlusion" else {"n_samples": 3 if method == "shapley_sampling" else 20}
    for rec in get(method, **opts).attribute(list(TEXTS), model):
        assert np.all(rec.scores[~rec.attributable] == 0) and np.any(rec.scores[rec.attributable] != 0)


def test_methods_are_seeded(explained):
    model = explained("bert", "encoder")
    a, b = (get("kernel_shap", n_samples=30, seed=1).attribute(list(TEXTS[:2]), model) for _ in range(2))
    assert all(np.array_equal(x.scores, y.scores) for x, y in zip(a, b))


def test_word_units_group_tokens_of_a_word(additive):
    enc = additive.encode([TEXT])
    units = word_units(enc)[0].tolist()
    tokens = additive.tokenizer.convert_ids_to_tokens(enc.input_ids[0])
    assert units[0] == units[-1] == -1  # [CLS], [SEP]
    assert units[tokens.index("bad")] == units[tokens.index("##ly")]
    assert sorted(set(units) - {-1}) == list(range(len(TEXT.split())))  # the comma is a word of its own


def test_a_learned_mask_has_no_id_to_perturb_with():
    model = ExplainedModel(BowClassifier(), bow_tokenizer(), "encoder", name="bow-learned", mask="learned")
    with pytest.raises(ValueError, match="learned mask embedding"):
        get("occlusion").attribute(["good movie"], model)


def test_budget_per_unit_spends_mp_pi_budget_of_forward_rows(monkeypatch):
    from amlx.methods.perturbation import KernelShapMethod

    method = KernelShapMethod(budget_per_unit=2.0, perturbations_per_eval=1000)
    assert method.samples_for(7) == 16 and method.variant == "prob-2n+2"
    assert KernelShapMethod(n_samples=50).samples_for(7) == 50
    rows = []
    original = KernelShapMethod.explained_output

    def counting(self, model, ids, mask, target):
        rows.append(len(ids))
        return original(self, model, ids, mask, target)

    monkeypatch.setattr(KernelShapMethod, "explained_output", counting)
    model = tiny_explained("bert", "encoder")
    method.attribute(["a good movie , really"], model)  # 5 words
    assert sum(rows) == 2 * 5 + 2  # captum adds no rows of its own beyond n_samples
