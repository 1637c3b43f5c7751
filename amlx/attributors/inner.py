"""The inner Lightning run of a per-instance optimization (MaRC, fAML): one batch of instances, a lean Trainer.

The LightningModule of a batch owns ``training_step`` and ``configure_optimizers`` and returns
``Batches([batch])`` as its ``train_dataloader``: the one batch of instances once per epoch, so an epoch is one
optimizer step and ``Trainer(max_epochs=steps)`` runs ``steps`` of them (fewer when the module or a callback
sets ``trainer.should_stop``). Epoch-level Lightning tools therefore act per step: ``EarlyStopping(monitor=
"loss")`` reads the loss the module logs whenever a callback or logger is attached (a lean run does not log,
which saves about a millisecond a step). ``Batches`` is a plain iterable, not a ``DataLoader``: creating a
DataLoader iterator draws a seed from torch's global generator, and these runs leave it where it was.

The Trainer is lean: no checkpoints, logger, progress bar or model summary, and Lightning's start-up lines are
silenced. ``options`` (e.g. ``{"precision": "bf16-mixed", "gradient_clip_val": 1.0}``) are passed to it as
given, except ``callbacks``: each run gets fresh ones — a copy of each callback object, or one built from a YAML
spec ``{class_path: lightning.pytorch.callbacks.EarlyStopping, init_args: {monitor: loss, patience: 20}}`` — so
that the state of an EarlyStopping never carries over from one batch of instances to the next.

A learning-rate schedule comes from Lightning too: ``optimization(optimizer, spec)`` turns a YAML spec
``{class_path: torch.optim.lr_scheduler.ReduceLROnPlateau, init_args: {factor: 0.5, patience: 10}}`` (any
``torch.optim.lr_scheduler`` class; ``monitor``, default ``loss``, for a plateau schedule) into what
``configure_optimizers`` returns. Lightning steps it at every epoch end, that is after every optimizer step, and a
plateau schedule reads the monitored loss — the mean over the batch's active instances, so, as with
``EarlyStopping(monitor="loss")``, the schedule of an instance depends on its batch-mates (the per-instance
``patience`` of MaRC does not). A module with a schedule logs its loss even in a lean run.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import warnings
from collections.abc import Iterator

import lightning as L
import torch

LEAN = {"enable_checkpointing": False, "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
_QUIET = (  # the loggers of Lightning's per-Trainer INFO lines (accelerator summary, CUDA_VISIBLE_DEVICES, "stopped")
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)


class Batches:
    """Batches given in advance, one per step, in order: a Lightning dataloader that is not a ``DataLoader``."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        return iter(self.batches)


def trainer_for(device: torch.device, steps: int, **options) -> L.Trainer:
    """A lean Trainer on ``device`` (the explained model's) for ``steps`` one-step epochs; ``options`` override."""
    if device.type == "cuda":
        where = {"accelerator": "gpu", "devices": [device.index or 0]}
    else:
        where = {"accelerator": device.type, "devices": 1}
    defaults = {"max_epochs": steps, "log_every_n_steps": 1, "num_sanity_val_steps": 0, **LEAN}
    if "callbacks" in options:
        options = {**options, "callbacks": [fresh_callback(c) for c in options["callbacks"]]}
    return L.Trainer(**{**where, **defaults, **options})


def fresh_callback(spec) -> L.Callback:
    """A new callback from ``{class_path, init_args}`` (YAML), or a copy of a callback object."""
    if not isinstance(spec, dict):
        return copy.deepcopy(spec)
    if set(spec) - {"class_path", "init_args"} or "class_path" not in spec:
        raise ValueError(f"a callback given as a mapping needs class_path (and optionally init_args), got {spec}")
    return _import(spec["class_path"], "callback")(**spec.get("init_args", {}))


def _import(class_path: str, what: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import the {what} class {class_path!r}: {e}") from e


SCHEDULER_KEYS = {"class_path", "init_args", "monitor"}


def check_scheduler(spec: dict | None) -> None:
    """Refuse a malformed learning-rate schedule spec (module docstring) before any optimization starts."""
    if spec is None:
        return
    if not isinstance(spec, dict) or "class_path" not in spec or set(spec) - SCHEDULER_KEYS:
        raise ValueError(
            "lr_scheduler needs class_path (and optionally init_args, monitor), e.g. {class_path: "
            f"torch.optim.lr_scheduler.ReduceLROnPlateau, init_args: {{factor: 0.5, patience: 10}}}}; got {spec!r}"
        )
    cls = _import(spec["class_path"], "lr_scheduler")
    if not (isinstance(cls, type) and issubclass(cls, (torch.optim.lr_scheduler.LRScheduler,
                                                       torch.optim.lr_scheduler.ReduceLROnPlateau))):  # fmt: skip
        raise ValueError(f"lr_scheduler class {spec['class_path']!r} is not a torch.optim.lr_scheduler schedule")


def schedule_label(spec: dict) -> str:
    """A short name for a schedule spec in a method's variant: ``ReduceLROnPlateau(factor:0.5 patience:10)``."""
    args = " ".join(f"{k}:{v}" for k, v in spec.get("init_args", {}).items())
    return f"{spec['class_path'].rpartition('.')[2]}({args})"


def optimization(optimizer: torch.optim.Optimizer, spec: dict | None):
    """What ``configure_optimizers`` returns: ``optimizer``, with the schedule of ``spec`` when one is given."""
    if spec is None:
        return optimizer
    check_scheduler(spec)
    scheduler = _import(spec["class_path"], "lr_scheduler")(optimizer, **spec.get("init_args", {}))
    config = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}  # an epoch is one optimizer step here
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = spec.get("monitor", "loss")
    return {"optimizer": optimizer, "lr_scheduler": config}


def fit(module: L.LightningModule, device: torch.device, steps: int, options: dict | None = None) -> None:
    """``trainer_for(device, steps, **options).fit(module)`` without Lightning's per-call start-up and stop messages."""
    with quiet():
        trainer_for(device, steps, **(options or {})).fit(module)


def release(module: L.LightningModule) -> None:
    """Free what a finished inner run holds: the optimizer's state and parameter references, and the module's link to
    its Trainer.

    Lightning's Trainer and the module reference each other (``module.trainer``, ``trainer.strategy.model``), so
    without this the pair — with the optimizer's moments and whatever tensors the module holds — lives until Python's
    next full garbage collection, which tensor memory does not trigger. An ``explain.py evaluate`` of fAML (``all``,
    8 copies of MiniLM per group) grew by about 3 GB per 16 examples that way, until the kernel's OOM killer ended it
    at 24 GB. Call it once the module's result has been read.
    """
    trainer = module._trainer
    if trainer is not None:
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
            optimizer.param_groups.clear()
        trainer.strategy.optimizers = []
        trainer.strategy.lr_scheduler_configs = []
    module.trainer = None


def watched(trainer: L.Trainer, scheduler: dict | None = None) -> bool:
    """Whether anything reads logged values (a callback, a logger, a schedule ``scheduler``): logging costs about a
    millisecond a step."""
    return bool(trainer.callbacks or trainer.loggers or scheduler)


@contextlib.contextmanager
def quiet():
    """Lightning's per-Trainer INFO lines and its pytree deprecation warning off inside the block."""
    loggers = [logging.getLogger(name) for name in _QUIET]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # lightning 2.6 on torch ≥ 2.10 warns on every batch transfer; the call is Lightning's, not ours
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
