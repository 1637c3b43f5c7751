"""ALTI and GlobEnc (methods.md "Additions" §3–4) equal hand computations from a tiny BERT's module weights.

The hand path reads the layer inputs from ``output_hidden_states`` and the attention from ``output_attentions`` of one
unpadded example and loops over heads and token pairs; the methods run hooks on a padded batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amlx.methods import get
from amlx.methods.alti import contributions
from amlx.methods.decomposition import Block, attention_block_parts, trace_blocks
from amlx.methods.globenc import encoder_parts
from tests.tiny import tiny_explained

TEXTS = ["A good movie.", "Well-made   and naïve", "bad"]  # different lengths: the batch is padded


def hand_layers(model, ids: list[int]) -> list[dict[str, torch.Tensor]]:
    """Per layer of one unpadded example: z [i, j, d], T [i, j, d], c [i, j] (ALTI) and N [i, j] (GlobEnc)."""
    ids_t = torch.tensor([ids])
    model.attentions(ids_t)  # switches the model to eager attention
    with torch.no_grad():
        out = model.hf.base_model(ids_t, output_hidden_states=True, output_attentions=True)
    layers = []
    for layer, x, alpha, x_next in zip(
        model.hf.base_model.encoder.layer, out.hidden_states, out.attentions, out.hidden_states[1:]
    ):
        x, alpha, x_next = x[0], alpha[0], x_next[0]
        sa, so, ln2 = layer.attention.self, layer.attention.output, layer.output.LayerNorm
        n, size = len(ids), sa.attention_head_size
        v = x @ sa.value.weight.T + sa.value.bias  # v_j with b_V: [j, d]
        z = torch.zeros(n, n, x.shape[1])
        for i in range(n):
            for j in range(n):
                for h in range(sa.num_attention_heads):
                    cols = slice(h * size, (h + 1) * size)
                    z[i, j] += alpha[h, i, j] * (v[j, cols] @ so.dense.weight[:, cols].T)
                if i == j:
                    z[i, j] += x[i]
        pre1 = z.sum(1) + so.dense.bias
        sigma1 = (pre1.var(-1, unbiased=False) + so.LayerNorm.eps).sqrt()  # [i]
        t = so.LayerNorm.weight * (z - z.mean(-1, keepdim=True)) / sigma1[:, None, None]
        y = so.LayerNorm(pre1)
        d = (y[:, None] - t).abs().sum(-1)
        c = (y.abs().sum(-1)[:, None] - d).clamp(min=0)
        c = c / c.sum(-1, keepdim=True)
        # preLN2 = FFN(ỹ) + ỹ = LN2⁻¹ of the layer output, recomputed from the FFN weights
        pre2 = layer.output.dense(layer.intermediate(y)) + y
        torch.testing.assert_close(ln2(pre2), x_next, atol=1e-5, rtol=1e-5)
        sigma2 = (pre2.var(-1, unbiased=False) + ln2.eps).sqrt()
        w = ln2.weight * (t - t.mean(-1, keepdim=True)) / sigma2[:, None, None]
        layers.append({"z": z, "T": t, "y": y, "c": c, "N": w.norm(dim=-1)})
    return layers


@pytest.fixture(scope="module")
def bert(explained):
    return explained("bert", "encoder")


@pytest.fixture(scope="module")
def batch(bert):
    """The padded batch, its hand computation per example, and both methods' per-layer matrices."""
    enc = bert.encode(TEXTS)
    hand = [hand_layers(bert, enc.input_ids[b, : int(n)].tolist()) for b, n in enumerate(enc.attention_mask.sum(1))]
    return enc, hand, get("alti").layer_matrices(enc, bert), get("globenc").layer_matrices(enc, bert)


@pytest.mark.parametrize("layer", [0, 1])
def test_alti_contributions_equal_the_hand_computation_of_each_layer(batch, layer):
    enc, hand, alti, _ = batch
    for b, n in enumerate(enc.attention_mask.sum(1).tolist()):
        torch.testing.assert_close(alti[layer][b, :n, :n], hand[b][layer]["c"], atol=1e-5, rtol=1e-4)
        assert torch.all(alti[layer][b, n:] == 0) and torch.all(alti[layer][b, :, n:] == 0)  # padding


def test_alti_rows_are_nonnegative_and_sum_to_one(batch):
    enc, _, alti, _ = batch
    real = enc.attention_mask.bool()
    for c in alti:
        assert torch.all(c >= 0)
        torch.testing.assert_close(c.sum(-1)[real], torch.ones(int(real.sum())))


