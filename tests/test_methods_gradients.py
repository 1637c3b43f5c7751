"""Saliency, Integrated Gradients, GradientSHAP and DeepLift checked by autograd, completeness and a linear model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amlx.methods import get
from amlx.methods.integrated_gradients import reference_embeddings
from amlx.models.explained import ExplainedModel
from tests.bow import WEIGHTS, BowClassifier, bow_tokenizer
from tests.tiny import TEXTS

GRADIENT_METHODS = ("saliency", "integrated_gradients", "gradient_shap", "deeplift")


@pytest.fixture(scope="module")
def bow():
    return ExplainedModel(
        BowClassifier(), bow_tokenizer(), "encoder", name="bow"
    )  # mask = [MASK], weight −0.5


def hand_gradient(model, rec) -> torch.Tensor:
    """∂logit_target/∂x of one unpadded example by autograd: [tokens, hidden]."""
    ids = torch.tensor([rec.input_ids])
    x = model.embed(ids).detach().requires_grad_(True)
    model.logits(inputs_embeds=x, attention_mask=torch.ones_like(ids))[0, rec.target].backward()
    return x.grad[0]


@pytest.mark.parametrize("reduction", ["l2", "l1", "sum"])
def test_saliency_equals_autograd_gradient_reduced_over_hidden(explained, reduction):
    model = explained("bert", "encoder")
    recs = get("saliency", reduction=reduction, internal_batch_size=3).attribute(
        list(TEXTS), model, target=[0, 1, 1]
    )
    for rec in recs:
        g = hand_gradient(model, rec)
        hand = {"l2": g.norm(dim=-1), "l1": g.abs().sum(-1), "sum": g.sum(-1)}[reduction]
        np.testing.assert_allclose(rec.scores, hand.numpy() * rec.attributable, rtol=1e-5, atol=1e-5)
    assert recs[0].variant == reduction


@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder")])
def test_integrated_gradients_completeness_within_2_percent_at_50_steps(explained, arch, kind):
    model = explained(arch, kind)
    enc = model.encode(list(TEXTS))
    with torch.no_grad():
        f_x = model.logits(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        ref = reference_embeddings(enc, model, "mask")
        gaps = f_x - model.logits(inputs_embeds=ref, attention_mask=enc.attention_mask)  # [batch, classes]
    target = gaps.abs().argmax(1)  # the class with the larger gap, so that 2% is a meaningful tolerance
    recs = get("integrated_gradients", n_steps=50).attribute(enc, model, target=target)
    for rec, gap in zip(recs, gaps.gather(1, target[:, None])[:, 0].tolist()):
        assert abs(gap) > 1e-2
        assert rec.scores.sum() == pytest.approx(gap, rel=0.02)


# the 3-point rules on α ∈ [0, 1]: Gauss–Legendre nodes ½ ∓ ½√(3/5), ½ with weights 5/18, 8/18, 5/18;
# the right Riemann sum at ⅓, ⅔, 1 with weights ⅓ each
THREE_POINT_RULES = {
    "gausslegendre": ([0.5 - 0.5 * (3 / 5) ** 0.5, 0.5, 0.5 + 0.5 * (3 / 5) ** 0.5], [5 / 18, 8 / 18, 5 / 18]),
    "riemann_right": ([1 / 3, 2 / 3, 1.0], [1 / 3, 1 / 3, 1 / 3]),
}


@pytest.mark.parametrize("integration", sorted(THREE_POINT_RULES))
def test_integrated_gradients_with_3_steps_equals_the_hand_quadrature_of_the_path_integral(explained, integration):
    # IG_i = Σ_h (x − x')_ih · Σ_k w_k ∂F/∂x_ih(x' + α_k (x − x')) on a nonlinear model: 2 steps ≠ 3 steps here
    model = explained("bert", "encoder")
    enc = model.encode([TEXTS[1]])
    rec = get("integrated_gradients", n_steps=3, integration=integration).attribute(enc, model, target=1)[0]
    x, ref = model.embed(enc.input_ids).detach(), reference_embeddings(enc, model, "mask")
    alphas, weights = THREE_POINT_RULES[integration]
    path_sum = torch.zeros_like(x)
    for alpha, weight in zip(alphas, weights):
        point = (ref + alpha * (x - ref)).requires_grad_(True)
        with torch.enable_grad():
            model.logits(inputs_embeds=point, attention_mask=enc.attention_mask)[0, 1].backward()
        path_sum += weight * point.grad
    hand = ((x - ref) * path_sum).sum(-1)[0]
    np.testing.assert_allclose(rec.scores, hand.numpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(rec.scores).max() > 1e-3


def test_integrated_gradients_reference_keeps_specials_and_replaces_text_tokens(explained):
    model = explained("llama", "prompted")
    enc = model.encode(list(TEXTS))
    x, ref = model.embed(enc.input_ids), reference_embeddings(enc, model, "mask")
    assert torch.equal(ref[~enc.attributable], x[~enc.attributable])
    assert torch.equal(ref[enc.attributable], model.mask_embedding().expand(int(enc.attributable.sum()), -1))


@pytest.mark.parametrize("baseline,reference", [("mask", "[MASK]"), ("pad", "[PAD]")])
@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap", "deeplift"])
def test_reference_methods_on_a_linear_model_equal_weight_times_difference(bow, method, baseline, reference):
    # logit_positive = ½(b + Σ x_i): the gradient is ½ everywhere, so every path method gives ½(x_i − x'_i)
    for target, sign in ((1, 0.5), (0, -0.5)):
        for rec in get(method, baseline=baseline).attribute(
            ["good movie , badly slow", "the plot"], bow, target=target
        ):
            expected = [
                sign * (WEIGHTS[t] - WEIGHTS[reference]) if a else 0.0
                for t, a in zip(rec.tokens, rec.attributable)
            ]
            np.testing.assert_allclose(rec.scores, expected, atol=1e-5)


def test_integrated_gradients_is_batched_over_steps_and_examples(explained):
    model = explained("bert", "encoder")
    small = get("integrated_gradients", n_steps=20, internal_batch_size=7).attribute(list(TEXTS), model)
    large = get("integrated_gradients", n_steps=20, internal_batch_size=60).attribute(list(TEXTS), model)
    for a, b in zip(small, large):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_gradient_shap_is_seeded(explained):
    model = explained("bert", "encoder")
    a, b = (
        get("gradient_shap", n_samples=4, stdevs=0.1, seed=3).attribute(list(TEXTS[:2]), model)
        for _ in range(2)
    )
    assert all(np.array_equal(x.scores, y.scores) for x, y in zip(a, b))


def test_deeplift_failure_is_reported_as_not_implemented_naming_the_model(explained, monkeypatch):
    from captum.attr import DeepLift

    def fail(*args, **kwargs):
        raise RuntimeError(
            "A Module Foo was detected that does not contain some of the input/output attributes"
        )

    monkeypatch.setattr(DeepLift, "attribute", fail)
    with pytest.raises(NotImplementedError, match="tiny-bert-encoder"):
        get("deeplift").attribute(["A good movie."], explained("bert", "encoder"))


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_non_attributable_scores_are_zero(explained, method):
    model = explained("gpt2", "prompted")
    opts = (
        {"n_steps": 8}
        if method == "integrated_gradients"
        else {"n_samples": 4}
        if method == "gradient_shap"
        else {}
    )
    for rec in get(method, **opts).attribute(list(TEXTS), model):
        assert np.all(rec.scores[~rec.attributable] == 0) and np.any(rec.scores[rec.attributable] != 0)
        assert rec.method == method
