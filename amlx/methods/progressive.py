"""Progressive Inference (seed 000): attributions from a decoder's intermediate predictions.

A decoder's prediction read at position t sees only tokens ≤ t, so it stands for the model's prediction on the
input with everything after t removed (Eq. 4). SP-PI (Eq. 6) scores each unit (word, sentence or token) by how
much the prediction moves when the unit is read; MP-PI (Algorithm 1) reads every prefix of 2n randomly masked
inputs as a coalition and fits Kernel SHAP on them (Eq. 11), with input masks drawn from the distribution of
``pi_distribution``. Choices the paper leaves open (where a unit is read, f(∅), weights) are in docs/progressive.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from amlx.methods.base import AttributionMethod, register_method
from amlx.methods.pi_distribution import DEFAULT_MAX_N, mask_distribution
from amlx.models.explained import Encoded, last_positions
from amlx.words import token_word_ids

UNITS = ("word", "sentence", "token")
OUTPUTS = ("prob", "logit")
EMPTY = ("auto", "prefix", "masked")
# a sentence runs up to a run of . ! ? followed by white space, or to the end of the text
SENTENCE_RE = re.compile(r"\S.*?(?:[.!?]+(?=\s)|[.!?]+$|$)", re.S)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the sentences of ``text``, in order."""
    return [m.span() for m in SENTENCE_RE.finditer(text)]


@dataclass(frozen=True)
class UnitLayout:
    """Where the n units of one example sit. Positions index the example's tokens."""

    token_units: np.ndarray  # int [tokens]: unit (0..n−1) of each text token, −1 elsewhere (never masked)
    read: (
        np.ndarray
    )  # int [n]: where each unit is read: its last token (the final position for the last unit)
    before: int  # last position before the first unit (BOS, prompt), −1 when the text starts the input

    @property
    def n(self) -> int:
        return len(self.read)


def unit_layout(enc: Encoded, b: int, unit: str) -> UnitLayout:
    """The units of example ``b``: words (``Encoded.word_ids``), sentences or attributable tokens.

    Text tokens in no word or sentence (whitespace-only pieces) join the next unit (the previous one at the end).
    """
    attributable = enc.attributable[b].cpu().numpy()
    if unit == "word":
        raw = enc.word_ids[b].cpu().numpy()
    elif unit == "sentence":
        raw = token_word_ids(enc.offsets[b].cpu().numpy(), sentence_spans(enc.texts[b]), attributable)
    else:
        raw = np.where(attributable, np.cumsum(attributable) - 1, -1)
    ids = np.unique(raw[raw >= 0])
    if len(ids) == 0:
        raise ValueError(f"example {enc.texts[b][:40]!r} has no {unit} to attribute")
    raw = _attach_loose_tokens(raw, attributable)
    token_units = np.where(raw >= 0, np.searchsorted(ids, raw), -1)
    positions = np.arange(len(raw))
    read = np.array([positions[token_units == u].max() for u in range(len(ids))])
    if np.any(np.diff(read) <= 0):
        raise ValueError(f"the {unit}s of example {enc.texts[b][:40]!r} are not in token order")
    read[-1] = int(last_positions(enc.attention_mask[b : b + 1].cpu())[0])  # f(all) = the real prediction
    first = int(positions[token_units == 0].min())
    return UnitLayout(token_units, read, first - 1)


def _attach_loose_tokens(raw: np.ndarray, attributable: np.ndarray) -> np.ndarray:
    """Give attributable tokens in no unit (whitespace-only pieces such as "▁") the next unit, else the previous.

    So every text token is masked with some unit and prefix values stay a function of the active units.
    """
    out = raw.copy()
    following = -1
    for t in range(len(out) - 1, -1, -1):
        if out[t] >= 0:
            following = out[t]
        elif attributable[t]:
            out[t] = following
    preceding = -1
    for t in range(len(out)):
        if out[t] >= 0:
            preceding = out[t]
        elif attributable[t]:
            out[t] = preceding
    return out


