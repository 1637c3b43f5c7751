"""Reference-based gradient methods on input embeddings, wrapping captum: Integrated Gradients, GradientSHAP, DeepLift.

All three compare the input embeddings x with a reference x' that replaces every attributable token by the mask
(default) or pad embedding (IG also: RPI's diffusion draws around the mask, ``baseline="diffusion"``) while
specials and the prompt keep their real embeddings, explain the target *logit*,
and sum the per-dimension attributions over the hidden dimension to get one score per token.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from captum.attr import DeepLift, GradientShap, IntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import Tensor, nn

from amlx.methods.base import AttributionMethod, register_method
from amlx.methods.diffusion import ReseedsDiffusion, diffusion_for
from amlx.methods.saliency import embedding_gradients
from amlx.models.explained import Encoded

BASELINES = ("mask", "pad")


class LogitsFromEmbeds(nn.Module):
    """captum's forward function: (inputs_embeds [rows, tokens, hidden], attention_mask and token_type_ids
    [rows, tokens]) → logits."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.model.logits(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, token_type_ids=token_type_ids
        )


def reference_embeddings(enc: Encoded, model, baseline: str = "mask") -> Tensor:
    """x' [batch, tokens, hidden]: the mask (or pad) embedding on attributable tokens, the real embedding elsewhere."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    x = model.embed(enc.input_ids).detach()
    if baseline == "mask":
        ref = model.mask_embedding().detach()
    else:
        pad = model.tokenizer.pad_token_id
        if pad is None:
            raise ValueError(
                f"{model.name or 'this model'}'s tokenizer has no pad token; use baseline='mask'"
            )
        ref = model.embedding_layer.weight[pad].detach()
    return torch.where(enc.attributable[..., None], ref.to(x.dtype), x)


class ReferenceMethod(AttributionMethod):
    """Shared part: a reference choice (``baseline``) and scores = Σ_h attributions of the embeddings."""

    def __init__(self, baseline: str = "mask", internal_batch_size: int = 16) -> None:
        super().__init__(internal_batch_size)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        self.baseline = baseline

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        return self.reference_scores(enc, model, target, reference_embeddings(enc, model, self.baseline))

    def reference_scores(self, enc: Encoded, model, target: Tensor, ref: Tensor) -> Tensor:
        """Scores [batch, tokens] against the reference embeddings ``ref`` [batch, tokens, hidden]."""
        x = model.embed(enc.input_ids).detach().requires_grad_(True)
        args = (enc.attention_mask, model.token_type_ids(enc.input_ids, enc.attention_mask))
        with torch.enable_grad():
            attr = self.embedding_attributions(LogitsFromEmbeds(model), x, ref, args, target)
        return attr.detach().sum(-1)

    def embedding_attributions(
        self, forward: nn.Module, x: Tensor, ref: Tensor, args: tuple[Tensor, Tensor], target: Tensor
    ) -> Tensor:
        """Attributions [batch, tokens, hidden] of the target logit to the embeddings ``x`` against ``ref``.

        ``args``: ``forward``'s further inputs, the attention mask and token type ids [batch, tokens].
        """
        raise NotImplementedError


@register_method("integrated_gradients")
class IntegratedGradientsMethod(ReseedsDiffusion, ReferenceMethod):
    """IG (Sundararajan et al., 2017, Eq. 1) along the straight path x' → x, via ``captum.attr.IntegratedGradients``.

    ``n_steps`` points (default 50) by ``integration`` = ``gausslegendre`` (captum's default) or ``riemann_*``.
    ``internal_batch_size`` is rows (steps × examples) per forward/backward pass, as in captum; a batch of
    examples is also at most that many examples. Cost: n_steps forward + backward rows per example.

    ``baseline="diffusion"`` is RPI-IG (seed 001 Table 6): R references drawn around the mask reference by RPI's
    diffusion process (§3.2.1), one IG map each, one kept by ``selection`` (options of
    ``amlx.methods.diffusion.DiffusionBaselines``: ``n_baselines``, ``timestep``, ``selection``, ``metric``, ...;
    ``seed``). Cost: R·n_steps rows per example, plus the selection metric's evaluation.
    """

    takes_probs = True  # the oracle selection of baseline="diffusion" scores candidates against F(x)

    def __init__(
        self,
        baseline: str = "mask",
        n_steps: int = 50,
        integration: str = "gausslegendre",
        internal_batch_size: int = 50,
        seed: int = 0,
        **diffusion,
    ) -> None:
        self.diffusion = diffusion_for(baseline, seed, diffusion)
        super().__init__("mask" if self.diffusion else baseline, internal_batch_size)
        self.n_steps = n_steps
        self.integration = integration
        self.variant = f"{baseline}-{n_steps}" + (f" {self.diffusion.variant}" if self.diffusion else "")

    def scores(self, enc: Encoded, model, target: Tensor, probs: Tensor) -> Tensor:
        if self.diffusion is None:
            return super().scores(enc, model, target)
        ref = reference_embeddings(enc, model, "mask")
        return self.diffusion.scores(enc, model, target, probs, ref, self.reference_scores, self.internal_batch_size)

    def embedding_attributions(self, forward, x, ref, args, target):
        return IntegratedGradients(forward).attribute(
            x,
            baselines=ref,
            target=target,
            additional_forward_args=args,
            n_steps=self.n_steps,
            method=self.integration,
            internal_batch_size=max(self.internal_batch_size, len(x)),
        )

    def scores_from_embeds(self, embeds: Tensor, enc: Encoded, model, target: Tensor) -> Tensor:
        """Σ_h (x − x')·Σ_k w_k ∇F(x' + α_k(x − x')) at x = ``embeds``, on captum's points and weights, in torch.

        The same quadrature as ``scores`` (which runs captum), written out so that it stays differentiable in x:
        the gradients keep their graph when ``embeds`` requires grad. The reference x' is that of the real tokens.
        """
        if self.diffusion is not None:
            raise NotImplementedError(
                "the explanation attack differentiates IG with one fixed reference; baseline='diffusion' draws R of "
                "them and selects one map: attack integrated_gradients with baseline mask or pad"
            )
        ref = reference_embeddings(enc, model, self.baseline)  # [batch, tokens, hidden]
        types = model.token_type_ids(enc.input_ids, enc.attention_mask)
        step_sizes, alphas = approximation_parameters(self.integration)
        weights, points = step_sizes(self.n_steps), alphas(self.n_steps)
        b = len(embeds)
        per_pass = max(1, self.internal_batch_size // b)  # path points per forward/backward pass (rows = points·b)
        total = torch.zeros_like(embeds)
        for start in range(0, self.n_steps, per_pass):
            a = torch.tensor(points[start : start + per_pass], dtype=embeds.dtype, device=embeds.device)
            w = torch.tensor(weights[start : start + per_pass], dtype=embeds.dtype, device=embeds.device)
            path = ref + a[:, None, None, None] * (embeds - ref)  # [points, batch, tokens, hidden]
            n = len(a)
            grad = embedding_gradients(
                path.flatten(0, 1), enc.attention_mask.repeat(n, 1), model, target.repeat(n),
                token_type_ids=types.repeat(n, 1),
            ).unflatten(0, (n, b))  # fmt: skip
            total = total + (w[:, None, None, None] * grad).sum(0)
        return ((embeds - ref) * total).sum(-1)


@register_method("gradient_shap")
class GradientShapMethod(ReferenceMethod):
    """GradientSHAP (Lundberg & Lee, 2017) via ``captum.attr.GradientShap``: E[∇F(x' + α(x+ε − x')) · (x+ε − x')].

    Expectation over ``n_samples`` (default 20) draws of α ~ U(0, 1) and Gaussian noise ε with ``stdevs``
    (default 0: no noise) around the single reference x'. Sampling is seeded by ``seed`` at every batch.
    Cost: n_samples forward + backward rows per example (one pass per example, since each has its own x').
    """

    def __init__(
        self,
        baseline: str = "mask",
        n_samples: int = 20,
        stdevs: float = 0.0,
        seed: int = 0,
        internal_batch_size: int = 16,
    ) -> None:
        super().__init__(baseline, internal_batch_size)
        self.n_samples, self.stdevs, self.seed = n_samples, stdevs, seed
        self.variant = f"{baseline}-{n_samples}"

    def reseed(self, seed: int) -> None:
        self.seed = seed  # drawn from at every batch

    def embedding_attributions(self, forward, x, ref, args, target):
        explainer = GradientShap(forward)
        np_state = np.random.get_state()  # captum draws baseline indices with numpy's global generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            np.random.seed(self.seed)
            try:
                rows = [
                    explainer.attribute(
                        x[b : b + 1],
                        baselines=ref[b : b + 1],
                        target=target[b : b + 1],
                        additional_forward_args=tuple(a[b : b + 1] for a in args),
                        n_samples=self.n_samples,
                        stdevs=self.stdevs,
                    )  # fmt: skip
                    for b in range(len(x))
                ]
            finally:
                np.random.set_state(np_state)
        return torch.cat(rows)


@register_method("deeplift")
class DeepLiftMethod(ReferenceMethod):
    """DeepLIFT (Shrikumar et al., 2017, Rescale rule) via ``captum.attr.DeepLift`` where captum supports the model.

    captum applies the Rescale rule to the non-linear ``nn`` modules it knows and plain gradients elsewhere (e.g.
    the attention softmax, which transformers compute functionally); a model it cannot hook raises
    ``NotImplementedError``. Cost: one forward + backward pass of 2 × batch rows (inputs and references).
    """

    def __init__(self, baseline: str = "mask", internal_batch_size: int = 16) -> None:
        super().__init__(baseline, internal_batch_size)
        self.variant = baseline

    def embedding_attributions(self, forward, x, ref, args, target):
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Setting forward, backward hooks"
                )  # captum's notice
                return DeepLift(forward).attribute(
                    x, baselines=ref, target=target, additional_forward_args=args
                )
        except (RuntimeError, AssertionError, TypeError, ValueError, AttributeError) as e:
            name = forward.model.name or type(forward.model.hf).__name__
            raise NotImplementedError(
                f"captum's DeepLift does not support the explained model {name} ({type(e).__name__}: {e}); use "
                "integrated_gradients or gradient_shap, which need only gradients"
            ) from e
