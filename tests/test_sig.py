"""Sequential IG and RPI's diffusion baselines for IG / SIG (RPI-IG, RPI-SIG), checked by hand and by a plain loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from amlx.methods import get
from amlx.methods.diffusion import DiffusionBaselines
from amlx.methods.integrated_gradients import reference_embeddings
from amlx.methods.sig import _sig_reference, sig_scores, units_of
from amlx.models.explained import ExplainedModel
from tests.bow import WEIGHTS, BowClassifier, bow_tokenizer
from tests.tiny import TEXTS

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"n_baselines": 3, "n_steps": 4}  # tiny budgets keep the diffusion tests at a few seconds
SHORT = [TEXTS[0], TEXTS[2]]  # two lengths (padding), few words (SIG costs words × steps rows)


def _batch(model, texts=tuple(TEXTS)):
    enc = model.encode(list(texts))
    with torch.no_grad():
        target = model.probs(enc.input_ids, enc.attention_mask).argmax(-1)
    return enc, target


# (On tiny Llama one single-token word's path is sharp enough to be 6.6 % off at 50 steps, 1e-6 at 200.)
@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("gpt2", "decoder")])
def test_each_words_sig_scores_sum_to_the_output_drop_with_that_word_at_the_baseline(explained, arch, kind):
    model = explained(arch, kind)
    enc, target = _batch(model, TEXTS if kind == "encoder" else SHORT)  # the long text once: 25 words × 50 steps
    recs = get("sig", n_steps=50).attribute(enc, model, target=target)
    units, ref = units_of(enc, "word"), reference_embeddings(enc, model, "mask")
    x = model.embed(enc.input_ids).detach()
    for b, rec in enumerate(recs):
        n = len(rec.scores)
        for w in range(int(units[b].max()) + 1):
            word = units[b, :n] == w
            with torch.no_grad():
                at_baseline = torch.where(word[:, None], ref[b, :n], x[b, :n])[None]
                gap = float(model.logits(inputs_embeds=x[b : b + 1, :n])[0, target[b]]
                            - model.logits(inputs_embeds=at_baseline)[0, target[b]])  # fmt: skip
            assert rec.scores[word.numpy()].sum() == pytest.approx(gap, rel=0.02, abs=1e-5)


@pytest.mark.parametrize("arch,kind,unit", [("bert", "encoder", "word"), ("bert", "encoder", "token"),
                                            ("gpt2", "prompted", "word")])  # fmt: skip
def test_batched_sig_equals_the_per_unit_reference_loop(explained, arch, kind, unit):
    model = explained(arch, kind)
    enc, target = _batch(model, SHORT)
    ref, units = reference_embeddings(enc, model, "mask"), units_of(enc, unit)
    # a small token budget: rows of different examples, units and steps share passes, over many passes
    batched = sig_scores(enc, model, target, ref, units, n_steps=4, max_tokens=7 * enc.input_ids.shape[1])
    loop = _sig_reference(enc, model, target, ref, units, n_steps=4, integration="gausslegendre", output="logit")
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)
    assert (batched[~enc.attributable] == 0).all() and (batched[enc.attributable] != 0).any()


def test_token_units_number_the_attributable_tokens_and_word_units_group_sub_tokens(explained):
    model = explained("bert", "encoder")
    enc = model.encode(["Well-made   and naïve"])
    tokens, words = units_of(enc, "token")[0], units_of(enc, "word")[0]
    n = int(enc.attributable.sum())
    assert tokens[enc.attributable[0]].tolist() == list(range(n)) and (tokens[~enc.attributable[0]] == -1).all()
    assert words.max() < tokens.max()  # "well-made" / "naïve" split into several tokens: fewer words than tokens


@pytest.mark.parametrize("reference", ["[MASK]", "[PAD]"])
def test_sig_on_a_linear_model_equals_weight_times_difference(reference):
    # logit_positive = ½(b + Σ x_i): every path gives ½(x_i − x̄_i), and x̄ differs from x on one word at a time
    bow = ExplainedModel(BowClassifier(), bow_tokenizer(), "encoder", name="bow")
    baseline = reference.strip("[]").lower()
    for unit in ("word", "token"):
        for rec in get("sig", baseline=baseline, unit=unit, n_steps=4).attribute(["good movie , badly slow"], bow,
                                                                                 target=1):  # fmt: skip
            expected = [0.5 * (WEIGHTS[t] - WEIGHTS[reference]) if a else 0.0 for t, a in zip(rec.tokens, rec.attributable)]
            np.testing.assert_allclose(rec.scores, expected, atol=1e-5)


def test_normalize_divides_each_examples_scores_by_their_l2_norm(explained):
    model = explained("bert", "encoder")
    plain = get("sig", n_steps=4).attribute(SHORT, model)
    unit = get("sig", n_steps=4, normalize=True).attribute(SHORT, model)
    for a, b in zip(plain, unit):
        np.testing.assert_allclose(b.scores, a.scores / np.linalg.norm(a.scores), atol=1e-6)
    assert unit[0].variant == "word mask-4 l2"


# ---------------------------------------------------------------------------------- diffusion baselines
@pytest.mark.parametrize("method,opts", [("integrated_gradients", {"n_steps": 4}), ("sig", {"n_steps": 4})])
@pytest.mark.parametrize("selection", ["mean", "metric"])
def test_one_diffusion_baseline_at_the_clean_end_equals_the_mask_baseline(explained, method, opts, selection):
    model = explained("bert", "encoder")
    plain = get(method, **opts).attribute(SHORT, model)
    rpi = get(method, baseline="diffusion", n_baselines=1, timestep=0, selection=selection, **opts)
    for a, b in zip(plain, rpi.attribute(SHORT, model)):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert rpi.variant.endswith(("proxy:mean R1 t0", "oracle-selected:comp R1 t0"))


@pytest.mark.parametrize("method", ["integrated_gradients", "sig"])
def test_diffusion_maps_are_reproducible_under_a_seed(explained, method):
    model = explained("bert", "encoder")
    run = lambda seed: np.concatenate([r.scores for r in get(  # noqa: E731
        method, baseline="diffusion", seed=seed, selection="mean", **SMALL).attribute(SHORT, model)])  # fmt: skip
    assert np.array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))


def test_diffusion_references_are_rpi_draws_around_the_mask_on_the_text_only(explained):
    model = explained("llama", "prompted")
    enc, _ = _batch(model)
    ref = reference_embeddings(enc, model, "mask")
    pool = DiffusionBaselines(n_baselines=4, timestep=100, seed=3)
    refs = pool.references(enc, ref)  # [B, 4, tokens, hidden]
    gen = torch.Generator().manual_seed(3)  # the same draws by hand: t (unused: t is fixed), then ε
    torch.randint(0, 500, (len(enc), 4), generator=gen)
    eps = torch.randn(refs.shape, generator=gen)
    ab = float(pool.alpha_bars[99])
    by_hand = ab**0.5 * ref[:, None] + (1 - ab) ** 0.5 * eps
    text = enc.attributable[:, None].expand(refs.shape[:3])
    torch.testing.assert_close(refs[text], by_hand[text])
    torch.testing.assert_close(refs[~text], ref[:, None].expand_as(refs)[~text])  # specials and prompt stay real


def test_the_mean_proxy_is_the_mean_of_one_map_per_baseline(explained):
    model = explained("bert", "encoder")
    enc, target = _batch(model)
    method = get("integrated_gradients", baseline="diffusion", selection="mean", seed=4, **SMALL)
    assert method.variant == "diffusion-4 proxy:mean R3"
    recs = method.attribute(enc, model, target=target)
    refs = DiffusionBaselines(n_baselines=3, seed=4).references(enc, reference_embeddings(enc, model, "mask"))
    plain = get("integrated_gradients", n_steps=4)
    maps = torch.stack([plain.reference_scores(enc, model, target, refs[:, r]) for r in range(3)], 1)
    for b, rec in enumerate(recs):
        np.testing.assert_allclose(rec.scores, maps[b].mean(0)[: len(rec.scores)].numpy(), atol=1e-6)


def test_diffusion_options_without_the_diffusion_baseline_are_refused():
    with pytest.raises(ValueError, match="only with baseline='diffusion'"):
        get("sig", n_baselines=4)
    with pytest.raises(ValueError, match="unknown options \\['n_baseline'\\]"):
        get("integrated_gradients", baseline="diffusion", n_baseline=4)
    with pytest.raises(ValueError, match="timestep must be in 0..500"):
        get("sig", baseline="diffusion", timestep=501)


def test_the_eval_config_names_valid_sig_options():
    cfg = yaml.safe_load((ROOT / "configs" / "eval" / "sig_minilm_movies.yaml").read_text())
    for item in cfg["methods"]:
        alias, _, name = item.partition("=") if "=" in item else (item, "", item)
        get(name, **cfg.get("method_options", {}).get(alias, {}))
    assert cfg["metrics"] == ["suff", "comp", "log_odds", "aopc_suff", "aopc_comp"] and cfg["n"] == 500
