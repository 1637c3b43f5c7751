"""The inner Lightning run of a per-instance optimization (MaRC, fAML): one batch of instances, a lean Trainer.

The LightningModule of a batch owns ``training_step`` and ``configure_optimizers`` and returns
``Batches([batch])`` as its ``train_dataloader``: the one batch of instances once per epoch, so an epoch is one
optimizer step and ``Trainer(max_epochs=steps)`` runs ``steps`` of them (fewer when the module or a callback
sets ``trainer.should_stop``). Epoch-level Lightning tools therefore act per step: ``EarlyStopping(monitor=
"loss")`` reads the loss the module logs whenever a callback or logger is attached (a lean run does not log,
which saves about a millisecond a step). ``Batches`` is a plain iterable, not a ``DataLoader``: creating a
DataLoader iterator draws a seed from torch's global generator, and these runs leave it where it was.

The Trainer is lean: no checkpoints, logger, progress bar or model summary, and Lightning's start-up lines are
silenced. ``options`` (e.g. ``{"precision": "bf16-mixed", "gradient_clip_val": 1.0}``, ``callbacks``) are
passed to it as given.
"""

from __future__ import annotations

import contextlib
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
    return L.Trainer(**{**where, **defaults, **options})


def fit(module: L.LightningModule, device: torch.device, steps: int, options: dict | None = None) -> None:
    """``trainer_for(device, steps, **options).fit(module)`` without Lightning's per-call start-up and stop messages."""
    with quiet():
        trainer_for(device, steps, **(options or {})).fit(module)


def watched(trainer: L.Trainer) -> bool:
    """Whether anything reads logged values (a callback or a logger): logging costs about a millisecond a step."""
    return bool(trainer.callbacks or trainer.loggers)


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
