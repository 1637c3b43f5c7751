"""Explained-model wrappers and the classifier fine-tuning module."""

from amlx.models.explained import Encoded, ExplainedModel, resolve_device

__all__ = ["Encoded", "ExplainedModel", "resolve_device"]
