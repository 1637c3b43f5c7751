"""The top-k explanation attack (Ghorbani et al. 2019; seed 003 thesis §2.3, §3.5; methods.md "Additions" §7).

A perturbation δ of the word embeddings of the attributable tokens (never position, type, special or prompt
inputs), ‖δ‖∞ ≤ ε, is optimised to lower D(δ) = Σ_{i ∈ B} â_i(x + δ), the normalized map's mass on B, the original
top-k tokens (â = a / Σ|a| over attributable tokens; the thesis's D is −D here, so its arg max is our arg min).
Objectives: ``unconstrained`` minimises α·D, the prediction must only stay the same; ``constrained`` minimises
α·D + β·(p_c(x + δ) − p_c(x))² (the thesis's α·D − β·(m(x) − m(x+δ))² with its sign convention, c = predicted
class). Every example of a batch has its own δ and its own early stop; all run in one batch. The kept iterate is the
one of lowest objective among those (t ≥ 1) whose prediction held; an example with none is flagged
(``prediction_held`` false) and reports its last iterate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from amlx.methods.base import AttributionMethod
from amlx.models.explained import Encoded

OBJECTIVES = ("unconstrained", "constrained")
UPDATES = ("sgd", "sign")
TINY = 1e-12  # keeps the normalization of an all-zero map finite


@dataclass
class TopKAttack:
    """Options of the attack; the defaults are the thesis's (§3.5).

    ``epsilon`` bound on ‖δ‖∞; ``k_percent``: k = ⌊k_percent % of the attributable tokens⌋, at least 1; ``steps``
    updates at ``lr``, halved every ``halve_every``; an example stops when ‖δ_t − δ_{t−1}‖∞ < ``tol`` for
    ``patience`` steps in a row. ``update``: ``sgd`` (δ ← Π(δ − lr·∇), the thesis's "gradient descent") or
    ``sign`` (δ ← Π(δ − lr·sign ∇), Ghorbani et al.'s iteration); Π clips to [−ε, ε].
    """

    objective: str = "unconstrained"
    epsilon: float = 2.0
    k_percent: float = 15.0
    steps: int = 500
    lr: float = 0.1
    halve_every: int = 200
    tol: float = 1e-5
    patience: int = 20
    alpha: float = 1.0
    beta: float = 1.0
    update: str = "sgd"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {self.update!r}")
        if self.epsilon < 0 or self.steps < 1 or not 0 < self.k_percent <= 100:
            raise ValueError(f"need epsilon ≥ 0, steps ≥ 1 and 0 < k_percent ≤ 100; got {asdict(self)}")

    def run(self, method: AttributionMethod, model, enc: Encoded) -> list[dict]:
        """Attack ``method``'s explanations of the batch ``enc`` (on ``model``'s device); one result per example.

        Each result: ``k``, ``topk`` (token positions of B), ``rank_change`` (mean |rank after − rank before| over
        B, rank 0 = top), ``topk_changed`` (share of the k top positions holding another token: the thesis's
        "Rank Change"), ``topk_intersection`` |B ∩ top-k after|/k, ``topk_sum`` / ``topk_sum_adv`` (D before and
        after) and ``topk_sum_change`` (before − after), ``prob`` / ``prob_adv`` / ``prob_change`` (p_c, after −
        before), ``prediction_held``, ``attacked`` (held and B left the top-k in part), ``linf`` ‖δ‖∞, ``steps``
        run and ``best_step``.
        """
        enc = enc.to(model.device)
        mask = enc.attributable  # [batch, tokens]
        e0 = model.embed(enc.input_ids).detach()  # [batch, tokens, hidden]
        types = model.token_type_ids(enc.input_ids, enc.attention_mask)
        with torch.no_grad():
            p0 = model.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask)  # [batch, classes]
        target = p0.argmax(-1)
        pc0 = p0.gather(1, target[:, None])[:, 0]
        beta = self.beta if self.objective == "constrained" else 0.0
        n_attr = mask.sum(-1)
        k = torch.clamp((n_attr * self.k_percent / 100 + 1e-9).floor().long(), min=1)
        k = torch.minimum(k, n_attr)  # [batch]

        b = len(enc)
        delta = torch.zeros_like(e0, requires_grad=True)
        active = torch.ones(b, dtype=torch.bool, device=e0.device)
        still = torch.zeros(b, dtype=torch.long, device=e0.device)
        steps_run = torch.zeros(b, dtype=torch.long, device=e0.device)
        held_any = torch.zeros(b, dtype=torch.bool, device=e0.device)
        best_obj = torch.full((b,), math.inf, device=e0.device)
        a0 = topk = kept = None
        for t in range(self.steps + 1):
            x = e0 + delta * mask[..., None].to(e0.dtype)
            a = method.scores_from_embeds(x, enc, model, target)  # [batch, tokens]
            probs = model.probs(inputs_embeds=x, attention_mask=enc.attention_mask, token_type_ids=types)
            if a0 is None:  # t = 0: δ = 0, the original map
                a0 = a.detach()
                topk = ranks(a0, mask) < k[:, None]  # B: [batch, tokens]
            d = (normalized(a, mask) * topk).sum(-1)  # D(δ): [batch]
            pc = probs.gather(1, target[:, None])[:, 0]
            obj = self.alpha * d + beta * (pc - pc0) ** 2  # [batch]
            now = {"a": a.detach(), "probs": probs.detach(), "linf": delta.detach().abs().amax((1, 2)),
                   "step": torch.full((b,), t, device=e0.device)}  # fmt: skip
            if t >= 1:
                better = (probs.argmax(-1) == target) & (obj.detach() < best_obj)
                best_obj = torch.where(better, obj.detach(), best_obj)
                held_any |= better
                kept = now if kept is None else {key: where_rows(better, now[key], v) for key, v in kept.items()}
            if t == self.steps or not active.any():
                break
            (grad,) = torch.autograd.grad(obj.sum(), delta, allow_unused=True)  # None: D and p_c ignore δ
            grad = torch.zeros_like(delta) if grad is None else grad
            lr = self.lr * 0.5 ** (t // self.halve_every)
            with torch.no_grad():
                step = grad.sign() if self.update == "sign" else grad
                new = (delta - lr * step * active[:, None, None]).clamp(-self.epsilon, self.epsilon)
                moved = (new - delta).abs().amax((1, 2))
                still = torch.where(moved < self.tol, still + 1, torch.zeros_like(still))
                steps_run += active.long()
                active &= still < self.patience
                delta.copy_(new)
        # an example whose prediction never held reports its last iterate, flagged
        final = {key: where_rows(held_any, v, now[key]) for key, v in kept.items()}
        return self._results(final, held_any, a0, pc0, target, topk, k, mask, steps_run)

    @staticmethod
    def _results(best, held, a0, pc0, target, topk, k, mask, steps_run) -> list[dict]:
        """The per-example figures of the kept iterates ``best`` against the original map ``a0``."""
        a1, p1 = best["a"], best["probs"]
        r0, r1 = ranks(a0, mask), ranks(a1, mask)
        kf = k.to(a0.dtype)
        rank_change = ((r1 - r0).abs() * topk).sum(-1) / kf
        top1 = r1 < k[:, None]
        intersection = (top1 & topk).sum(-1) / kf
        order0, order1 = r0.argsort(dim=-1), r1.argsort(dim=-1)  # positions by rank (non-attributable, rank n+, last)
        first = torch.arange(a0.shape[1], device=a0.device)[None] < k[:, None]
        changed = ((order0 != order1) & first).sum(-1) / kf
        d0 = (normalized(a0, mask) * topk).sum(-1)
        d1 = (normalized(a1, mask) * topk).sum(-1)
        pc1 = p1.gather(1, target[:, None])[:, 0]
        out = []
        for i in range(len(a0)):
            out.append({
                "k": int(k[i]), "topk": order0[i, : int(k[i])].tolist(),
                "rank_change": float(rank_change[i]), "topk_changed": float(changed[i]),
                "topk_intersection": float(intersection[i]),
                "topk_sum": float(d0[i]), "topk_sum_adv": float(d1[i]), "topk_sum_change": float(d0[i] - d1[i]),
                "prob": float(pc0[i]), "prob_adv": float(pc1[i]), "prob_change": float(pc1[i] - pc0[i]),
                "prediction_held": bool(held[i]), "attacked": bool(held[i] and intersection[i] < 1),
                "linf": float(best["linf"][i]), "steps": int(steps_run[i]), "best_step": int(best["step"][i]),
            })  # fmt: skip
        return out


def ranks(scores: Tensor, mask: Tensor) -> Tensor:
    """Rank of every token among the attributable ones by score, 0 = highest, ties by position: [batch, tokens].

    Non-attributable tokens rank after every attributable one.
    """
    order = torch.argsort(scores.masked_fill(~mask, -math.inf), dim=-1, descending=True, stable=True)
    r = torch.empty_like(order)
    r.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return r


def where_rows(rows: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` in the examples ``rows`` [batch] (bool), ``old`` elsewhere; any trailing shape."""
    return torch.where(rows.view(-1, *([1] * (new.ndim - 1))), new, old)


def normalized(scores: Tensor, mask: Tensor) -> Tensor:
    """a / Σ|a| over the attributable tokens, 0 elsewhere: [batch, tokens] (the map as shares of its mass)."""
    a = scores * mask
    return a / a.abs().sum(-1, keepdim=True).clamp_min(TINY)
