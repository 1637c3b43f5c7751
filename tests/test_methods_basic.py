"""The method interface and registry, the random baseline and Gradient×Input checked by hand and by autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amlx import methods
from amlx.methods import AttributionMethod, get
from tests.bow import WEIGHTS, bow_explained
from tests.tiny import TEXTS


@pytest.fixture(scope="module")
def bow():
    return bow_explained()


def test_registry_resolves_names_without_branches():
    assert {"random", "gradient_x_input"} <= set(methods.names())
    m = get("gradient_x_input", internal_batch_size=2)
    assert isinstance(m, AttributionMethod) and m.name == "gradient_x_input" and m.internal_batch_size == 2
    with pytest.raises(KeyError, match="registered methods"):
        get("gradient_x_inptu")


def test_gradient_x_input_on_bag_of_words_is_half_the_signed_weight(bow):
    texts = ["good movie , badly slow", "the plot was dull"]
    for target, sign in ((1, 0.5), (0, -0.5), ("positive", 0.5)):
        for rec in get("gradient_x_input", internal_batch_size=1).attribute(texts, bow, target=target):
            expected = [sign * WEIGHTS[t] if a else 0.0 for t, a in zip(rec.tokens, rec.attributable)]
            np.testing.assert_allclose(rec.scores, expected, atol=1e-6)


def test_gradient_x_input_targets_the_predicted_class_by_default(bow):
    recs = get("gradient_x_input").attribute(["good movie", "bad movie"], bow)
    assert [r.target for r in recs] == [1, 0] and [r.target_label for r in recs] == ["positive", "negative"]
    assert recs[1].scores[1] == pytest.approx(0.5 * 2.0)  # "bad" supports "negative"
    assert all(r.seconds > 0 for r in recs)


@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder")])
def test_gradient_x_input_equals_autograd_one_example_at_a_time(explained, arch, kind):
    model = explained(arch, kind)
    recs = get("gradient_x_input", internal_batch_size=3).attribute(list(TEXTS), model, target=[0, 1, 1])
    for rec in recs:
        ids = torch.tensor([rec.input_ids])
        x = model.embed(ids).detach().requires_grad_(True)
        model.logits(inputs_embeds=x, attention_mask=torch.ones_like(ids))[0, rec.target].backward()
        expected = (x.grad * x).sum(-1)[0].detach().numpy() * rec.attributable
        np.testing.assert_allclose(rec.scores, expected, atol=1e-5)


def test_random_is_seeded_uniform_on_attributable_tokens(explained):
    model = explained("bert", "encoder")
    a = get("random", seed=1).attribute(list(TEXTS), model)
    b = get("random", seed=1).attribute(list(TEXTS), model)
    c = get("random", seed=2).attribute(list(TEXTS), model)
    assert all(np.array_equal(x.scores, y.scores) for x, y in zip(a, b))
    assert not np.array_equal(a[1].scores, c[1].scores)
    for r in a:
        s = r.scores[r.attributable]
        assert np.all((s >= 0) & (s < 1)) and np.all(r.scores[~r.attributable] == 0)
        assert r.method == "random" and r.variant == "seed1"


def test_one_target_per_example_must_match_the_batch(bow):
    with pytest.raises(ValueError, match="2 targets for 1 examples"):
        get("random").attribute(["good movie"], bow, target=[0, 1])


def test_length_sorted_batching_returns_records_in_input_order_with_their_own_targets(explained):
    """Texts of very different lengths, internal batches of 2: passes are built longest first, records are not."""
    model = explained("bert", "encoder")
    texts = [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[1] + " " + TEXTS[1], "ok"]
    targets = [0, 1, 0, 1, 1]
    method = get("gradient_x_input", internal_batch_size=2)
    assert method.sort_by_length
    recs = method.attribute(texts, model, target=targets)
    alone = [get("gradient_x_input").attribute([t], model, target=[y])[0] for t, y in zip(texts, targets)]
    assert [r.text for r in recs] == texts and [r.target for r in recs] == targets
    for rec, ref in zip(recs, alone):
        np.testing.assert_allclose(rec.scores, ref.scores, atol=1e-5)
        np.testing.assert_allclose(rec.probs, ref.probs, atol=1e-6)