class ProgressiveInference(AttributionMethod):
    """Shared by SP-PI and MP-PI: units, batched masked passes at the embedding level, per-position values.

    ``unit``: word | sentence | token. ``output``: prob | logit — the target class's probability or logit is
    the value f that is differenced or regressed. ``empty``: how f(∅) is read — ``prefix`` at the position just
    before the first unit (BOS or prompt), ``masked`` at the final position of one pass with every unit
    replaced by the mask embedding, ``auto`` prefix when such a position exists, else masked.
    """

    default_empty = "auto"

    def __init__(
        self,
        unit: str = "word",
        output: str = "prob",
        empty: str | None = None,
        internal_batch_size: int = 16,
    ) -> None:
        super().__init__(internal_batch_size)
        for name, value, allowed in (
            ("unit", unit, UNITS),
            ("output", output, OUTPUTS),
            ("empty", empty, EMPTY),
        ):
            if value is not None and value not in allowed:
                raise ValueError(f"{type(self).__name__}: {name} must be one of {allowed}, got {value!r}")
        self.unit, self.output = unit, output
        self.empty = empty or self.default_empty
        self.variant = f"{unit}-{output}"

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        if model.kind == "encoder":
            raise ValueError(
                f"{self.name} explains decoder-only models (kind decoder or prompted) through their per-position "
                "predictions; an encoder's tokens all see each other. Use another method (e.g. gradient_x_input, "
                "a learned attributor) for encoders"
            )
        layouts = [unit_layout(enc, b, self.unit) for b in range(len(enc))]
        phi = self.unit_scores(enc, model, target, layouts)
        out = torch.zeros(enc.input_ids.shape, dtype=torch.float64)
        for b, (lay, p) in enumerate(zip(layouts, phi)):
            inside = lay.token_units >= 0
            out[b, torch.from_numpy(inside)] = torch.from_numpy(p[lay.token_units[inside]])
        return out

    def unit_scores(self, enc: Encoded, model, target: Tensor, layouts: list[UnitLayout]) -> list[np.ndarray]:
        """φ per unit for each example: list of float64 [n_b]."""
        raise NotImplementedError

    def run_rows(
        self,
        enc: Encoded,
        model,
        target: Tensor,
        layouts: list[UnitLayout],
        rows: list[tuple[int, np.ndarray]],
    ) -> list[np.ndarray]:
        """Values at every position for each (example, active units bool [n]) row: float64 [tokens] each.

        Inactive units' tokens become the mask embedding (other tokens are unchanged); rows go through the
        model ``internal_batch_size`` at a time, each batch cut to its longest example.
        """
        out: list[np.ndarray] = []
        with torch.inference_mode():
            embeds = model.embed(enc.input_ids.to(model.device))  # [batch, tokens, hidden]
            m = model.mask_embedding().to(embeds.dtype)
            lengths = enc.attention_mask.sum(1).tolist()
            for start in range(0, len(rows), self.internal_batch_size):
                chunk = rows[start : start + self.internal_batch_size]
                ex = [b for b, _ in chunk]
                t = int(max(lengths[b] for b in ex))
                keep = torch.from_numpy(
                    np.stack([_token_active(layouts[b], active)[:t] for b, active in chunk])
                ).to(embeds.device)
                x = torch.where(keep[..., None], embeds[ex, :t], m)
                logits = model.position_logits(
                    inputs_embeds=x, attention_mask=enc.attention_mask[ex, :t].to(x.device)
                )
                values = logits.float().softmax(-1) if self.output == "prob" else logits.float()
                picked = values.gather(2, target[ex].to(values.device)[:, None, None].expand(-1, t, 1))[
                    ..., 0
                ]
                out += list(picked.double().cpu().numpy())
        return out

    def empty_rows(self, layouts: list[UnitLayout]) -> list[tuple[int, np.ndarray]]:
        """The all-masked rows f(∅) needs (one per example read at ``masked``); [] where ``prefix`` is used."""
        return [(b, np.zeros(lay.n, dtype=bool)) for b, lay in enumerate(layouts) if self._masked_empty(lay)]

    def empty_value(self, lay: UnitLayout, plain: np.ndarray, masked: np.ndarray | None) -> float:
        """f(∅) from the plain row's values (prefix) or the all-masked row's values (masked)."""
        return float(masked[lay.read[-1]]) if self._masked_empty(lay) else float(plain[lay.before])

    def _masked_empty(self, lay: UnitLayout) -> bool:
        if self.empty == "prefix" and lay.before < 0:
            raise ValueError(
                f"{self.name}: empty='prefix' needs a position before the first unit (a BOS token or a prompt), "
                "and this input starts with its text; use empty='masked' or 'auto'"
            )
        return self.empty == "masked" or (self.empty == "auto" and lay.before < 0)


def _token_active(lay: UnitLayout, active: np.ndarray) -> np.ndarray:
    """bool [tokens]: False exactly on the tokens of inactive units."""
    return np.where(lay.token_units >= 0, active[np.maximum(lay.token_units, 0)], True)


@register_method("sp_pi")
class SinglePassPI(ProgressiveInference):
    """SP-PI (Eq. 6): φ_u = f at the end of unit u − f at the end of unit u−1; f(∅) before the first unit.

    One forward pass (plus one all-masked pass when ``empty`` resolves to ``masked``). Scores sum to
    f(x) − f(∅) (local accuracy, Proposition 1).
    """

    def unit_scores(self, enc: Encoded, model, target: Tensor, layouts: list[UnitLayout]) -> list[np.ndarray]:
        plain = [(b, np.ones(lay.n, dtype=bool)) for b, lay in enumerate(layouts)]
        masked_rows = self.empty_rows(layouts)
        values = self.run_rows(enc, model, target, layouts, plain + masked_rows)
        masked = dict(zip((b for b, _ in masked_rows), values[len(plain) :]))
        out = []
        for b, lay in enumerate(layouts):
            v = values[b][lay.read]
            out.append(np.diff(v, prepend=self.empty_value(lay, values[b], masked.get(b))))
        return out


