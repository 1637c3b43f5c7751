"""Data: text-classification tables, seeded splits, the planted-token variant."""

from amlx.data.datamodule import TextClassificationData, collate, data_from_options
from amlx.data.planted import plant
from amlx.data.sources import DatasetLabelError, load_table

__all__ = ["DatasetLabelError", "TextClassificationData", "collate", "data_from_options", "load_table", "plant"]
