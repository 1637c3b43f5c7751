"""Learned attributors: models trained to produce attribution maps for a frozen explained model (AML, fAML)."""

from amlx.attributors.aml import AMLAttributor, aml_loss
from amlx.attributors.faml import FAML, FAMLModule, FAMLResult

__all__ = ["FAML", "AMLAttributor", "FAMLModule", "FAMLResult", "aml_loss"]
