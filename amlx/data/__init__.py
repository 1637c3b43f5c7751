"""Data: text-classification tables, seeded splits, the planted-token variant."""

from amlx.data.datamodule import TextClassificationData, collate
from amlx.data.planted import plant
from amlx.data.sources import DatasetLabelError, load_table

__all__ = ["DatasetLabelError", "TextClassificationData", "collate", "load_table", "plant"]
