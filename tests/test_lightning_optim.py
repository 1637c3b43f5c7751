"""The per-instance optimizations as LightningModules (issue 14): MaRC and fAML under a Lightning Trainer give what
their hand-written loops gave (tests/reference_loops.py), leave torch's global generator alone, keep the explained
model frozen and in eval mode, and can be fitted by a user's own Trainer; RPI's module runs under Trainer.predict."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from amlx import methods
from amlx.attributors.faml import FAML, FAMLModule
from amlx.attributors.marc import MaRCModule
from tests import reference_loops
from tests.tiny import TEXTS, save_tiny_backbone, tiny_explained

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
    L.Trainer(max_epochs=20, accelerator="cpu", **LEAN).fit(module)
    lam = module.result().token_mask  # [texts, tokens]
    recs = methods.get("marc", steps=20, seed=1).attribute(["a good movie", "the plot was slow"], model)
    enc = model.encode(["a good movie", "the plot was slow"])
    for b, rec in enumerate(recs):
        expected = lam[b, : len(rec)].double() * enc.attributable[b, : len(rec)]
        assert (torch.as_tensor(rec.scores) - expected).abs().max() <= EQUAL
    assert module.result().steps.max() <= 20


# ------------------------------------------------------------------------------------------------------ fAML
@pytest.fixture(scope="module")
def attributor(tmp_path_factory):
    """A tiny AML attributor (BERT backbone) explaining a tiny RoBERTa classifier, as in tests/test_aml.py."""
    from tests.test_aml import make_attributor

    return make_attributor(save_tiny_backbone(tmp_path_factory.mktemp("backbone")), tiny_explained("roberta", "encoder"))


def hand_written(monkeypatch):
    """Make ``FAML`` run its per-instance copies with the old hand-written Adam loop instead of a Trainer."""
    monkeypatch.setattr(FAML, "_run", lambda self, module: reference_loops.faml_optimize(
        self, module.run_forward, list(module.tuned)))  # fmt: skip


@pytest.mark.parametrize(("params", "lr", "parallel", "selection"), [
    ("head", 1e-2, None, "loss"), ("all", 1e-3, 2, "last"), ("all", 1e-3, 1, "loss"), ("lora", 1e-2, None, "loss"),
])  # fmt: skip
def test_faml_copies_under_lightning_equal_the_hand_written_loop(attributor, monkeypatch, params, lr, parallel, selection):
    texts = list(TEXTS)
    faml = FAML(attributor, steps=3, params=params, lr=lr, parallel=parallel, selection=selection)
    torch.manual_seed(0)  # LoRA draws its adapter's initial A from torch's global generator
    new = faml.attribute(texts)
    with monkeypatch.context() as m:
        hand_written(m)
        torch.manual_seed(0)
        old = FAML(attributor, steps=3, params=params, lr=lr, parallel=parallel, selection=selection).attribute(texts)
    assert new.maps.shape == old.maps.shape == (len(texts), 4, new.enc.input_ids.shape[1])
    assert (new.maps - old.maps).abs().max() <= EQUAL and (new.losses - old.losses).abs().max() <= EQUAL
    assert torch.equal(new.step, old.step) and (new.scores - old.scores).abs().max() <= EQUAL
    assert not torch.allclose(new.maps[:, -1], new.maps[:, 0])  # the steps moved the maps


def test_faml_module_fits_on_a_users_own_trainer_like_attribute(attributor):
    """The docs/aml.md snippet: the per-instance copies of your own texts, fitted by a Trainer you configure."""
    faml = FAML(attributor, steps=3, params="head", lr=1e-2)
    module = faml.module(["a good movie", "the plot was slow"])
    assert isinstance(module, FAMLModule) and isinstance(module, L.LightningModule)
    L.Trainer(max_epochs=faml.steps, accelerator="cpu", **LEAN).fit(module)
    res = faml.result(module)
    state = torch.get_rng_state()
    same = FAML(attributor, steps=3, params="head", lr=1e-2).attribute(["a good movie", "the plot was slow"])
    assert torch.equal(torch.get_rng_state(), state)  # the inner run draws nothing from torch's global generator
    assert res.maps.shape[1] == 4 and (res.maps - same.maps).abs().max() <= EQUAL
    assert torch.equal(res.step, same.step)
    assert not attributor.training and not attributor.explained.training
    with pytest.raises(ValueError, match="attribute"):
        FAML(attributor, steps=1, params="lora").module(["a good movie"])


def test_faml_inner_trainer_takes_lightning_options_and_callbacks(attributor):
    """``trainer`` options reach the inner Trainer: an EarlyStopping on the logged loss ends the run early."""
    from lightning.pytorch.callbacks import EarlyStopping

    stop = EarlyStopping(monitor="loss", patience=1, min_delta=1e9)  # an epoch is a step: checked after each
    res = FAML(attributor, steps=6, params="head", lr=1e-2, trainer={"callbacks": [stop]}).attribute(["a good movie"])
    assert res.maps.shape[1] == 3  # stopped after the second step (no improvement by 1e9): 2 steps, 3 records
    marc = methods.get("marc", steps=30, patience=None, trainer={"callbacks": [EarlyStopping("loss", patience=1,
                                                                                              min_delta=1e9)]})
    marc.attribute(["a good movie"], tiny_explained("bert", "encoder"))
    assert marc.last_fit.steps.tolist() == [2]


# ------------------------------------------------------------------------------------------------------- RPI
@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder")])
def test_rpi_module_draws_and_integrates_like_the_old_loop_directly_and_under_trainer_predict(explained, arch, kind):
    from amlx.methods.rpi import RPIModule

    model = explained(arch, kind)
    enc = model.encode(list(TEXTS))
    with torch.no_grad():
        target = model.probs(enc.input_ids, enc.attention_mask).argmax(-1)
    options = {"n_baselines": 3, "n_steps": 4, "layers": [0, -1], "internal_batch_size": 24, "seed": 2}  # 2 per group
    old_maps, old_probs = reference_loops.rpi_candidate_maps(methods.get("rpi", **options), enc, model, target)
    maps, probs = methods.get("rpi", **options).candidate_maps(enc, model, target)
    assert (maps - old_maps).abs().max() <= EQUAL and (probs - old_probs).abs().max() <= EQUAL
    module = methods.get("rpi", **options).module(enc, model, target)
    assert isinstance(module, RPIModule) and isinstance(module, L.LightningModule) and len(module.groups) == 2
    out = L.Trainer(accelerator="cpu", inference_mode=False, **LEAN).predict(module)
    assert (torch.cat([m for m, _ in out]) - old_maps).abs().max() <= EQUAL
    assert old_maps.abs().max() > 0 and not model.training


def test_groups_stopped_early_by_a_callback_keep_their_last_map_in_the_batch_trace():
    from amlx.attributors.faml import _cat_traces

    short = (torch.tensor([[[0.5, 0.25], [0.75, 1.0]]]), torch.tensor([[5.0, 4.0]]))  # 1 instance, 2 records, 2 tokens
    full = (torch.tensor([[[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]]]), torch.tensor([[3.0, 2.0, 1.0]]))
    maps, losses = _cat_traces([short, full])
    assert maps.tolist() == [[[0.5, 0.25, 0.0], [0.75, 1.0, 0.0], [0.75, 1.0, 0.0]], full[0][0].tolist()]
    assert losses.tolist() == [[5.0, 4.0, 4.0], [3.0, 2.0, 1.0]]


def test_inner_trainer_callbacks_from_yaml_specs_start_fresh_for_every_batch(explained):
    """A YAML callback spec builds one EarlyStopping per internal batch: the second batch does not inherit the first's
    best loss (with a shared one, it would stop after its first step)."""
    spec = {"class_path": "lightning.pytorch.callbacks.EarlyStopping",
            "init_args": {"monitor": "loss", "patience": 1, "min_delta": 1e9}}  # fmt: skip
    marc = methods.get("marc", steps=30, patience=None, internal_batch_size=1, trainer={"callbacks": [spec]})
    steps = []
    marc.optim.fit = _recording(marc.optim.fit, steps)
    marc.attribute(list(TEXTS[:2]), explained("bert", "encoder"))
    assert steps == [[2], [2]]
    with pytest.raises(ValueError, match="class_path"):
        methods.get("marc", steps=2, trainer={"callbacks": [{"init_args": {}}]}).attribute("a good movie",
                                                                                          explained("bert", "encoder"))


def _recording(fit, steps: list):
    def wrapped(*args, **kwargs):
        result = fit(*args, **kwargs)
        steps.append(result.steps.tolist())
        return result

    return wrapped


# ------------------------------------------------------------------------------------------ learning-rate schedules
PLATEAU_AFTER_TWO = {  # reduces the lr by 1e-12 after the second step: no step ever improves the loss by 1e9
    "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "init_args": {"factor": 1e-12, "patience": 0, "threshold": 1e9, "threshold_mode": "abs"},
}


def test_marc_plateau_schedule_from_yaml_reads_the_logged_loss_after_every_step(explained):
    """A plateau schedule given as YAML is stepped after every MaRC step on the loss the module logs: with the lr cut
    to ~0 after step 2, six steps leave the mask where two unscheduled steps do (a schedule that never stepped, or
    stepped once per run, would not)."""
    model = explained("bert", "encoder")
    options = {"steps": 6, "patience": None, "seed": 2}
    six = methods.get("marc", lr_scheduler=PLATEAU_AFTER_TWO, **options)
    six.attribute(list(TEXTS[:2]), model)
    two = methods.get("marc", **{**options, "steps": 2})
    two.attribute(list(TEXTS[:2]), model)
    free = methods.get("marc", **options)
    free.attribute(list(TEXTS[:2]), model)
    assert six.last_fit.steps.tolist() == [6, 6]
    assert (six.last_fit.token_mask - two.last_fit.token_mask).abs().max() <= 1e-6
    assert (free.last_fit.token_mask - two.last_fit.token_mask).abs().max() > 1e-3  # steps 3–6 do move it unscheduled
    assert "lr_scheduler" in six.variant


def test_marc_step_schedule_sets_the_lr_of_every_step(explained):
    model = explained("bert", "encoder")
    step = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}}
    marc = methods.get("marc", steps=4, patience=None, lr=0.04, lr_scheduler=step)
    module = marc.optim.module(model, *marc_arguments(model, marc, TEXTS[:1]))
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", **LEAN)
    trainer.fit(module)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.04 * 0.5**4)


def test_faml_schedules_from_yaml_act_after_every_step(attributor):
    """fAML's ``lr_scheduler``: with the lr set to 0 after step 1 (StepLR, γ = 0) every later map is the map of step
    1, exactly; with the plateau cut after step 2, the maps stop moving after step 2."""
    zero = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.0}}
    texts = list(TEXTS[:3])
    for params in ("head", "all"):
        res = FAML(attributor, steps=4, params=params, lr=1e-2, lr_scheduler=zero).attribute(texts)
        assert not torch.allclose(res.maps[:, 1], res.maps[:, 0])
        assert all(torch.equal(res.maps[:, s], res.maps[:, 1]) for s in (2, 3, 4))
    plateau = FAML(attributor, steps=5, params="head", lr=1e-2, lr_scheduler=PLATEAU_AFTER_TWO).attribute(texts)
    free = FAML(attributor, steps=5, params="head", lr=1e-2).attribute(texts)
    assert (plateau.maps[:, :3] - free.maps[:, :3]).abs().max() <= EQUAL
    assert (plateau.maps[:, 3:] - plateau.maps[:, 2:3]).abs().max() <= 1e-6
    assert (free.maps[:, 5] - free.maps[:, 2]).abs().max() > 1e-4
    method = methods.get("faml", attributor=attributor, steps=2, lr_scheduler=zero)  # the YAML path of evaluate
    assert method.faml.lr_scheduler == zero


@pytest.mark.parametrize("spec,message", [
    ({"init_args": {"factor": 0.5}}, "needs class_path"),
    ({"class_path": "torch.optim.lr_scheduler.StepLR", "every": 2}, "needs class_path"),
    ({"class_path": "torch.optim.lr_scheduler.NoSuchSchedule"}, "cannot import"),
    ({"class_path": "torch.nn.Linear"}, "not a torch.optim.lr_scheduler"),
])  # fmt: skip
def test_a_malformed_schedule_is_refused_before_any_step(attributor, spec, message):
    with pytest.raises(ValueError, match=message):
        methods.get("marc", lr_scheduler=spec)
    with pytest.raises(ValueError, match=message):
        FAML(attributor, steps=2, lr_scheduler=spec)


# --------------------------------------------------------------------------------------------- memory of inner runs
@pytest.mark.parametrize("params,parallel", [("all", 2), ("head", None)])
def test_faml_frees_each_groups_copies_and_optimizer_state_without_waiting_for_the_garbage_collector(
    attributor, monkeypatch, params, parallel
):
    """The inner Trainer and its module reference each other; unless the finished run is released, a group's copies
    of G and Adam's moments live until Python's next full collection (an evaluate of fAML grew by ~3 GB per 16
    examples until the OOM killer ended it). With the collector off, nothing of a group may outlive ``attribute``."""
    import gc
    import weakref

    seen: list[weakref.ref] = []
    init = FAMLModule.__init__

    def recording(self, tuned, *args, **kwargs):
        init(self, tuned, *args, **kwargs)
        seen.extend(weakref.ref(p) for p in tuned)  # Adam's moments are keyed by these: they go with them

    monkeypatch.setattr(FAMLModule, "__init__", recording)
    faml = FAML(attributor, steps=3, params=params, lr=1e-2, parallel=parallel)
    gc.collect()
    gc.disable()
    try:
        res = faml.attribute(list(TEXTS[:4]))
        alive = [r() for r in seen if r() is not None]
    finally:
        gc.enable()
    assert len(seen) > 0 and alive == []
    assert res.maps.shape[1] == 4 and not torch.allclose(res.maps[:, -1], res.maps[:, 0])


def test_marc_releases_its_inner_run(explained):
    """MaRC's module holds the batch's embeddings; they are freed when ``fit`` returns, not at the next collection."""
    import gc
    import weakref

    model = explained("bert", "encoder")
    marc = methods.get("marc", steps=4, patience=None)
    seen = []
    build = marc.optim.module

    def module(*args, **kwargs):
        m = build(*args, **kwargs)
        seen.extend(weakref.ref(t) for t in (m.batch["x"], m.batch["baseline"]))
        return m

    marc.optim.module = module
    gc.collect()
    gc.disable()
    try:
        marc.attribute(list(TEXTS[:2]), model)
        alive = [r() for r in seen if r() is not None]
    finally:
        gc.enable()
    assert len(seen) == 2 and alive == []
