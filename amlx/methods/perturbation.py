"""Word-level perturbation methods: occlusion, LIME, Kernel SHAP and Shapley value sampling.

A *unit* is a word (all attributable tokens of one word; an attributable token in no word is a unit of its own,
as in ``amlx.metrics.perturb``). Perturbing a unit replaces its tokens' ids by the explained model's
``mask_token_id``; specials and the prompt are never perturbed and form no unit. The explained quantity is the
target's probability (``output="prob"``, default) or logit (``output="logit"``). A unit's score is copied to every
token of the unit. LIME, Kernel SHAP and Shapley sampling wrap captum (``Lime``, ``KernelShap``,
``ShapleyValueSampling``) with ``feature_mask`` = unit ids over the attributable ids and ``baselines`` = the mask
id; LIME and Kernel SHAP fit their surrogate with ``LeastSquares`` (closed form in torch, no scikit-learn).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from captum._utils.models.model import Model
from captum.attr import KernelShap, Lime, ShapleyValueSampling
from torch import Tensor
from torch.utils.data import DataLoader

from amlx.methods.base import AttributionMethod, register_method
from amlx.models.explained import Encoded

OUTPUTS = ("prob", "logit")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global generators (captum samples from them) and restore both afterwards."""
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def word_units(enc: Encoded) -> Tensor:
    """Unit index of every token (0..n_units-1 per row), -1 where not attributable: [batch, tokens]."""
    units = torch.full_like(enc.input_ids, -1)
    for b in range(len(enc)):
        pos = enc.attributable[b].nonzero().flatten()
        if len(pos) == 0:
            continue
        w = enc.word_ids[b, pos].clone()
        loose = w < 0
        w[loose] = int(w.max()) + 1 + torch.arange(int(loose.sum()), device=w.device)
        units[b, pos] = torch.unique(w, return_inverse=True)[1]
    return units


def mask_id_of(model) -> int:
    """The id that perturbed tokens are replaced by; learned mask embeddings have none."""
    if model.mask_token_id is None:
        raise ValueError(
            f"perturbation methods replace token ids, but {model.name or 'this explained model'} uses a learned "
            "mask embedding (mask='learned'); load it with mask='mask' | 'unk' | 'pad' | 'id:N' for occlusion, "
            "lime, kernel_shap and shapley_sampling"
        )
    return model.mask_token_id


class LeastSquares(Model):
    """Weighted (ridge) least squares with an unpenalized intercept, in closed form: captum's surrogate ``Model``."""

    def __init__(self, ridge: float = 0.0) -> None:
        self.ridge = ridge
        self.coef: Tensor | None = None
        self.intercept: Tensor | None = None

    def fit(self, train_data: DataLoader, **kwargs) -> None:
        xs, ys, ws = zip(*train_data)
        x, y, w = (torch.cat(t).double().cpu() for t in (xs, ys, ws))
        x = x.reshape(len(x), -1)
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) * w.sqrt()[:, None]
        rhs = (y.reshape(-1) * w.sqrt())[:, None]
        if self.ridge > 0:
            penalty = math.sqrt(self.ridge) * torch.eye(x.shape[1], x.shape[1] + 1, dtype=x.dtype)
            design, rhs = (
                torch.cat([design, penalty]),
                torch.cat([rhs, torch.zeros(x.shape[1], 1, dtype=x.dtype)]),
            )
        beta = torch.linalg.lstsq(design, rhs, driver="gelsd").solution[:, 0]
        self.coef, self.intercept = beta[:-1].float()[None], beta[-1].float()

    def representation(self) -> Tensor:
        return self.coef

    def __call__(self, x: Tensor) -> Tensor:
        return x.float() @ self.coef.T + self.intercept


