"""Explained models in another dtype (``model_options: {dtype: bfloat16}``) and with gradient checkpointing.

Tolerance (docs/explained-models.md): on the tiny random models of tests/tiny.py, bf16 class probabilities are
within 0.05 (max) and 0.01 (mean) of fp32 over the tiny corpus; measured 0.015–0.034 max, 0.003–0.007 mean.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amlx.models.explained import DtypeError, ExplainedModel
from tests.tiny import CORPUS, tiny_explained

BF16_MAX_ABS, BF16_MEAN_ABS = 0.05, 0.01


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(arch, kind)`` → a folder holding that tiny model (save_pretrained), written once."""
    root, done = tmp_path_factory.mktemp("dtype"), {}

    def get(arch: str, kind: str) -> str:
        if (arch, kind) not in done:
            done[arch, kind] = str(root / f"{arch}-{kind}")
            tiny_explained(arch, kind).save_pretrained(done[arch, kind])
        return done[arch, kind]

    return get


@pytest.mark.parametrize(("arch", "kind"), [("bert", "encoder"), ("llama", "decoder"), ("mistral", "prompted")])
def test_bf16_probabilities_are_within_the_documented_tolerance_of_fp32(saved, arch, kind):
    fp32 = ExplainedModel.from_pretrained(saved(arch, kind))
    bf16 = ExplainedModel.from_pretrained(saved(arch, kind), dtype="bfloat16")
    assert bf16.embedding_layer.weight.dtype == torch.bfloat16 and fp32.embedding_layer.weight.dtype == torch.float32
    p32, p16 = fp32.predict(list(CORPUS)), bf16.predict(list(CORPUS))
    assert p16.dtype == torch.float32  # probabilities are always float32
    diff = (p32 - p16).abs()
    assert diff.max() <= BF16_MAX_ABS and diff.mean() <= BF16_MEAN_ABS
    assert not torch.equal(p32, p16)  # the weights really are bf16


def test_float32_embeddings_from_a_method_run_in_a_bf16_model(saved):
    model = ExplainedModel.from_pretrained(saved("llama", "decoder"), dtype="bf16")
    enc = model.encode(["a good movie", "bad plot and bad acting"])
    mixed = model.embed(enc.input_ids).float()  # what masks and baselines produce: float32
    torch.testing.assert_close(model.probs(inputs_embeds=mixed, attention_mask=enc.attention_mask),
                               model.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask))  # fmt: skip


def test_a_dtype_that_is_not_a_float_type_is_refused_before_loading(saved):
    with pytest.raises(DtypeError, match="dtype 'int8' is not one of float32, bfloat16"):
        ExplainedModel.from_pretrained("amlx:not-loaded", dtype="int8")


def _input_gradient(model: ExplainedModel, enc) -> torch.Tensor:
    embeds = model.embed(enc.input_ids).detach().requires_grad_(True)
    model.probs(inputs_embeds=embeds, attention_mask=enc.attention_mask)[:, 1].sum().backward()
    return embeds.grad


def test_gradient_checkpointing_recomputes_every_layer_and_leaves_outputs_and_gradients_unchanged(saved):
    from transformers.modeling_layers import GradientCheckpointingLayer

    plain = ExplainedModel.from_pretrained(saved("llama", "decoder"))
    ckpt = ExplainedModel.from_pretrained(saved("llama", "decoder"), gradient_checkpointing=True).eval()
    layers = [m for m in ckpt.hf.modules() if isinstance(m, GradientCheckpointingLayer)]
    calls = []
    for layer in layers:
        layer._gradient_checkpointing_func = lambda *a, f=layer._gradient_checkpointing_func, **k: calls.append(1) or f(*a, **k)
    assert not any(m.training for m in ckpt.modules() if isinstance(m, nn.Dropout))  # still frozen, eval mode
    enc = ckpt.encode(["a good movie", "bad plot and bad acting"])
    torch.testing.assert_close(_input_gradient(ckpt, enc), _input_gradient(plain, enc), rtol=1e-5, atol=1e-7)
    assert len(calls) == len(layers) == 2  # each layer ran checkpointed
    with torch.no_grad():
        ckpt.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    assert len(calls) == 2  # nothing to recompute without a backward pass
