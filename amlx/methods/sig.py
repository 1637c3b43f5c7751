"""Sequential Integrated Gradients (Enguehard, 2023, arXiv 2305.15853): one IG path per word, the others held fixed.

For unit w (a word, or a token with ``unit="token"``), the baseline x̄^w is the input embeddings x with only w's
tokens replaced by the reference (the mask embedding by default) — specials, the prompt and the other words keep
their real embeddings. Then for every token i of w (the SIG formula of ../shared/docs/methods.md, Additions §1)

    SIG_i = Σ_h (x − x̄^w)_ih · ∫₀¹ ∂F_t(x̄^w + α(x − x̄^w))/∂x_ih dα,

so a unit's scores sum to F_t(x) − F_t(x̄^w) (completeness per unit, not over the whole input). Word units move all
their sub-tokens jointly. Embeddings are interpolated before the model adds position / type embeddings and its
embedding LayerNorm. ``normalize=True`` divides each example's scores by their L2 norm over tokens (SIG_i / ‖SIG‖₂,
the same formula); off by default, since it breaks that completeness and, being a positive per-example scale, changes no
ranking-based faithfulness metric.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters
from torch import Tensor

from amlx.methods.base import OUTPUTS, AttributionMethod, class_outputs, register_method
from amlx.methods.diffusion import ReseedsDiffusion, diffusion_for
from amlx.methods.integrated_gradients import BASELINES, reference_embeddings
from amlx.methods.perturbation import word_units
from amlx.models.explained import Encoded

UNITS = ("word", "token")


def units_of(enc: Encoded, unit: str) -> Tensor:
    """Unit index of every token (0..U−1 per row), −1 where not attributable: [batch, tokens]."""
    if unit == "word":
        return word_units(enc)
    return (enc.attributable.cumsum(1) - 1).where(enc.attributable, -1)


def sig_scores(
    enc: Encoded,
    model,
    target: Tensor,
    ref: Tensor,
    units: Tensor,
    n_steps: int = 50,
    integration: str = "gausslegendre",
    output: str = "logit",
    max_tokens: int = 8192,
) -> Tensor:
    """SIG scores [batch, tokens] against the reference ``ref`` [batch, tokens, hidden], per unit of ``units``.

    Every (example, unit, step) is one row; rows go through the model ⌊max_tokens / tokens⌋ at a time, one
    backward per pass.
    """
    x = model.embed(enc.input_ids).detach()
    types = model.token_type_ids(enc.input_ids, enc.attention_mask)
    diff = x - ref  # [B, k, h]: zero off the attributable tokens
    n_units = (units.max(1).values + 1).tolist()  # [B]
    row_ex = torch.cat([torch.full((u * n_steps,), b) for b, u in enumerate(n_units)]).to(x.device)
    row_unit = torch.cat([torch.arange(u).repeat_interleave(n_steps) for u in n_units]).to(x.device)
    row_step = torch.cat([torch.arange(n_steps).repeat(u) for u in n_units]).to(x.device)
    step_sizes, alphas = approximation_parameters(integration)
    weight = torch.tensor(step_sizes(n_steps), dtype=x.dtype, device=x.device)
    alpha = torch.tensor(alphas(n_steps), dtype=x.dtype, device=x.device)
    k = enc.input_ids.shape[1]
    out = torch.zeros(enc.input_ids.shape, dtype=x.dtype, device=x.device)
    for rows in torch.arange(len(row_ex), device=x.device).split(max(1, max_tokens // k)):
        ex, step = row_ex[rows], row_step[rows]
        moving = units[ex] == row_unit[rows][:, None]  # [rows, k]: the unit's tokens
        path = ref[ex] + alpha[step][:, None, None] * diff[ex]  # x̄^w + α(x − x̄^w) on the unit's tokens
        emb = torch.where(moving[..., None], path, x[ex]).requires_grad_(True)
        with torch.enable_grad():
            logits = model.logits(inputs_embeds=emb, attention_mask=enc.attention_mask[ex], token_type_ids=types[ex])
            f = class_outputs(logits, output)[torch.arange(len(rows), device=x.device), target[ex]]
            (grad,) = torch.autograd.grad(f.sum(), emb)
        out.index_add_(0, ex, (grad * diff[ex]).sum(-1) * moving * weight[step][:, None])
    return out


def _sig_reference(
    enc: Encoded, model, target: Tensor, ref: Tensor, units: Tensor, n_steps: int, integration: str, output: str
) -> Tensor:
    """The plain per-example, per-unit loop (captum IG from x̄^w to x, one unit at a time) that tests check against."""

    def forward(emb: Tensor, mask: Tensor, types: Tensor) -> Tensor:
        return class_outputs(model.logits(inputs_embeds=emb, attention_mask=mask, token_type_ids=types), output)

    x = model.embed(enc.input_ids).detach()
    types = model.token_type_ids(enc.input_ids, enc.attention_mask)
    out = torch.zeros(enc.input_ids.shape, dtype=x.dtype)
    for b in range(len(enc)):
        n = int(enc.attention_mask[b].sum())
        for u in range(int(units[b].max()) + 1):
            moving = units[b, :n] == u
            base = torch.where(moving[:, None], ref[b, :n], x[b, :n])[None]
            with torch.enable_grad():
                attr = IntegratedGradients(forward).attribute(
                    x[b : b + 1, :n], baselines=base, target=int(target[b]), n_steps=n_steps, method=integration,
                    additional_forward_args=(enc.attention_mask[b : b + 1, :n], types[b : b + 1, :n]),
                )  # fmt: skip
            out[b, :n] += attr[0].sum(-1).detach().cpu() * moving.cpu()
    return out


@register_method("sig")
class SequentialIntegratedGradients(ReseedsDiffusion, AttributionMethod):
    """SIG (module docstring): ``n_steps`` (50) points of ``integration`` per unit, units ``unit`` (word | token).

    ``baseline``: ``mask`` (default, the paper's best), ``pad``, or ``diffusion`` — RPI-SIG (seed 001 Table 6): R
    references drawn around the mask reference by RPI's diffusion process, one SIG map each, one kept by
    ``selection`` (options of ``amlx.methods.diffusion.DiffusionBaselines``; ``seed``). ``output`` F_t: ``logit``
    (default, as ``integrated_gradients``), ``log_prob`` or ``prob``. ``normalize``: the paper's L2 normalisation.
    ``max_tokens`` bounds each forward/backward pass (rows × padded length; rows = example × unit × step, packed
    across the examples of an internal batch). Cost: U·n_steps rows per example with U units (×R for diffusion).
    """

    takes_probs = True  # the oracle selection of baseline="diffusion" scores candidates against F(x)
    sort_by_length = True  # an example's scores do not depend on its batch-mates (less padding per pass)

    def __init__(
        self,
        baseline: str = "mask",
        unit: str = "word",
        n_steps: int = 50,
        integration: str = "gausslegendre",
        output: str = "logit",
        normalize: bool = False,
        max_tokens: int = 8192,
        internal_batch_size: int = 16,
        seed: int = 0,
        **diffusion,
    ) -> None:
        super().__init__(internal_batch_size)
        choices = {"baseline": (baseline, (*BASELINES, "diffusion")), "unit": (unit, UNITS),
                   "integration": (integration, tuple(SUPPORTED_METHODS)), "output": (output, OUTPUTS)}  # fmt: skip
        for what, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        if n_steps < 1 or max_tokens < 1:
            raise ValueError(f"n_steps and max_tokens must be ≥ 1, got {n_steps} and {max_tokens}")
        self.diffusion = diffusion_for(baseline, seed, diffusion)
        self.baseline, self.unit, self.n_steps, self.integration = baseline, unit, n_steps, integration
        self.output, self.normalize, self.max_tokens = output, normalize, max_tokens
        extras = ("" if output == "logit" else f" {output}") + (" l2" if normalize else "")
        pool = f" {self.diffusion.variant}" if self.diffusion else ""
        self.variant = f"{unit} {baseline}-{n_steps}{extras}{pool}"

    def reference_scores(self, enc: Encoded, model, target: Tensor, ref: Tensor) -> Tensor:
        """Scores [batch, tokens] against the reference embeddings ``ref`` [batch, tokens, hidden]."""
        s = sig_scores(enc, model, target, ref, units_of(enc, self.unit), self.n_steps, self.integration,
                       self.output, self.max_tokens)  # fmt: skip
        return s / s.norm(dim=1, keepdim=True).clamp_min(1e-12) if self.normalize else s

    def scores(self, enc: Encoded, model, target: Tensor, probs: Tensor) -> Tensor:
        ref = reference_embeddings(enc, model, "mask" if self.diffusion else self.baseline)
        if self.diffusion is None:
            return self.reference_scores(enc, model, target, ref)
        return self.diffusion.scores(enc, model, target, probs, ref, self.reference_scores)