@register_method("mp_pi")
class MultiPassPI(ProgressiveInference):
    """MP-PI (Algorithm 1): Kernel SHAP on the prefix coalitions of ``budget`` masked passes per example.

    Input masks come from ``pi_distribution.mask_distribution`` (NNLS-optimised P' for n ≤ ``max_n`` units,
    else the "Shap" variant); the regression (Eq. 11) weights each distinct coalition by P*/P^D of its
    (size, last unit) cell and holds Σφ = f(all) − f(∅). ``budget`` masked passes per example (default
    ⌈``budget_per_unit``·n⌉ = 2n, as in the paper), plus the plain pass and, for ``empty='masked'`` (the
    default), one all-masked pass. Masks are drawn from a generator seeded once per instance, example by example,
    so results do not depend on ``internal_batch_size``.
    """

    default_empty = "masked"

    def __init__(
        self,
        unit: str = "word",
        output: str = "prob",
        empty: str | None = None,
        budget: int | None = None,
        budget_per_unit: float = 2.0,
        max_n: int = DEFAULT_MAX_N,
        disk_cache: bool = True,
        seed: int = 0,
        internal_batch_size: int = 16,
    ) -> None:
        super().__init__(unit, output, empty, internal_batch_size)
        if budget is not None and budget < 1:
            raise ValueError(f"mp_pi: budget must be ≥ 1 masked pass, got {budget}")
        self.budget, self.budget_per_unit = budget, budget_per_unit
        self.max_n, self.disk_cache, self.unit_output = max_n, disk_cache, f"{unit}-{output}"
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.variant = f"{self.unit_output}-seed{seed}"
        self.rng = np.random.default_rng(seed)

    def passes(self, n: int) -> int:
        """Masked passes for an example with n units."""
        return self.budget if self.budget is not None else math.ceil(self.budget_per_unit * n)

    def unit_scores(self, enc: Encoded, model, target: Tensor, layouts: list[UnitLayout]) -> list[np.ndarray]:
        dists = {
            lay.n: mask_distribution(lay.n, self.max_n, self.disk_cache) for lay in layouts if lay.n >= 2
        }
        sampled = [
            (b, z)
            for b, lay in enumerate(layouts)
            if lay.n >= 2
            for z in dists[lay.n].sample(self.passes(lay.n), self.rng)
        ]
        plain = [(b, np.ones(lay.n, dtype=bool)) for b, lay in enumerate(layouts)]
        masked_rows = self.empty_rows(layouts)
        values = self.run_rows(enc, model, target, layouts, plain + masked_rows + sampled)
        masked = dict(zip((b for b, _ in masked_rows), values[len(plain) : len(plain) + len(masked_rows)]))
        passes: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for (b, z), v in zip(sampled, values[len(plain) + len(masked_rows) :]):
            passes.setdefault(b, []).append((z, v))
        out = []
        for b, lay in enumerate(layouts):
            f_all = float(values[b][lay.read[-1]])
            f_empty = self.empty_value(lay, values[b], masked.get(b))
            if lay.n == 1:
                out.append(np.array([f_all - f_empty]))
                continue
            z, y, cell = prefix_coalitions(lay, passes[b])
            w = dists[lay.n].weights()[cell[:, 0], cell[:, 1]]
            out.append(constrained_kernel_shap(z, y - f_empty, w, f_all - f_empty))
        return out


def prefix_coalitions(
    lay: UnitLayout, passes: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct coalitions of the passes' prefixes, the full one left out (Eq. 9-10, Fig. 4e-f).

    Each pass (active units bool [n], values [tokens]) yields one coalition per active unit u: the active units
    up to u, valued at u's read position. Returns z bool [R, n], f(S) float [R], cells int [R, 2] (size, last unit,
    1-based) over the R distinct coalitions (first occurrence kept; repeats have the same prefix, so the same value).
    """
    seen: dict[bytes, tuple[np.ndarray, float, tuple[int, int]]] = {}
    for active, values in passes:
        for size, u in enumerate(np.flatnonzero(active), start=1):
            if size == lay.n:
                continue  # the full coalition is the efficiency constraint, not a sample
            z = active.copy()
            z[u + 1 :] = False
            seen.setdefault(z.tobytes(), (z, float(values[lay.read[u]]), (size, u + 1)))
    zs, ys, cells = zip(*seen.values())
    return np.stack(zs), np.array(ys), np.array(cells)


def constrained_kernel_shap(z: np.ndarray, y: np.ndarray, w: np.ndarray, total: float) -> np.ndarray:
    """argmin_φ Σ_S w_S (y_S − z_S·φ)² subject to Σφ = total (Eq. 11 with local accuracy): float64 [n].

    Solved through its KKT system; least squares gives the minimum-norm solution when the sampled coalitions
    do not determine φ (too small a budget).
    """
    n = z.shape[1]
    zf = z.astype(np.float64)
    w = w / w.mean()
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = zf.T @ (w[:, None] * zf)
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.append(zf.T @ (w * y), total)
    return np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]
