"""Model-randomization sanity checks (Adebayo et al., 2018; thesis §2.2.3.3).

Re-run a method on copies of the explained model whose layers are re-drawn at random, and measure the Spearman ρ
between each example's original and new token scores (attributable tokens only). A method that explains the
model must change when the model changes: lower ρ is better. Cascading randomizes the classification head and
then the transformer blocks top-down, cumulatively; independent randomizes one of them at a time. Weight matrices
(parameters with ≥ 2 dims) are re-drawn from N(0, std of the trained matrix); biases and norms are kept, so the
randomized model stays numerically sane. The target class stays the original one.

These checks re-run a method, so they do not fit the per-record metric signature: call
``spearman_randomization(method, model, texts, mode)`` for the full curve, or the registered metrics
``get("spearman_cascading")(method, model, texts)`` for one value per example (ρ averaged over the steps).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from amlx.metrics import Metric, register_metric

MODES = ("cascading", "independent")


def randomizable_layers(model) -> list[tuple[str, nn.Module]]:
    """Head first, then transformer blocks from the last to the first: [(name, module)]."""
    hf = model.hf
    out = []
    for head in ("classifier", "score"):
        if isinstance(getattr(hf, head, None), nn.Module):
            out.append((head, getattr(hf, head)))
    lists = [(n, m) for n, m in hf.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(
            f"found no list of transformer blocks in {type(hf).__name__}; cannot randomize layers"
        )
    name, blocks = max(lists, key=lambda nm: len(nm[1]))
    out += [(f"{name}.{i}", blocks[i]) for i in reversed(range(len(blocks)))]
    return out


@torch.no_grad()
def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every weight matrix of ``module`` in place from N(0, its own std)."""
    for p in module.parameters():
        if p.dim() >= 2:
            std = float(p.float().std())
            p.copy_(torch.randn(p.shape, generator=generator).mul_(std).to(p))


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant scores: ρ undefined, NaN
        return float(spearmanr(a, b).statistic)


def spearman_randomization(method, model, texts: list[str], mode: str = "cascading", seed: int = 0
                           ) -> tuple[list[str], np.ndarray]:  # fmt: skip
    """Steps (layer names) and ρ [steps, examples] between original and randomized-model attributions."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    original = method.attribute(texts, model)
    targets = [r.target for r in original]
    work = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    steps, rows = [], []
    for name, module in randomizable_layers(work):
        saved = copy.deepcopy(module.state_dict()) if mode == "independent" else None
        randomize_(module, gen)
        new = method.attribute(texts, work, target=targets)
        rows.append([_rho(o.scores[o.attributable], n.scores[n.attributable]) for o, n in zip(original, new)])
        steps.append(name)
        if saved is not None:
            module.load_state_dict(saved)
    return steps, np.asarray(rows)


class _Spearman(Metric):
    kind = "sanity"
    mode: str

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, method, model, texts: list[str]) -> np.ndarray:  # type: ignore[override]
        """ρ per example [examples], averaged over the randomization steps (NaN steps ignored)."""
        _, rho = spearman_randomization(method, model, texts, self.mode, self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.nanmean(rho, axis=0)


@register_metric
class SpearmanCascading(_Spearman):
    """Mean Spearman ρ over cascading randomization steps (head, then blocks top-down; lower is better)."""

    name, direction, mode = "spearman_cascading", "lower", "cascading"


@register_metric
class SpearmanIndependent(_Spearman):
    """Mean Spearman ρ over independent randomization of each layer (lower is better)."""

    name, direction, mode = "spearman_independent", "lower", "independent"
