"""Random baseline: seeded uniform scores in [0, 1) on attributable tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from amlx.methods.base import AttributionMethod, register_method
from amlx.models.explained import Encoded


@register_method("random")
class RandomAttribution(AttributionMethod):
    """Uniform random scores from a generator seeded once per instance (successive calls continue the stream)."""

    def __init__(self, seed: int = 0, internal_batch_size: int = 16) -> None:
        super().__init__(internal_batch_size)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.variant = f"seed{seed}"
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        return torch.rand(enc.input_ids.shape, generator=self.generator)
