"""MaRC (seed 004): the Gaussian-kernel mask by hand, Eq. 8 by hand on the bag-of-words model, word tying,
batch independence, per-instance early stopping, segment blending and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from amlx.attributors.marc import MaRCMask, word_positions
from amlx.methods import get
from amlx.methods.marc import blend_weights, instance_seed, segment_bounds
from amlx.models.explained import EmptyTextError
from tests.bow import BIAS, VOCAB, WEIGHTS, bow_explained
from tests.tiny import TEXTS, tiny_explained

FAST = {"steps": 12, "patience": None}  # a few noisy Adam steps: enough to move every mask


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


@pytest.fixture(scope="module")
def bow():
    return bow_explained()


@pytest.mark.parametrize("kernel", ["sigma", "sigma_sq"])
def test_word_mask_is_sigmoid_of_summed_gaussians_by_hand(kernel):
    # two instances: 3 words, and 2 words (its third, padded word must not contribute)
    mask = MaRCMask(torch.full((2, 1), -1), torch.tensor([3, 2]), kernel=kernel)
    with torch.no_grad():
        mask.w.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.7, -0.3, 9.0]]))
        mask.sigma.copy_(torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.8, 9.0]]))
    den = (lambda s: s) if kernel == "sigma" else (lambda s: s * s)
    k = lambda d, s: math.exp(-(d**2) / den(s))  # noqa: E731
    first = [
        sigmoid(1.0 * k(0, 1.0) - 2.0 * k(1, 2.0) + 0.5 * k(2, 0.5)),
        sigmoid(1.0 * k(1, 1.0) - 2.0 * k(0, 2.0) + 0.5 * k(1, 0.5)),
        sigmoid(1.0 * k(2, 1.0) - 2.0 * k(1, 2.0) + 0.5 * k(0, 0.5)),
    ]
    second = [sigmoid(0.7 * k(0, 3.0) - 0.3 * k(1, 0.8)), sigmoid(0.7 * k(1, 3.0) - 0.3 * k(0, 0.8))]
    lam = mask.word_mask()
    np.testing.assert_allclose(lam[0].detach().numpy(), first, rtol=1e-6)
    np.testing.assert_allclose(lam[1, :2].detach().numpy(), second, rtol=1e-6)


def test_sub_word_pieces_share_one_lambda_and_specials_padding_stay_1(explained):
    model = explained("bert", "encoder")
    enc = model.encode(list(TEXTS))
    positions, n_words = word_positions(enc.word_ids, enc.attributable)
    assert n_words.tolist() == [len({int(w) for w in row[row >= 0]}) for row in enc.word_ids]
    mask = MaRCMask(positions, n_words)
    with torch.no_grad():
        mask.w.normal_(generator=torch.Generator().manual_seed(0))
    lam, words = mask.token_mask(), mask.word_mask()
    for b in range(len(enc)):
        for t in range(enc.input_ids.shape[1]):
            if enc.attributable[b, t]:
                assert lam[b, t] == words[b, positions[b, t]]
            else:  # [CLS], [SEP] and padding are never masked
                assert lam[b, t] == 1
    # the method's scores: one value per word, on every piece of it
    rec = get("marc", **FAST).attribute(TEXTS[1], model)[0]
    multi = [w for w in set(rec.word_ids[rec.attributable].tolist()) if (rec.word_ids == w).sum() > 1]
    assert multi, "the test text needs a word split into several pieces"
    for w in multi:
        assert len(set(rec.scores[rec.word_ids == w].tolist())) == 1
    assert (rec.scores[~rec.attributable] == 0).all() and rec.scores[rec.attributable].min() > 0


@pytest.mark.parametrize(
    "scoring,complement",
    [("log_likelihood", "score"), ("log_likelihood", "one_minus"), ("log_sigmoid", "score")],
)
def test_first_step_loss_is_eq8_by_hand_on_the_bag_of_words_model(bow, scoring, complement):
    # "good movie": 2 words with w = 1.2, σ = 2 ⇒ λ = sigmoid(1.2 + 1.2·exp(−1/2)) on both; b = [PAD] (weight 0.25)
    method = get("marc", steps=1, noise_std=0.0, flip_prob=0.0, scoring=scoring, complement=complement)
    method.attribute("good movie", bow, target="positive")
    lam = sigmoid(1.2 + 1.2 * math.exp(-0.5))
    pad, good, movie = WEIGHTS["[PAD]"], WEIGHTS["good"], WEIGHTS["movie"]
    s_keep = BIAS + lam * good + (1 - lam) * pad + lam * movie + (1 - lam) * pad  # logit difference of x̃
    s_comp = BIAS + (1 - lam) * good + lam * pad + (1 - lam) * movie + lam * pad  # of x̃^c
    if scoring == "log_likelihood":  # p(positive) = sigmoid(s)
        keep, comp = math.log(sigmoid(s_keep)), math.log(sigmoid(s_comp))
        comp_rest = math.log(1 - sigmoid(s_comp))
    else:  # the positive logit is s/2
        keep, comp, comp_rest = math.log(sigmoid(s_keep / 2)), math.log(sigmoid(s_comp / 2)), math.log(
            sigmoid(-s_comp / 2))  # fmt: skip
    comp_term = comp if complement == "score" else -comp_rest
    hand = -keep + comp_term + 1.0 * lam**2 + 1.2 * -math.log(2.0)
    assert method.last_fit.losses[0, 0].item() == pytest.approx(hand, rel=1e-5)


def test_x_tilde_and_its_complement_get_different_noise_draws_from_the_instance_generator():
    # w = 0 ⇒ λ = ½ on both words, so x̃ and x̃^c share the point ½(x + b) and differ only by their noise
    model, sent = bow_explained(), []
    forward = model.logits

    def recording(input_ids=None, attention_mask=None, inputs_embeds=None, token_type_ids=None):
        if inputs_embeds is not None:  # the optimization's forward passes (F(x) itself comes from input_ids)
            sent.append(inputs_embeds.detach().clone())
        return forward(input_ids, attention_mask, inputs_embeds, token_type_ids)

    model.logits = recording
    text, seed, std = "good movie", 5, 0.1
    get("marc", steps=1, w_init=0.0, flip_prob=0.0, noise_std=std, seed=seed).attribute(text, model)
    (embeds,) = sent  # [x̃; x̃^c]: [2, tokens, 1]
    enc = model.encode(text)
    x, b = model.embed(enc.input_ids)[0], model.embed(torch.tensor([[VOCAB["[PAD]"]]]))[0, 0]
    middle = torch.where(enc.attributable[0, :, None], (x + b) / 2, x)  # specials keep λ = 1: x̃ = x̃^c = x
    # the documented draw order of the instance's generator: flips (2 words), flip values, then the noise
    g = torch.Generator().manual_seed(instance_seed(seed, text, 0))
    torch.rand(2, generator=g), torch.rand(2, generator=g)
    noise = torch.randn(2, len(x), 1, generator=g) * std  # [x̃ / x̃^c, tokens, hidden]
    torch.testing.assert_close(embeds[0] - middle, noise[0])
    torch.testing.assert_close(embeds[1] - middle, noise[1])
    assert (noise[0] - noise[1]).abs().min() > 1e-4


def test_planted_class_word_gets_the_highest_lambda_on_the_bag_of_words_model(bow):
    rec = get("marc", steps=150).attribute("the plot was slow and the movie was good", bow)[0]
    assert rec.target_label == "positive"  # p = sigmoid(0.1 + 1.33)
    assert rec.tokens[int(np.argmax(rec.scores))] == "good"


@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder")])
def test_a_batch_gives_the_masks_of_separate_runs_with_the_same_seed(explained, arch, kind):
    model = explained(arch, kind)
    options = {"steps": 40, "patience": 4, "min_delta": 0.02, "seed": 3}  # noise, flips, early stops on
    batched = get("marc", internal_batch_size=3, **options)
    recs = batched.attribute(list(TEXTS), model)
    steps = batched.last_fit.steps.tolist()
    alone = []
    for text in TEXTS:
        method = get("marc", **options)
        alone.append(method.attribute(text, model)[0])
        assert method.last_fit.steps.tolist() == [steps[len(alone) - 1]]
    for a, b in zip(recs, alone):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    # a different seed draws different noise, and so a different mask
    other = get("marc", **{**options, "seed": 4}).attribute(TEXTS[0], model)[0]
    assert np.abs(other.scores - alone[0].scores).max() > 1e-4


def test_early_stop_freezes_each_instance_at_its_own_plateau(explained):
    model = explained("bert", "encoder")
    method = get("marc", steps=60, patience=3, min_delta=0.05, internal_batch_size=3)
    recs = method.attribute(list(TEXTS), model)
    fit = method.last_fit
    steps = fit.steps.tolist()
    assert len(set(steps)) > 1 and max(steps) < 60, steps
    for b, n in enumerate(steps):
        assert torch.isfinite(fit.losses[b, :n]).all() and torch.isnan(fit.losses[b, n:]).all()
        trace = fit.losses[b, :n]
        best_before = trace[: n - 3].min()
        assert (trace[n - 3 :] >= best_before - 0.05).all()  # the last `patience` steps did not improve
    # the frozen mask is the mask after its last step: a run of exactly that many steps gives it back
    b = int(np.argmin(steps))
    again = get("marc", steps=steps[b], patience=None).attribute(TEXTS[b], model)[0]
    np.testing.assert_allclose(recs[b].scores, again.scores, atol=1e-5)


def test_segments_overlap_and_blend_linearly():
    assert segment_bounds(10, None, 2) == [(0, 10)]
    assert segment_bounds(10, 10, 2) == [(0, 10)]
    assert segment_bounds(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert segment_bounds(9, 5, 1) == [(0, 5), (4, 9)]
    w = blend_weights([(0, 5), (2, 7)])  # an overlap of 3 items: 2, 3, 4
    np.testing.assert_allclose(w[0].numpy(), [1, 1, 3 / 4, 2 / 4, 1 / 4])
    np.testing.assert_allclose(w[1].numpy(), [1 / 4, 2 / 4, 3 / 4, 1, 1])
    bounds = segment_bounds(23, 7, 3)
    total = torch.zeros(23, dtype=torch.float64)
    for (s, e), weight in zip(bounds, blend_weights(bounds)):
        total[s:e] += weight
    np.testing.assert_allclose(total.numpy(), 1.0)


def test_long_text_is_explained_by_blended_segment_masks(explained):
    # with 0 steps every segment's mask is its initial λ, which depends on the segment's own word count
    model = explained("bert", "encoder")
    enc = model.encode(TEXTS[1])
    rec = get("marc", steps=0, segment_tokens=12, segment_overlap=4).attribute(enc, model)[0]
    text_tokens = int(enc.attributable.sum())
    bounds = segment_bounds(text_tokens, 12, 4)
    assert len(bounds) > 2
    expected = torch.zeros(text_tokens, dtype=torch.float64)
    for (s, e), weight in zip(bounds, blend_weights(bounds)):
        ids = enc.word_ids[:, 1 + s : 1 + e]  # after [CLS]
        positions, n = word_positions(ids, torch.ones_like(ids, dtype=torch.bool))
        expected[s:e] += weight * MaRCMask(positions, n).token_mask()[0].double().detach()
    np.testing.assert_allclose(rec.scores[1 : 1 + text_tokens], expected.numpy(), rtol=1e-6)
    assert rec.variant == "steps=0,segments=12/4"


def test_bad_inputs_raise_with_a_way_out():
    model = tiny_explained("bert", "encoder")
    with pytest.raises(EmptyTextError):
        get("marc", **FAST).attribute("   ", model)
    with pytest.raises(ValueError, match="kernel"):
        get("marc", kernel="sigma_cubed")
    with pytest.raises(ValueError, match="segment_overlap"):
        get("marc", segment_tokens=10, segment_overlap=10)
    enc = model.encode(TEXTS[0])
    model.tokenizer.pad_token = None  # a tokenizer without [PAD]: b must come from elsewhere
    assert model.tokenizer.pad_token_id is None
    with pytest.raises(ValueError, match="baseline='mask'"):
        get("marc", **FAST).attribute(enc, model)
    rec = get("marc", baseline="mask", **FAST).attribute(enc, model)[0]
    assert rec.variant.endswith("baseline=mask") and np.isfinite(rec.scores).all()
