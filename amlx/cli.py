"""``train.py``'s LightningCLI: every run is a YAML under ``configs/`` (``--print_config`` reproduces it).

The entry points (``train.py`` through ``main``, ``tune.py``) apply amlx's W&B policy before anything logs:
``WANDB_MODE=offline`` when neither ``WANDB_MODE`` nor a W&B API key (env ``WANDB_API_KEY`` or ``~/.netrc``) is
present, so the configs' ``WandbLogger`` never waits for the network. Importing amlx changes no environment.
"""

from __future__ import annotations

import netrc
import os

import lightning as L
from lightning.pytorch.cli import LightningCLI


def wandb_offline_without_key() -> None:
    """Default ``WANDB_MODE=offline`` unless a mode is set or an API key is configured (env or ``~/.netrc``)."""
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        os.environ["WANDB_MODE"] = "offline"


class AmlxCLI(LightningCLI):
    """LightningCLI with ``--test_after_fit`` (default true): ``fit`` ends by testing the fitted model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True, help="run trainer.test after fit")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit", True):
            self.trainer.test(self.model, datamodule=self.datamodule)


def main(args: list[str] | dict | None = None, **cli_options) -> AmlxCLI:
    """``train.py``; ``cli_options`` go to ``LightningCLI`` (``amlx.tuning`` passes ``run=False``, ``trainer_defaults``)."""
    wandb_offline_without_key()
    return AmlxCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        **cli_options,
    )
