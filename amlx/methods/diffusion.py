"""Gaussian-diffusion baselines (RPI, seed 001 §3.2.1): the schedule, the draws, and the RPI-IG / RPI-SIG pool.

A baseline is drawn as t ~ U{1..T}, b = √ᾱ_t·a + s_t·ε, ε ~ N(0, I), around a centre a (RPI: a layer's attention
probabilities; RPI-IG / RPI-SIG, seed 001 Table 6: the mask-token reference embeddings), with s_t = √(1 − ᾱ_t)
(the paper) or 1 − ᾱ_t (seed code) and ᾱ_t = Π_{s≤t}(1 − β_s). ``timestep`` fixes t instead (t = 0 is the clean
end, ᾱ_0 = 1: b = a exactly).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from amlx.methods.selection import select_maps, selection_label, selection_metric
from amlx.models.explained import Encoded

SCHEDULES = ("linear", "cosine")
NOISE_SCALES = ("sqrt", "linear")


def alpha_bar(timesteps: int = 500, schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """ᾱ_t = Π_{s≤t}(1 − β_s) for t = 1..T: [T] float64 (index t − 1).

    ``linear``: β_t linear from ``beta_start`` to ``beta_end`` (Ho et al., 2020; the paper's schedule). ``cosine``:
    ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + 0.008)/1.008 · π/2), β_t clipped at 0.999 (Nichol & Dhariwal, 2021).
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be ≥ 1, got {timesteps}")
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    elif schedule == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return torch.cumprod(1 - betas, 0)


def sample_baselines(
    center: Tensor,
    allowed: Tensor,
    n_baselines: int,
    alpha_bars: Tensor,
    noise_scale: str = "sqrt",
    generator: torch.Generator | None = None,
    timestep: int | None = None,
) -> Tensor:
    """R diffusion baselines per example (§3.2.1): centre [B, *S] → [B, R, *S], zero where not ``allowed`` [B, *S].

    t ~ U{1..T} per baseline (or t = ``timestep``, 0..T); b = √ᾱ_t·a + s_t·ε with s_t = √(1 − ᾱ_t) (``sqrt``) or
    1 − ᾱ_t (``linear``). Draws (t, then ε) come from ``generator`` on the CPU, so a seed gives the same baselines
    on any device.
    """
    if noise_scale not in NOISE_SCALES:
        raise ValueError(f"noise_scale must be one of {NOISE_SCALES}, got {noise_scale!r}")
    b, r, shape = center.shape[0], n_baselines, center.shape[1:]
    t = torch.randint(0, len(alpha_bars), (b, r), generator=generator)
    eps = torch.randn((b, r, *shape), generator=generator, dtype=torch.float32)
    ab = alpha_bars[t].float()
    if timestep is not None:
        ab = torch.full((b, r), 1.0 if timestep == 0 else float(alpha_bars[timestep - 1]))
    ab = ab.view(b, r, *([1] * len(shape))).to(center.device)
    scale = (1 - ab).sqrt() if noise_scale == "sqrt" else 1 - ab
    base = ab.sqrt() * center[:, None].float() + scale * eps.to(center.device)
    return base * allowed[:, None]