class PerturbationMethod(AttributionMethod):
    """Shared part: unit construction, the explained output, and token scores from per-example unit scores."""

    def __init__(
        self, output: str = "prob", perturbations_per_eval: int = 64, internal_batch_size: int = 16
    ) -> None:
        super().__init__(internal_batch_size)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be ≥ 1, got {perturbations_per_eval}")
        self.output = output
        self.perturbations_per_eval = perturbations_per_eval

    @torch.inference_mode()
    def explained_output(self, model, input_ids: Tensor, attention_mask: Tensor, target: Tensor) -> Tensor:
        """The explained quantity [rows] of rows ``input_ids`` [rows, tokens], in passes of perturbations_per_eval."""
        out = []
        for ids, am, tgt in zip(
            *(t.split(self.perturbations_per_eval) for t in (input_ids, attention_mask, target))
        ):
            logits = model.logits(input_ids=ids, attention_mask=am).float()
            values = logits.softmax(-1) if self.output == "prob" else logits
            out.append(values.gather(1, tgt[:, None])[:, 0])
        return torch.cat(out)

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        mask_id = mask_id_of(model)
        units = word_units(enc)
        scores = torch.zeros(enc.input_ids.shape, dtype=torch.float32, device=enc.input_ids.device)
        for b, n in enumerate(enc.attention_mask.sum(1).tolist()):
            pos = (units[b, :n] >= 0).nonzero().flatten()
            if len(pos):
                scores[b, pos] = self.token_scores(
                    model, enc.input_ids[b, :n], pos, units[b, pos], mask_id, target[b]
                )
        return scores

    def token_scores(
        self, model, ids: Tensor, pos: Tensor, units: Tensor, mask_id: int, target: Tensor
    ) -> Tensor:
        """Scores [len(pos)] of one example's attributable positions ``pos`` (unit ``units``) in ``ids`` [tokens]."""
        raise NotImplementedError


@register_method("occlusion")
class Occlusion(PerturbationMethod):
    """Occlusion (leave-one-word-out): f(x) − f(x with the word's tokens masked), f = p_target (or the logit).

    Cost: 1 + n_words forward rows per example, all variants of a batch in passes of ``perturbations_per_eval``.
    """

    def __init__(
        self, output: str = "prob", perturbations_per_eval: int = 64, internal_batch_size: int = 16
    ) -> None:
        super().__init__(output, perturbations_per_eval, internal_batch_size)
        self.variant = output

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        mask_id = mask_id_of(model)
        units = word_units(enc)  # [batch, tokens]
        n_units = units.max(1).values + 1  # [batch]
        example = torch.arange(len(enc), device=units.device).repeat_interleave(n_units)  # [variants]
        unit = torch.cat([torch.arange(int(k), device=units.device) for k in n_units])  # [variants]
        occluded = enc.input_ids[example].masked_fill(units[example] == unit[:, None], mask_id)
        values = self.explained_output(
            model,
            torch.cat([enc.input_ids, occluded]),
            torch.cat([enc.attention_mask, enc.attention_mask[example]]),
            torch.cat([target, target[example]]),
        )
        drop = values[example] - values[len(enc) :]  # [variants]
        first_variant = torch.cumsum(n_units, 0) - n_units  # [batch]
        scores = torch.zeros(enc.input_ids.shape, dtype=torch.float32, device=units.device)
        has = units >= 0
        scores[has] = drop[(first_variant[:, None] + units)[has]]
        return scores


