"""MaRC as an attribution method: per-instance word masks optimized against the explained model (seed 004).

Scores are the optimized λ ∈ [0, 1] of each token's word (Eq. 6); the uninformative input b is the [PAD]
embedding (``baseline="pad"``, the paper's; ``"mask"`` uses the explained model's mask embedding — the only
choice when the tokenizer has no pad token). Specials and prompt tokens keep λ = 1. Inputs whose text has more
than ``segment_tokens`` tokens are explained in segments of at most that many text tokens (specials and prompt
repeated around each), consecutive segments overlapping by ``segment_overlap`` tokens, each with its own mask;
the masks are blended linearly across each overlap (paper App. A.1: 510 / 100 for BERT). ``ExplainedModel``
already truncates texts to the model's length, so segmenting here only bounds the optimized length.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from amlx.attributors import inner
from amlx.attributors.marc import MaRC, MaRCModule, MaRCResult, word_positions
from amlx.methods.base import AttributionMethod, Target, register_method, resolve_targets
from amlx.methods.integrated_gradients import reference_embeddings
from amlx.models.explained import Encoded


def segment_bounds(n: int, size: int | None, overlap: int) -> list[tuple[int, int]]:
    """[start, end) ranges of ≤ ``size`` items covering 0..n, consecutive ranges sharing ``overlap`` items."""
    if size is None or n <= size:
        return [(0, n)]
    bounds, start = [], 0
    while True:
        end = min(start + size, n)
        bounds.append((start, end))
        if end == n:
            return bounds
        start = end - overlap


def blend_weights(bounds: list[tuple[int, int]]) -> list[Tensor]:
    """Weight of each range on its own items ([end − start] each); weights sum to 1 on every item.

    In an overlap of o items the later range's weight rises linearly (1, 2, …, o)/(o + 1) and the earlier
    range's falls as its complement.
    """
    out = [torch.ones(e - s, dtype=torch.float64) for s, e in bounds]
    for k in range(1, len(bounds)):
        o = bounds[k - 1][1] - bounds[k][0]
        ramp = torch.arange(1, o + 1, dtype=torch.float64) / (o + 1)
        out[k][:o] = ramp
        out[k - 1][len(out[k - 1]) - o :] *= 1 - ramp
    return out


def instance_seed(seed: int, text: str, segment: int) -> int:
    """A 63-bit seed from (seed, text, segment): the same instance draws the same noise in any batch."""
    digest = hashlib.sha256(f"{seed}\x00{segment}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@register_method("marc")
class MaRCMethod(AttributionMethod):
    """MaRC (Brinner & Zarrieß 2023): minimize Eq. 8 per instance over Gaussian-kernel word masks; scores = λ.

    ``options`` are ``amlx.attributors.marc.MaRC`` settings (``steps``, ``lr``, ``alpha_lambda``, ``alpha_sigma``,
    ``kernel``, ``scoring``, ``complement``, ``noise_std``, ``flip_prob``, ``patience``, …); those that differ
    from the paper defaults appear in the variant. Every instance draws its noise from its own generator seeded
    by (``seed``, text, segment), so results do not depend on the batch. Cost: up to ``steps`` forward and
    backward passes of 2 × batch rows (x̃ and x̃^c) per internal batch.
    """

    sort_by_length = True  # an instance's mask does not depend on its batch (see amlx/attributors/marc.py)
    show_progress = True
    options_to = MaRC

    def __init__(
        self,
        seed: int = 0,
        baseline: str = "pad",
        segment_tokens: int | None = None,
        segment_overlap: int = 100,
        internal_batch_size: int = 16,
        **options,
    ) -> None:
        super().__init__(internal_batch_size)
        self.optim = MaRC(**options)
        if baseline not in ("pad", "mask"):
            raise ValueError(f"MaRC baseline must be 'pad' (the paper's) or 'mask', got {baseline!r}")
        if segment_tokens is not None and not 0 <= segment_overlap < segment_tokens:
            raise ValueError(
                f"need 0 ≤ segment_overlap < segment_tokens, got {segment_overlap}, {segment_tokens}"
            )
        self.seed, self.baseline = seed, baseline
        self.segment_tokens, self.segment_overlap = segment_tokens, segment_overlap
        changed = self.optim.changed()
        if baseline != "pad":
            changed["baseline"] = baseline
        if segment_tokens is not None:
            changed["segments"] = f"{segment_tokens}/{segment_overlap}"
        if self.optim.lr_scheduler is not None:
            changed["lr_scheduler"] = inner.schedule_label(self.optim.lr_scheduler)
        self.variant = ",".join(f"{k}={v}" for k, v in changed.items())
        self.last_fit: MaRCResult | None = None  # the last internal batch's optimization, a row per segment

    def reseed(self, seed: int) -> None:
        self.seed = seed  # each instance's noise generator is seeded from it

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        seg, origin, args = self._prepare(enc, model, target)
        with torch.enable_grad():
            fit = self.optim.fit(model, *args)
        self.last_fit = fit
        out = torch.zeros(enc.input_ids.shape, dtype=torch.float64)
        lam = fit.token_mask.detach().double().cpu()
        for r, (b, _, start, prefix, weight) in enumerate(origin):
            out[b, start : start + len(weight)] += weight * lam[r, prefix : prefix + len(weight)]
        return out

    def module(self, inputs: str | list[str] | Encoded, model, target: Target = None) -> MaRCModule:
        """The LightningModule of the masks of ``inputs`` (one row per segment), for a Trainer of your own.

        ``target``: as in ``attribute`` (None: the predicted classes). Fit it with ``lightning.Trainer(max_epochs=steps,
        ...).fit(module)`` on the explained model's device (an epoch is one step); ``module.result().token_mask`` [rows, tokens] is λ on
        the tokens of ``model.encode(inputs)`` (of each segment's row when ``segment_tokens`` splits a text).
        """
        enc = (inputs if isinstance(inputs, Encoded) else model.encode(inputs)).to(model.device)
        targets = resolve_targets(target, len(enc), model)
        if targets is None:
            with torch.no_grad():
                targets = model.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask).argmax(-1)
        _, _, args = self._prepare(enc, model, targets.to(model.device))
        return self.optim.module(model, *args)

    def _prepare(self, enc: Encoded, model, target: Tensor) -> tuple[Encoded, list, tuple]:
        """The segment rows, their origins and the arguments of ``MaRC.fit`` after ``model``."""
        seg, origin = self._segments(enc)
        baseline = reference_embeddings(seg, model, self.baseline)  # b where masked, x elsewhere (λ = 1)
        x = model.embed(seg.input_ids).detach()
        positions, n_words = word_positions(seg.word_ids.cpu(), seg.attributable.cpu())
        gens = [torch.Generator().manual_seed(instance_seed(self.seed, seg.texts[r], k)) for r, (_, k, _, _, _) in
                enumerate(origin)]  # fmt: skip
        seg_target = target[[b for b, *_ in origin]]
        types = model.token_type_ids(seg.input_ids, seg.attention_mask)
        return seg, origin, (x, baseline, seg.attention_mask, positions.to(x.device), n_words, seg_target, gens, types)

    def _segments(self, enc: Encoded) -> tuple[Encoded, list[tuple[int, int, int, int, Tensor]]]:
        """One row per segment (prefix + text tokens [s, e) + suffix) and, per row, (example, segment index,
        first text token in the example, prefix length, blend weights [e − s])."""
        rows, origin = [], []
        for b in range(len(enc)):
            length = int(enc.attention_mask[b].sum())
            attr = enc.attributable[b, :length].nonzero()[:, 0].tolist()
            first, last = (attr[0], attr[-1] + 1) if attr else (length, length)
            bounds = segment_bounds(last - first, self.segment_tokens, self.segment_overlap)
            for k, ((s, e), weight) in enumerate(zip(bounds, blend_weights(bounds))):
                idx = list(range(first)) + list(range(first + s, first + e)) + list(range(last, length))
                rows.append((b, idx))
                origin.append((b, k, first + s, first, weight))
        t = max(len(idx) for _, idx in rows)

        def gather(field: Tensor, fill: int) -> Tensor:
            out = torch.full((len(rows), t, *field.shape[2:]), fill, dtype=field.dtype, device=field.device)
            for r, (b, idx) in enumerate(rows):
                out[r, : len(idx)] = field[b, idx]
            return out

        seg = Encoded(
            input_ids=gather(enc.input_ids, 0),  # padding: any id, the attention mask hides it
            attention_mask=gather(enc.attention_mask, 0),
            attributable=gather(enc.attributable, 0),
            offsets=gather(enc.offsets, 0),
            word_ids=gather(enc.word_ids, -1),
            texts=[enc.texts[b] for b, _ in rows],
            truncated=[enc.truncated[b] for b, _ in rows],
            segments=None if enc.segments is None else [enc.segments[b] for b, _ in rows],
        )
        return seg, origin
