"""Explained-model wrappers and the classifier fine-tuning module."""

from amlx.models.explained import Encoded, ExplainedModel

__all__ = ["Encoded", "ExplainedModel"]
