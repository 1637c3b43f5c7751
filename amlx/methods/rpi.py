"""RPI — Randomized Path-Integration over attention probabilities (Barkan et al., seed 001 §3.2).

For a layer l with attention probabilities A^l [heads, k, k], R baselines b^{lr} are drawn from a Gaussian diffusion
process (§3.2.1): t ~ U{1..T}, b = √ᾱ_t·A^l + s_t·ε, ε ~ N(0, I), with s_t = √(1 − ᾱ_t) (paper, ``noise_scale="sqrt"``)
or 1 − ᾱ_t (seed code, ``"linear"``), ᾱ_t = Π_{s≤t}(1 − β_s). Along each path (Eq. 3) the layer's probabilities are
replaced by v_j = b + α_j(A − b), α_j = j/n, j = 1..n, and each candidate map is (Eq. 4)

    m^{lr} = φ((A − b)/n ∘ Σ_j ∂F_y/∂v_j ∘ v_j)

with φ = mean over heads, then the row of the position the prediction is read at (first token for encoders, last
real token for decoders and prompted LMs). ``difference_factor=False`` drops (A − b)/n (seed code). The pool over
the layers J and the R baselines is reduced to one map (Eq. 5) by ``selection``: ``metric`` — the candidate with the
best value of ``metric`` on that very example (the paper's protocol, an oracle: variant ``oracle-selected:<metric>``;
scored with ``amlx.evaluation.Evaluator`` like fAML's oracle) — or ``mean``, the mean candidate map, a proxy that
never sees the evaluation perturbations (variant ``proxy:mean``).

Implementation: the probabilities are read and replaced through ``amlx.models.attention_patch`` (transformers'
``AttentionInterface``; no modeling-file copies). All R·n interpolants of an example go through the model as rows of
``internal_batch_size``-row passes, one backward per pass; the blocks below l are not re-run (their output is
computed once per example and reused). The baselines and the integration of a batch are a LightningModule
(``RPIModule``, one group per ``predict_step``). The interpolant is computed as A + (1 − α)(b − A), equal to Eq. 3 up to
rounding and exactly A at α = 1. The baseline is sampled only where the model may attend (``baseline_support=
"allowed"``: never on padding, and causal for decoders) or everywhere but padding (``"full"``, the paper's
unrestricted h×k×k tensor). Cost: 1 + |J|·R·n forward rows (from layer l up) and backward rows per example, plus the
selection metric's evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor, nn

from amlx.attributors.aml import _Frozen
from amlx.attributors.inner import Batches
from amlx.methods.attention import prediction_rows
from amlx.methods.base import OUTPUTS, AttributionMethod, class_outputs, register_method
from amlx.methods.diffusion import NOISE_SCALES, alpha_bar, sample_baselines
from amlx.methods.selection import select_maps, selection_label, selection_metric
from amlx.models.attention_patch import (
    AttentionReplacementError,
    block_of,
    record_block_outputs,
    skip_blocks,
    swap_attention,
)
from amlx.models.explained import Encoded

SUPPORTS = ("allowed", "full")


@dataclass
class Capture:
    """One plain forward pass of a batch with the attention of the layers of interest recorded."""

    probs: dict[int, Tensor]  # layer → A^l [batch, heads, k, k] (float32)
    allowed: dict[int, Tensor]  # layer → bool [batch, heads, k, k]: where the model may attend
    modules: list[nn.Module]  # attention modules by layer
    prefix: dict[int, tuple[list[nn.Module], Tensor] | None]  # layer → (blocks below it, their output) to reuse
    logits: Tensor  # [batch, classes]


def resolve_layers(model, layers: Sequence[int]) -> list[int]:
    """Layer indices (negative count from the last) → sorted distinct indices in 0..L−1."""
    n = model.hf.config.num_hidden_layers
    out = []
    for layer in layers:
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is outside the explained model's {n} layers (use 0..{n - 1} or -1..-{n})")
        out.append(layer % n)
    return sorted(set(out))


def capture(model, enc: Encoded, layers: Sequence[int], reuse_prefix: bool = True) -> Capture:
    """Attention of ``layers`` (resolved indices) and, with ``reuse_prefix``, the hidden states entering each of them."""
    hf = model.hf
    blocks = [b for m in hf.modules() if isinstance(m, nn.ModuleList) for b in m] if reuse_prefix else []
    with torch.no_grad(), record_block_outputs(blocks) as outputs, swap_attention(hf, record=set(layers)) as s:
        logits = model.logits(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    s.check_layers(hf)
    if len(s.modules) != hf.config.num_hidden_layers:
        raise AttentionReplacementError(
            f"{type(hf).__name__} ran {len(s.modules)} attention layers, its config says "
            f"{hf.config.num_hidden_layers}; amlx cannot tell which layer is which"
        )
    prefix = {}
    for layer in layers:
        prefix[layer] = None
        where = block_of(hf, s.modules[layer]) if reuse_prefix else None
        if where is not None and where[1] > 0:
            container, i = where
            out = outputs.get(container[i - 1])
            if isinstance(out, Tensor) and out.shape[0] == len(enc):
                prefix[layer] = (list(container[:i]), out)
    shape = {layer: s.probs[layer].shape for layer in layers}
    return Capture(
        probs={layer: s.probs[layer].float() for layer in layers},
        allowed={layer: s.allowed[layer].expand(shape[layer]) for layer in layers},
        modules=list(s.modules),
        prefix=prefix,
        logits=logits,
    )


def path_integral(
    model,
    enc: Encoded,
    target: Tensor,
    cap: Capture,
    layer: int,
    baselines: Tensor,
    n_steps: int,
    output: str = "prob",
    difference_factor: bool = True,
    rows_per_pass: int = 120,
) -> Tensor:
    """Candidate maps m^{lr} (Eq. 4) of ``layer`` for the baselines [B, R, h, k, k]: [B, R, k].

    Rows (example, baseline, step) go through the model ``rows_per_pass`` at a time; blocks below ``layer`` are
    replaced by their captured output when ``cap.prefix`` has it.
    """
    a = cap.probs[layer]  # [B, h, k, k]
    n_ex, n_base, heads, k = baselines.shape[:4]
    rows_total = n_ex * n_base * n_steps
    rho = prediction_rows(enc, model.kind)  # [B]
    g = torch.zeros(n_ex * n_base, heads, k, device=a.device)  # Σ_j ∂F_y/∂v_j ∘ v_j, prediction row only
    flat = baselines.reshape(n_ex * n_base, heads, k, k)
    prefix = cap.prefix.get(layer)
    for start in range(0, rows_total, rows_per_pass):
        idx = torch.arange(start, min(start + rows_per_pass, rows_total), device=a.device)
        ex, path, step = idx // (n_base * n_steps), idx // n_steps, idx % n_steps
        keep = (1 - (step + 1) / n_steps).to(a.dtype)[:, None, None, None]  # 1 − α_j
        v = (a[ex] + keep * (flat[path] - a[ex])).requires_grad_(True)  # Eq. 3, exactly A at α = 1
        skip = skip_blocks(prefix[0], prefix[1][ex]) if prefix else contextlib.nullcontext()
        with torch.enable_grad(), skip, swap_attention(model.hf, replace={cap.modules[layer]: lambda p, _, v=v: v}) as s:
            logits = model.logits(input_ids=enc.input_ids[ex], attention_mask=enc.attention_mask[ex])
            s.check_layers(model.hf)
            out = class_outputs(logits, output)[torch.arange(len(idx), device=a.device), target[ex]]
            (grad,) = torch.autograd.grad(out.sum(), v)
        rows = torch.arange(len(idx), device=a.device)
        g.index_add_(0, path, (grad * v.detach())[rows, :, rho[ex], :])
    g = g.view(n_ex, n_base, heads, k)
    if difference_factor:
        b_ex = torch.arange(n_ex, device=a.device)
        diff = (a[:, None] - baselines)[b_ex, :, :, rho, :]  # [B, R, h, k]: (A − b) on the prediction row
        g = diff / n_steps * g
    return g.mean(2)


@register_method("rpi")
class RPI(AttributionMethod):
    """Randomized Path-Integration (module docstring): ``n_baselines`` R × ``n_steps`` n interpolants per layer in J.

    Options: ``layers`` J (default [-1], the last layer; the seed code used [-3]), ``timesteps`` T, ``schedule``
    (linear | cosine), ``beta_start`` / ``beta_end``, ``noise_scale`` (sqrt | linear), ``difference_factor``,
    ``baseline_support`` (allowed | full), ``output`` F_y (prob, the paper's class probability | log_prob | logit),
    ``selection`` (metric | mean) with ``metric`` (default comp), ``seed`` (the baseline draws; one stream per
    instance), ``reuse_prefix`` (skip the blocks below l; results are the same either way) and
    ``internal_batch_size`` = interpolant rows per forward/backward pass (examples are grouped so that a group's
    R·n rows fill about one pass).
    """

    show_progress = True  # R·n interpolants per example: minutes on a CPU for a few hundred examples

    def __init__(
        self,
        n_baselines: int = 24,
        n_steps: int = 30,
        layers: Sequence[int] = (-1,),
        timesteps: int = 500,
        schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        noise_scale: str = "sqrt",
        difference_factor: bool = True,
        baseline_support: str = "allowed",
        output: str = "prob",
        selection: str = "metric",
        metric: str = "comp",
        seed: int = 0,
        reuse_prefix: bool = True,
        internal_batch_size: int = 120,
    ) -> None:
        super().__init__(internal_batch_size)
        if n_baselines < 1 or n_steps < 1:
            raise ValueError(f"n_baselines and n_steps must be ≥ 1, got {n_baselines} and {n_steps}")
        if not layers:
            raise ValueError("layers must name at least one layer, e.g. [-1] for the last")
        choices = {"noise_scale": (noise_scale, NOISE_SCALES), "baseline_support": (baseline_support, SUPPORTS),
                   "output": (output, OUTPUTS)}  # fmt: skip
        for what, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        self.alpha_bars = alpha_bar(timesteps, schedule, beta_start, beta_end)
        self.n_baselines, self.n_steps, self.layers = n_baselines, n_steps, list(layers)
        self.noise_scale, self.difference_factor, self.baseline_support = noise_scale, difference_factor, baseline_support
        self.output, self.selection, self.reuse_prefix = output, selection, reuse_prefix
        self.metric = selection_metric(selection, metric)
        self.reseed(seed)
        chosen = selection_label(selection, metric)
        where = "" if self.layers == [-1] else " L" + ",".join(map(str, self.layers))
        seed_code = (" noise:linear" if noise_scale == "linear" else "") + ("" if difference_factor else " no-(A-b)/n")
        self.variant = f"{chosen} R{n_baselines}n{n_steps}{where}{seed_code}"

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def candidate_maps(self, enc: Encoded, model, target: Tensor) -> tuple[Tensor, Tensor]:
        """The pool M^J: maps [B, |J|·R, tokens] (layer-major) and the class probabilities F(x) [B, classes]."""
        module = self.module(enc, model, target)
        out = [module.predict_step(group, i) for i, group in enumerate(module.groups)]
        return torch.cat([m for m, _ in out]), torch.cat([logits for _, logits in out]).float().softmax(-1)

    def module(self, enc: Encoded, model, target: Tensor) -> RPIModule:
        """The LightningModule that draws the baselines of ``enc`` and integrates along their paths (``RPIModule``)."""
        return RPIModule(self, model, enc, target)

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        maps, probs = self.candidate_maps(enc, model, target)
        return select_maps(model, enc, maps, target, probs, self.selection, self.metric)


class RPIModule(L.LightningModule):
    """RPI's sampled diffusion baselines and path integrals (Eqs. 3–4) for a batch, one group per ``predict_step``.

    ``groups``: (start, stop) rows of ``enc``, sized so that a group's R·n interpolants fill about one pass;
    ``predict_step`` draws the group's baselines from the method's generator and returns its candidate maps [rows,
    |J|·R, tokens] and F's logits [rows, classes]. There is nothing to optimize, hence no ``training_step``: the
    method calls ``predict_step`` on each group itself, in order (the generator is consumed in that order), because
    a Trainer would manage nothing here — the explained model already sits on its device, a precision plugin would
    change the very attention probabilities being integrated, and each ``Trainer.predict`` costs start-up time.
    ``lightning.Trainer(inference_mode=False).predict(module)`` runs the same steps on ``predict_dataloader`` and
    gives the same maps (tested); ``inference_mode=False`` because Eq. 4 needs gradients. The explained model is
    held outside the module tree.
    """

    def __init__(self, rpi: RPI, model, enc: Encoded, target: Tensor) -> None:
        super().__init__()
        object.__setattr__(self, "_frozen", _Frozen())
        self._frozen.model = model
        self.rpi, self.enc, self.target = rpi, enc, target
        self.layers = resolve_layers(model, rpi.layers)
        per_group = max(1, rpi.internal_batch_size // (rpi.n_baselines * rpi.n_steps))
        self.groups = [(s, min(s + per_group, len(enc))) for s in range(0, len(enc), per_group)]

    def predict_dataloader(self) -> Batches:
        return Batches(self.groups)

    def predict_step(self, batch: tuple[int, int], batch_idx: int = 0) -> tuple[Tensor, Tensor]:
        """Candidate maps [rows, |J|·R, tokens] (padded to the batch's tokens) and logits of the rows [start, stop)."""
        rpi, model = self.rpi, self._frozen.model
        start, stop = batch
        group = self.enc.select(slice(start, stop))
        cap = capture(model, group, self.layers, rpi.reuse_prefix)
        tgt = self.target[start:stop]
        pool = []
        for layer in self.layers:
            allowed = cap.allowed[layer]
            if rpi.baseline_support == "full":  # everything but padded keys (rows of padding are never read)
                allowed = group.attention_mask.bool()[:, None, None, :].expand_as(allowed)
            base = sample_baselines(cap.probs[layer], allowed, rpi.n_baselines, rpi.alpha_bars, rpi.noise_scale,
                                    rpi.generator)  # fmt: skip
            pool.append(path_integral(model, group, tgt, cap, layer, base, rpi.n_steps, rpi.output,
                                      rpi.difference_factor, rpi.internal_batch_size))  # fmt: skip
        m = torch.cat(pool, 1)
        return nn.functional.pad(m, (0, self.enc.input_ids.shape[1] - m.shape[-1])), cap.logits
