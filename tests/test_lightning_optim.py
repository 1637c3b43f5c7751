"""The per-instance optimizations as LightningModules (issue 14): MaRC and fAML under a Lightning Trainer give what
their hand-written loops gave (tests/reference_loops.py), leave torch's global generator alone, keep the explained
model frozen and in eval mode, and can be fitted by a user's own Trainer; RPI's module runs under Trainer.predict."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from amlx import methods
from amlx.attributors.marc import MaRC, MaRCModule
from tests import reference_loops
from tests.tiny import TEXTS

LEAN = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
EQUAL = 1e-6  # "equal to today's": the same operations in the same order, so float32 rounding at most


def marc_arguments(model, method, texts=TEXTS):
    """What ``MaRCMethod.scores`` hands ``MaRC.fit`` for ``texts`` (fresh generators on each call)."""
    enc = model.encode(list(texts))
    with torch.no_grad():
        target = model.probs(enc.input_ids, enc.attention_mask).argmax(-1)
    return method._prepare(enc, model, target)[2]


# ------------------------------------------------------------------------------------------------------ MaRC
@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder")])
@pytest.mark.parametrize("options", [
    {"steps": 40, "patience": 4, "min_delta": 0.02},  # noise, flips and per-instance early stops
    {"steps": 15, "patience": None, "weight_decay": 0.1, "kernel": "sigma_sq", "complement": "one_minus"},
])  # fmt: skip
def test_marc_module_under_lightning_equals_the_hand_written_loop(explained, arch, kind, options):
    model = explained(arch, kind)
    method = methods.get("marc", seed=3, **options)
    with torch.enable_grad():
        new = method.optim.fit(model, *marc_arguments(model, method))
        token_mask, mask, taken, losses = reference_loops.marc_fit(method.optim, model, *marc_arguments(model, method))
    assert isinstance(method.optim.module(model, *marc_arguments(model, method)), L.LightningModule)
    assert torch.equal(new.steps, taken)
    if options["patience"] is not None:
        assert len(set(taken.tolist())) > 1, "the rows must stop at different steps for this test to mean something"
    assert torch.equal(torch.isnan(new.losses), torch.isnan(losses))
    finite = ~torch.isnan(losses)
    assert (new.losses[finite] - losses[finite]).abs().max() <= EQUAL
    assert (new.token_mask - token_mask).abs().max() <= EQUAL
    assert (new.mask.w - mask.w).abs().max() <= EQUAL and (new.mask.sigma - mask.sigma).abs().max() <= EQUAL


def test_marc_leaves_the_global_generator_and_the_frozen_explained_model_as_they_were(explained):
    model = explained("bert", "encoder")
    assert not model.training
    state = torch.get_rng_state()
    methods.get("marc", steps=5, patience=None).attribute(list(TEXTS[:2]), model)
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_marc_module_fits_on_a_users_own_trainer_like_the_method(explained):
    """The docs/marc.md snippet: a MaRCModule of your own texts, fitted by a Trainer you configure."""
    model = explained("bert", "encoder")
    marc = methods.get("marc", steps=20, seed=1)
    module = marc.module(["a good movie", "the plot was slow"], model)
    assert isinstance(module, MaRCModule) and isinstance(module, L.LightningModule)
    L.Trainer(max_epochs=1, accelerator="cpu", **LEAN).fit(module)
    lam = module.result().token_mask  # [texts, tokens]
    recs = methods.get("marc", steps=20, seed=1).attribute(["a good movie", "the plot was slow"], model)
    enc = model.encode(["a good movie", "the plot was slow"])
    for b, rec in enumerate(recs):
        expected = lam[b, : len(rec)].double() * enc.attributable[b, : len(rec)]
        assert (torch.as_tensor(rec.scores) - expected).abs().max() <= EQUAL
    assert module.result().steps.max() <= 20 and isinstance(MaRC().changed(), dict)
