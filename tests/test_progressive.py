"""Progressive Inference (seed 000): the mask distribution P', SP-PI and MP-PI, checked against values known by hand."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import PretrainedConfig

from amlx import methods
from amlx.methods import pi_distribution as pid
from amlx.methods.progressive import sentence_spans, unit_layout
from amlx.models.explained import ExplainedModel
from tests.tiny import tiny_tokenizer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """P' caches go to a temporary folder, never the user's ~/.cache/amlx."""
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path))


TEXTS = [
    "A good movie, a bad plot.",
    "I didn't like it: the plot was dull, 2 hours too long and the café scene bad!!",
    "Well-made   and naïve. Bad",  # whitespace-only tokens between words
]


# ----------------------------------------------------------------------------------------- P' and P^D
def random_mask_distribution(n: int, rng: np.random.Generator) -> np.ndarray:
    i, j = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
    p = np.where((i >= 1) & (i <= j), rng.random((n + 1, n + 1)), 0.0)
    return p / p.sum()


def enumerate_pooled(p_mask: np.ndarray) -> np.ndarray:
    """P^D by brute force: every input mask (i, j) and every choice of its i−1 other units, extended past j."""
    n = p_mask.shape[0] - 1
    out = np.zeros((n + 1, n + 1))
    for i, j in itertools.product(range(1, n + 1), repeat=2):
        if p_mask[i, j] == 0:
            continue
        choices = list(itertools.combinations(range(1, j), i - 1))
        for others in choices:
            active = sorted(set(others) | set(range(j, n + 1)))  # the extension trick: every unit from j on
            for size, last in enumerate(active, start=1):  # one prefix coalition per active unit, weight 1/i'
                out[size, last] += p_mask[i, j] / len(choices) / len(active)
    return out


@pytest.mark.parametrize("n", range(2, 9))
def test_transfer_matrix_times_p_mask_equals_brute_force_enumeration(n):
    p = random_mask_distribution(n, np.random.default_rng(n))
    by_matrix = np.einsum("klij,ij->kl", pid.transfer_matrix(n), p)
    np.testing.assert_allclose(by_matrix, enumerate_pooled(p), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 7, 12, 20])
def test_pooled_distribution_recurrence_equals_transfer_matrix(n):
    p = random_mask_distribution(n, np.random.default_rng(100 + n))
    expected = np.einsum("klij,ij->kl", pid.transfer_matrix(n), p)
    np.testing.assert_allclose(pid.pooled_distribution(p), expected, rtol=1e-10, atol=1e-15)


def test_shapley_cells_sum_to_the_kernel_over_sizes():
    n = 9
    np.testing.assert_allclose(pid.size_marginal(pid.shapley_cells(n)), pid.shapley_sizes(n), atol=1e-15)
    k = np.arange(1, n)
    np.testing.assert_allclose(pid.shapley_sizes(n)[1:n], 1 / (k * (n - k)) / (1 / (k * (n - k))).sum())


@pytest.mark.parametrize("n", [5, 10, 20, 30])
def test_pooled_size_distribution_is_non_increasing_so_the_kernel_is_matched_only_up_to_a_bound(n):
    # one pass with i' active units yields exactly one coalition of each size 1..i', so for ANY P' the pooled
    # size distribution is a mixture of uniforms on {1..i'}: non-increasing. The U-shaped Shapley kernel is then
    # out of reach; the optimised P' must still beat the "Shap" variant (Table 4), and the cell weights P*/P^D
    # must turn P^D into P* on every cell P' reaches.
    opt = pid.mask_distribution(n, disk_cache=False)
    shap = pid.mask_distribution(n, max_n=0)
    assert opt.variant == "opt" and shap.variant == "shap"
    for dist in (opt, shap):
        sizes = pid.size_marginal(dist.pooled)
        assert np.all(np.diff(sizes[1:]) <= 1e-12)
    kernel = pid.shapley_sizes(n)
    tv_opt = pid.total_variation(pid.size_marginal(opt.pooled), kernel)
    tv_shap = pid.total_variation(pid.size_marginal(shap.pooled), kernel)
    assert tv_opt < tv_shap
    assert np.abs(opt.pooled * opt.weights() - np.where(opt.pooled > 0, opt.target, 0)).max() < 1e-15
    # P' reaches every cell with P* > 0 but {1..n−1} (its cell (n−1, n−1) is a single coalition)
    missed = (opt.target > 0) & (opt.pooled == 0)
    assert opt.target[missed].sum() <= opt.target[n - 1, n - 1] + 1e-15


def test_optimized_mask_distribution_is_a_distribution_cached_on_disk(tmp_path):
    p = pid.optimized_mask_distribution(6)
    assert (p >= 0).all() and p.sum() == pytest.approx(1.0, abs=1e-12)
    saved = tmp_path / "pi" / f"p_mask_v{pid.CACHE_VERSION}_n6.npy"
    np.testing.assert_array_equal(np.load(saved), p)
    np.testing.assert_array_equal(pid.optimized_mask_distribution(6), p)


def test_sampled_masks_follow_p_mask_and_extend_past_the_last_drawn_unit():
    n, count = 6, 20000
    dist = pid.mask_distribution(n, disk_cache=False)
    masks = dist.sample(count, np.random.default_rng(0))
    assert masks[:, -1].all()  # the extension trick: the last unit is always active
    # i' = active units; the pooled distribution of the sampled prefixes matches P^D = A·P'
    pooled = np.zeros((n + 1, n + 1))
    for z in masks:
        active = np.flatnonzero(z)
        for size, u in enumerate(active, start=1):
            pooled[size, u + 1] += 1 / len(active) / count
    assert pid.total_variation(pooled, dist.pooled) < 0.02


# --------------------------------------------------------------------------------------- additive model
class CumulativeDecoder(nn.Module):
    """A "decoder" whose class-1 logit at position t is ½ Σ_{s ≤ t} w(token s) and class-0 logit its opposite.

    Token weights are its 1-d embeddings (random, fixed seed; <unk>, the mask token, weighs 0), so the logit at
    the end of a unit is exactly additive in the active units before it: its Shapley value is ½ Σ w over the
    unit's tokens, and the BOS weight is the bias.
    """

    def __init__(self, vocab_size: int, unk_id: int, pad_id: int) -> None:
        super().__init__()
        self.config = PretrainedConfig(num_labels=2, max_position_embeddings=128, pad_token_id=pad_id)
        self.embeddings = nn.Embedding(vocab_size, 1)
        with torch.no_grad():
            self.embeddings.weight[:, 0] = torch.randn(vocab_size, generator=torch.Generator().manual_seed(0))
            self.embeddings.weight[unk_id] = 0.0
        self.score = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.score.weight[:, 0] = torch.tensor([-0.5, 0.5])

    @property
    def base_model(self) -> CumulativeDecoder:
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # [batch, tokens, 1]
        return SimpleNamespace(last_hidden_state=(x * attention_mask[..., None].to(x.dtype)).cumsum(1))


@pytest.fixture(scope="module")
def additive():
    tok = tiny_tokenizer("llama")  # <s> first, <unk> as the decoder mask token
    return ExplainedModel(CumulativeDecoder(len(tok), tok.unk_token_id, tok.unk_token_id), tok, "decoder")


def true_unit_values(model, enc, b: int, unit: str) -> np.ndarray:
    """½ Σ w over each unit's tokens: the exact Shapley values of the class-1 logit."""
    lay = unit_layout(enc, b, unit)
    w = model.embed(enc.input_ids[b])[:, 0].double().numpy()
    return np.array([0.5 * w[lay.token_units == u].sum() for u in range(lay.n)])


