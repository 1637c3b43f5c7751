"""``train.py``'s LightningCLI: every run is a YAML under ``configs/`` (``--print_config`` reproduces it)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI


class AmlxCLI(LightningCLI):
    """LightningCLI with ``--test_after_fit`` (default true): ``fit`` ends by testing the fitted model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True, help="run trainer.test after fit")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit", True):
            self.trainer.test(self.model, datamodule=self.datamodule)


def main(args: list[str] | dict | None = None, **cli_options) -> AmlxCLI:
    """``train.py``; ``cli_options`` go to ``LightningCLI`` (``amlx.tuning`` passes ``run=False``, ``trainer_defaults``)."""
    return AmlxCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        **cli_options,
    )
