"""A-Last, average attention and attention rollout equal hand computations from ``model.attentions()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amlx.methods import get
from amlx.methods.attention import rollout
from tests.tiny import TEXTS

CASES = [("bert", "encoder"), ("llama", "decoder"), ("gpt2", "prompted")]


def unpadded_attentions(model, rec) -> torch.Tensor:
    """Head-averaged attention maps of one example without padding: [layers, tokens, tokens]."""
    ids = torch.tensor([rec.input_ids])
    return torch.stack([a[0].mean(0) for a in model.attentions(ids, torch.ones_like(ids))])


def prediction_row(model, rec) -> int:
    return 0 if model.kind == "encoder" else len(rec.tokens) - 1


@pytest.mark.parametrize("arch,kind", CASES)
def test_attention_last_and_mean_read_the_prediction_row(explained, arch, kind):
    model = explained(arch, kind)
    last = get("attention_last", internal_batch_size=3).attribute(list(TEXTS), model)
    mean = get("attention_mean", internal_batch_size=3).attribute(list(TEXTS), model)
    for a, m in zip(last, mean):
        att = unpadded_attentions(model, a)
        row = prediction_row(model, a)
        np.testing.assert_allclose(a.scores, att[-1, row].numpy() * a.attributable, atol=1e-6)
        np.testing.assert_allclose(m.scores, att.mean(0)[row].numpy() * m.attributable, atol=1e-6)
        assert np.all(a.scores[~a.attributable] == 0) and np.all(m.scores[~m.attributable] == 0)


def test_rollout_on_a_two_layer_hand_case():
    a1 = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    a2 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # 0.5·A + 0.5·I (rows already sum to 1): R1 = [[.75, .25], [0, 1]], R2 = [[1, 0], [.25, .75]]
    # rollout = R2 @ R1 = [[.75, .25], [.1875, .8125]]
    expected = torch.tensor([[0.75, 0.25], [0.1875, 0.8125]])
    torch.testing.assert_close(rollout([a1[None], a2[None]])[0], expected)


def test_rollout_renormalizes_rows():
    a = torch.tensor([[[0.2, 0.2], [0.1, 0.3]]])  # rows not summing to 1
    out = rollout([a])
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 2))
    torch.testing.assert_close(out[0, 0], torch.tensor([0.6, 0.1]) / 0.7)  # 0.5·[.2, .2] + 0.5·[1, 0]


@pytest.mark.parametrize("arch,kind", CASES)
def test_attention_rollout_equals_hand_rollout_of_model_attentions(explained, arch, kind):
    model = explained(arch, kind)
    for rec in get("attention_rollout", internal_batch_size=3).attribute(list(TEXTS), model):
        att = unpadded_attentions(model, rec)
        eye = torch.eye(att.shape[-1])
        hand = eye
        for a in att:
            r = 0.5 * a + 0.5 * eye
            hand = (r / r.sum(-1, keepdim=True)) @ hand
        np.testing.assert_allclose(
            rec.scores, hand[prediction_row(model, rec)].numpy() * rec.attributable, atol=1e-6
        )
        assert np.all(rec.scores[~rec.attributable] == 0)