def unit_scores(method, model, enc, target: int) -> list[np.ndarray]:
    layouts = [unit_layout(enc, b, method.unit) for b in range(len(enc))]
    return method.unit_scores(enc, model, torch.full((len(enc),), target), layouts)


@pytest.mark.parametrize(("unit", "max_n"), [("word", 30), ("token", 30), ("word", 2)])
def test_mp_pi_recovers_the_shapley_values_of_an_additive_model(additive, unit, max_n):
    # max_n=2 forces the "Shap" fallback variant on these 7..23-unit texts
    enc = additive.encode(TEXTS)
    method = methods.get("mp_pi", unit=unit, output="logit", budget_per_unit=4, max_n=max_n, disk_cache=False)
    for b, phi in enumerate(unit_scores(method, additive, enc, target=1)):
        np.testing.assert_allclose(phi, true_unit_values(additive, enc, b, unit), atol=1e-3)


def test_sp_pi_is_the_difference_of_prefix_logits_computed_by_hand(additive):
    enc = additive.encode(TEXTS)
    method = methods.get("sp_pi", output="logit")
    for b, phi in enumerate(unit_scores(method, additive, enc, target=1)):
        lay = unit_layout(enc, b, "word")
        w = additive.embed(enc.input_ids[b])[:, 0].double().numpy() * enc.attention_mask[b].numpy()
        cum = 0.5 * np.cumsum(w)
        assert lay.before == 0  # <s>: f(∅) is read there
        np.testing.assert_allclose(phi, np.diff(cum[lay.read], prepend=cum[0]), atol=1e-6)
        # an additive model's prefix differences are its Shapley values
        np.testing.assert_allclose(phi, true_unit_values(additive, enc, b, "word"), atol=1e-6)