class DiffusionBaselines:
    """RPI's baseline resampling for an embedding-path method (RPI-IG, RPI-SIG; seed 001 Table 6): R maps, one.

    ``n_baselines`` R references per example, each drawn around the mask-token reference x' on the attributable
    tokens only (specials and the prompt keep their real embeddings); ``timesteps`` T, ``schedule``,
    ``beta_start`` / ``beta_end``, ``noise_scale`` as in ``rpi``; ``timestep`` fixes t (0: the clean end, b = x');
    ``selection`` (metric | mean) with ``metric`` picks one map per example as ``rpi`` does; ``seed`` seeds one
    stream of draws per instance.
    """

    def __init__(
        self,
        n_baselines: int = 24,
        timesteps: int = 500,
        schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        noise_scale: str = "sqrt",
        timestep: int | None = None,
        selection: str = "metric",
        metric: str = "comp",
        seed: int = 0,
    ) -> None:
        if n_baselines < 1:
            raise ValueError(f"n_baselines must be ≥ 1, got {n_baselines}")
        if noise_scale not in NOISE_SCALES:
            raise ValueError(f"noise_scale must be one of {NOISE_SCALES}, got {noise_scale!r}")
        if timestep is not None and not 0 <= timestep <= timesteps:
            raise ValueError(f"timestep must be in 0..{timesteps} (0: the clean end) or None (t ~ U{{1..T}})")
        self.alpha_bars = alpha_bar(timesteps, schedule, beta_start, beta_end)
        self.n_baselines, self.noise_scale, self.timestep = n_baselines, noise_scale, timestep
        self.selection, self.metric = selection, selection_metric(selection, metric)
        self.reseed(seed)
        fixed = "" if timestep is None else f" t{timestep}"
        noise = " noise:linear" if noise_scale == "linear" else ""
        self.variant = f"{selection_label(selection, metric)} R{n_baselines}{fixed}{noise}"

    def reseed(self, seed: int) -> None:
        """Draw from now on what baselines constructed with ``seed`` would draw."""
        self.generator = torch.Generator().manual_seed(seed)

    def references(self, enc: Encoded, reference: Tensor) -> Tensor:
        """R references [B, R, tokens, hidden] around ``reference`` [B, tokens, hidden], equal to it off the text."""
        allowed = enc.attributable[..., None].expand_as(reference)
        base = sample_baselines(reference, allowed, self.n_baselines, self.alpha_bars, self.noise_scale,
                                self.generator, self.timestep)  # fmt: skip
        return torch.where(allowed[:, None], base.to(reference.dtype), reference[:, None])

    def scores(
        self,
        enc: Encoded,
        model,
        target: Tensor,
        probs: Tensor,
        reference: Tensor,
        attribute: Callable[[Encoded, object, Tensor, Tensor], Tensor],
        rows_per_call: int | None = None,
    ) -> Tensor:
        """One map [B, tokens] per example, selected from R maps ``attribute(enc, model, target, references)``.

        ``attribute`` maps a batch, targets [rows] and references [rows, tokens, hidden] to scores [rows, tokens];
        it gets the (example, baseline) pairs, example-major, ``rows_per_call`` at a time (default: all at once).
        """
        refs = self.references(enc, reference)  # [B, R, tokens, hidden]
        n, r, k = len(enc), self.n_baselines, enc.input_ids.shape[1]
        pairs = torch.arange(n * r)
        maps = []
        for chunk in pairs.split(rows_per_call or len(pairs)):
            ex, j = (chunk // r).tolist(), (chunk % r).tolist()
            sub = enc.select(ex)  # trimmed to the chunk's longest example
            m = attribute(sub, model, target[ex], refs[ex, j, : sub.input_ids.shape[1]])
            maps.append(nn.functional.pad(m, (0, k - m.shape[1])))
        maps = torch.cat(maps).view(n, r, k)
        return select_maps(model, enc, maps, target, probs, self.selection, self.metric)


class ReseedsDiffusion:
    """Mixin of the methods with an optional diffusion pool (RPI-IG, RPI-SIG): reseeding one reseeds its pool."""

    diffusion: DiffusionBaselines | None

    def reseed(self, seed: int) -> None:
        if self.diffusion is not None:
            self.diffusion.reseed(seed)


def diffusion_for(baseline: str, seed: int, options: dict) -> DiffusionBaselines | None:
    """RPI's baseline pool when ``baseline == "diffusion"`` (None otherwise, and then no pool option may be set)."""
    allowed = set(inspect.signature(DiffusionBaselines).parameters) - {"seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown options {unknown}; the diffusion baseline takes {sorted(allowed)} and seed")
    if baseline != "diffusion":
        if options:
            raise ValueError(f"{sorted(options)} apply only with baseline='diffusion', got baseline={baseline!r}")
        return None
    return DiffusionBaselines(seed=seed, **options)