class CaptumSurrogate(PerturbationMethod):
    """Shared part of the captum wrappers: one captum call per example on its attributable ids.

    ``budget_per_unit``, when set, replaces the fixed ``n_samples`` per example by ⌈budget_per_unit · n_words⌉ + 2
    forward rows — the budget of MP-PI (B = 2n masked passes plus f(∅) and f(x)), for like-for-like comparisons.
    """

    def __init__(
        self, n_samples: int, output: str = "prob", perturbations_per_eval: int = 64, seed: int = 0,
        internal_batch_size: int = 16, budget_per_unit: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(output, perturbations_per_eval, internal_batch_size)
        self.n_samples, self.seed, self.budget_per_unit = n_samples, seed, budget_per_unit
        self.variant = f"{output}-{n_samples}" if budget_per_unit is None else f"{output}-{budget_per_unit:g}n+2"

    def reseed(self, seed: int) -> None:
        self.seed = seed  # drawn from at every example (``seeded``)

    def samples_for(self, n_units: int) -> int:
        """Forward rows spent on an example with ``n_units`` words."""
        if self.budget_per_unit is None:
            return self.n_samples
        return math.ceil(self.budget_per_unit * n_units) + 2

    def make_explainer(self, forward: Callable[[Tensor], Tensor]):
        raise NotImplementedError

    def token_scores(self, model, ids, pos, units, mask_id, target):
        ones = torch.ones(1, len(ids), dtype=torch.long, device=ids.device)
        if (
            int(units.max()) == 0
        ):  # one player: its Shapley value (and any surrogate's slope) is f(x) − f(masked)
            out = self.explained_output(
                model,
                torch.stack([ids, ids.index_fill(0, pos, mask_id)]),
                ones.repeat(2, 1),
                target.repeat(2),
            )
            return (out[0] - out[1]).repeat(len(pos))

        def forward(sub_ids: Tensor) -> Tensor:  # [rows, len(pos)] → explained output [rows]
            full = ids.repeat(len(sub_ids), 1)
            full[:, pos] = sub_ids
            return self.explained_output(
                model, full, ones.repeat(len(sub_ids), 1), target.repeat(len(sub_ids))
            )

        with seeded(self.seed):
            attr = self.make_explainer(forward).attribute(
                ids[pos][None], baselines=mask_id, feature_mask=units[None], n_samples=self.samples_for(int(units.max()) + 1),
                perturbations_per_eval=self.perturbations_per_eval,
            )  # fmt: skip
        return attr[0].float()  # captum copies each unit's score to all its positions


def lime_text_kernel(original_inp, perturbed_inp, perturbed_interpretable_inp, **kwargs) -> Tensor:
    """The lime package's text kernel: d = 100·(1 − cos(z, 1)), weight = sqrt(exp(−d²/25²))."""
    z = perturbed_interpretable_inp.float()
    cos = (z.sum() / (z.numel() * z.sum()).sqrt()).nan_to_num(0.0)
    d = 100 * (1 - cos)
    return torch.exp(-(d**2) / 25**2).sqrt()


@register_method("lime")
class LimeMethod(CaptumSurrogate):
    """LIME (Ribeiro et al., 2016) via ``captum.attr.Lime``: ridge surrogate on word presence.

    ``n_samples`` (default 200) coalitions, each word kept with probability ½ (captum's sampler), weighted by the
    lime package's text kernel; surrogate = ridge regression (``ridge``, default 1.0 as in the lime package).
    Cost: n_samples forward rows per example in passes of ``perturbations_per_eval``.
    """

    def __init__(
        self, n_samples: int = 200, ridge: float = 1.0, output: str = "prob", perturbations_per_eval: int = 64,
        seed: int = 0, internal_batch_size: int = 16, budget_per_unit: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(n_samples, output, perturbations_per_eval, seed, internal_batch_size, budget_per_unit)
        self.ridge = ridge

    def make_explainer(self, forward):
        return Lime(forward, interpretable_model=LeastSquares(self.ridge), similarity_func=lime_text_kernel)


@register_method("kernel_shap")
class KernelShapMethod(CaptumSurrogate):
    """Kernel SHAP (Lundberg & Lee, 2017) via ``captum.attr.KernelShap``: Shapley values by weighted regression.

    ``n_samples`` (default 200) coalitions drawn from the Shapley kernel (sizes k with p ∝ (M−1)/(k(M−k))), plus the
    full and empty coalitions with weight 10⁶ (captum's soft efficiency constraint); unregularized least squares.
    Exact for a model additive in word presence once the samples span all words. Cost: n_samples forward rows.
    """

    def __init__(
        self, n_samples: int = 200, output: str = "prob", perturbations_per_eval: int = 64, seed: int = 0,
        internal_batch_size: int = 16, budget_per_unit: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(n_samples, output, perturbations_per_eval, seed, internal_batch_size, budget_per_unit)

    def make_explainer(self, forward):
        explainer = KernelShap(forward)
        explainer.interpretable_model = LeastSquares()
        return explainer


@register_method("shapley_sampling")
class ShapleySampling(CaptumSurrogate):
    """Shapley value sampling (Castro et al., 2009) via ``captum.attr.ShapleyValueSampling``.

    Averages each word's marginal contribution over ``n_samples`` (default 25, captum's) random word orders.
    Cost: n_samples · (n_words + 1) forward rows per example.
    """

    def __init__(
        self, n_samples: int = 25, output: str = "prob", perturbations_per_eval: int = 64, seed: int = 0,
        internal_batch_size: int = 16,
    ) -> None:  # fmt: skip
        super().__init__(n_samples, output, perturbations_per_eval, seed, internal_batch_size)

    def make_explainer(self, forward):
        return ShapleyValueSampling(forward)