def test_sp_pi_equals_probabilities_of_truncated_prefixes_on_a_tiny_llama(explained):
    model = explained("llama", "decoder")
    enc = model.encode(TEXTS)
    phi = unit_scores(methods.get("sp_pi"), model, enc, target=1)
    for b in range(len(enc)):
        lay = unit_layout(enc, b, "word")
        ids = enc.input_ids[b : b + 1, : int(enc.attention_mask[b].sum())]
        prefix = [model.probs(input_ids=ids[:, : p + 1])[0, 1].item() for p in [lay.before, *lay.read]]
        np.testing.assert_allclose(phi[b], np.diff(prefix), atol=1e-5)


def test_sp_pi_without_a_bos_reads_the_empty_coalition_from_a_fully_masked_pass(explained):
    model = explained("gpt2", "decoder")  # byte-level BPE adds no BOS: the first word is at position 0
    enc = model.encode(TEXTS[:1])
    lay = unit_layout(enc, 0, "word")
    assert lay.before == -1
    phi = unit_scores(methods.get("sp_pi"), model, enc, target=0)[0]
    masked = torch.where(enc.attributable[0, :, None], model.mask_embedding(), model.embed(enc.input_ids[0]))
    f_empty = model.probs(inputs_embeds=masked[None])[0, 0].item()
    assert phi.sum() == pytest.approx(model.probs(input_ids=enc.input_ids)[0, 0].item() - f_empty, abs=1e-5)
    with pytest.raises(ValueError, match="empty='masked'"):
        unit_scores(methods.get("sp_pi", empty="prefix"), model, enc, target=0)


def test_sentence_units_share_one_score_per_sentence(additive):
    text = "A good movie. The plot was dull!! Bad"
    assert [text[s:e] for s, e in sentence_spans(text)] == ["A good movie.", "The plot was dull!!", "Bad"]
    rec = methods.get("sp_pi", unit="sentence", output="logit").attribute(text, additive, target=1)[0]
    enc = additive.encode(text)
    lay = unit_layout(enc, 0, "sentence")
    assert lay.n == 3
    for u in range(3):
        assert len(set(rec.scores[lay.token_units == u].round(6))) == 1
    np.testing.assert_allclose(
        [rec.scores[lay.token_units == u][0] for u in range(3)],
        true_unit_values(additive, enc, 0, "sentence"),
        atol=1e-6,
    )


# ------------------------------------------------------------------------------------ real tiny decoders
@pytest.mark.parametrize(("arch", "kind"), [("llama", "decoder"), ("gpt2", "decoder"), ("llama", "prompted")])
def test_mp_pi_batched_equals_unbatched_with_the_same_seed(explained, arch, kind):
    model = explained(arch, kind)
    texts = TEXTS[:1] if kind == "prompted" else TEXTS[:2]  # a prompt is long: keep this test fast
    runs = [methods.get("mp_pi", seed=3, internal_batch_size=s).attribute(texts, model) for s in (1, 16)]
    for one, many in zip(*runs):
        np.testing.assert_allclose(one.scores, many.scores, atol=1e-5)
        assert np.abs(one.scores).max() > 0


def test_mp_pi_counts_its_masked_passes(explained, monkeypatch):
    model = explained("llama", "decoder")
    method = methods.get("mp_pi", internal_batch_size=16)
    rows = []
    run_rows = type(method).run_rows

    def counting(self, enc, model, target, layouts, r):
        rows.append(len(r))
        return run_rows(self, enc, model, target, layouts, r)

    monkeypatch.setattr(type(method), "run_rows", counting)
    method.attribute(TEXTS[0], model)
    n = unit_layout(model.encode(TEXTS[0]), 0, "word").n
    assert rows == [2 * n + 2]  # 2n masked passes, the plain pass and the all-masked pass for f(∅)


@pytest.mark.parametrize("name", ["sp_pi", "mp_pi"])
def test_explaining_an_encoder_is_a_clear_error(explained, name):
    with pytest.raises(ValueError, match="decoder-only"):
        methods.get(name).attribute("A good movie.", explained("bert", "encoder"))