def test_alti_scores_are_the_cls_row_of_the_hand_rollout_c2_c1(bert, batch):
    _, hand, _, _ = batch
    for rec, h in zip(get("alti").attribute(TEXTS, bert), hand):
        rolled = h[1]["c"] @ h[0]["c"]  # A² = C² A¹, no identity
        np.testing.assert_allclose(rec.scores, rolled[0].numpy() * rec.attributable, atol=1e-5)
        assert rolled[0].sum() == pytest.approx(1.0, abs=1e-5)


def test_alti_parts_add_up_to_the_attention_blocks_layer_norm_output(bert, batch):
    enc = bert.encode(TEXTS[:1])
    _, hand, _, _ = batch
    for layer, block in enumerate(trace_blocks(bert, enc, "alti")):
        parts, rest = attention_block_parts(block)
        torch.testing.assert_close(parts.sum(2)[0] + rest[0], hand[0][layer]["y"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(parts[0], hand[0][layer]["T"], atol=1e-5, rtol=1e-4)


def test_alti_of_identity_attention_is_the_identity(bert):
    enc = bert.encode(TEXTS[:1])
    block = trace_blocks(bert, enc, "alti")[0]
    n, heads = enc.input_ids.shape[1], block.attention.shape[1]
    eye = torch.eye(n).expand(1, heads, n, n)
    c = contributions(Block(block.layer, block.x, eye, block.pre_ln2), enc.attention_mask.float())
    torch.testing.assert_close(c[0], torch.eye(n))


@pytest.mark.parametrize("layer", [0, 1])
def test_globenc_norms_equal_the_hand_computation_of_each_layer(batch, layer):
    enc, hand, _, globenc = batch
    for b, n in enumerate(enc.attention_mask.sum(1).tolist()):
        torch.testing.assert_close(globenc[layer][b, :n, :n], hand[b][layer]["N"], atol=1e-5, rtol=1e-4)
        assert torch.all(globenc[layer] >= 0) and torch.all(globenc[layer][b, n:] == 0)


def test_globenc_scores_are_the_cls_row_of_the_hand_product_n2_n1(bert, batch):
    _, hand, _, _ = batch
    for rec, h in zip(get("globenc").attribute(TEXTS, bert), hand):
        rolled = h[1]["N"] @ h[0]["N"]  # G² = N² G¹ on raw norms
        np.testing.assert_allclose(rec.scores, rolled[0].numpy() * rec.attributable, rtol=1e-4, atol=1e-5)


def test_globenc_parts_add_up_to_the_second_layer_norm_without_ffn_and_biases():
    model = tiny_explained("bert", "encoder")
    with torch.no_grad():
        for layer in model.hf.base_model.encoder.layer:
            for p in (layer.output.dense.weight, layer.output.dense.bias, layer.attention.output.dense.bias,
                      layer.attention.output.LayerNorm.bias):  # fmt: skip
                p.zero_()
    enc = model.encode(TEXTS[:1])
    with torch.no_grad():
        out = model.hf.base_model(enc.input_ids, output_hidden_states=True)
    for layer, block in enumerate(trace_blocks(model, enc, "globenc")):
        beta2 = block.layer.output.LayerNorm.bias
        torch.testing.assert_close(encoder_parts(block).sum(2), out.hidden_states[layer + 1] - beta2, atol=1e-5,
                                   rtol=1e-5)  # fmt: skip


def test_globenc_without_output_projection_attributes_only_to_cls():
    model = tiny_explained("bert", "encoder")
    with torch.no_grad():
        for layer in model.hf.base_model.encoder.layer:
            layer.attention.output.dense.weight.zero_()  # W_O = 0: z_ij = δ_ij x_i, N diagonal
    for m in get("globenc").layer_matrices(model.encode(TEXTS[:2]), model):
        assert torch.all(m == torch.diag_embed(torch.diagonal(m, dim1=1, dim2=2)))
    (rec,) = get("globenc").attribute(TEXTS[:1], model)
    assert np.all(rec.scores == 0)  # G^L[CLS] ∝ one-hot(CLS), and [CLS] is not attributable


def test_roberta_is_supported(explained):
    model = explained("roberta", "encoder")
    enc = model.encode(TEXTS)
    real = enc.attention_mask.bool()
    for c in get("alti").layer_matrices(enc, model):
        torch.testing.assert_close(c.sum(-1)[real], torch.ones(int(real.sum())))


@pytest.mark.parametrize("name", ["alti", "globenc"])
@pytest.mark.parametrize("arch,kind", [("llama", "decoder"), ("gpt2", "prompted")])
def test_unsupported_architectures_get_an_error_naming_the_supported_ones(explained, name, arch, kind):
    with pytest.raises(ValueError, match=r"BERT-family encoders \(model types: bert, roberta"):
        get(name).attribute(TEXTS[:1], explained(arch, kind))
