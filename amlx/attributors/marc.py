"""MaRC — per-instance word masks with a Gaussian-kernel reparameterization (Brinner & Zarrieß 2023, seed 004).

``MaRCMask`` holds the parameters w, σ of every instance of a batch ([batch, words]) and computes the mask
λ_j = sigmoid(Σ_i w_i·exp(−d(i,j)²/σ_i)) (Eq. 5–6) over word positions, tied across a word's sub-word pieces.
``MaRCModule`` (a LightningModule) minimizes Eq. 8 for the whole batch at once with Adam(W) under a Lightning
Trainer (``MaRC.fit`` runs it on a lean one, ``amlx.attributors.inner``): the loss is a *sum* over instances, Adam
is elementwise, the regularizing noise comes from one generator per instance and early stopping freezes each
instance on its own, so a batch gives the same masks as one run per instance (up to the explained model's
padding numerics). The explained model is never part of the module and stays frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from amlx.attributors import inner
from amlx.attributors.aml import _Frozen

KERNELS = ("sigma", "sigma_sq")  # denominator of Eq. 5: σ_i (paper) | σ_i² (seed code)
SCORINGS = ("log_likelihood", "log_sigmoid")  # L(x̃, c): log p_c (class-discriminative) | log sigmoid(logit_c)
COMPLEMENTS = ("score", "one_minus")  # + L(x̃^c, c) (Eq. 4/8) | − log(1 − exp L(x̃^c, c)) (seed code)
SIGMA_MIN = 1e-3  # σ is projected back to ≥ this after each step, so Eq. 5 and log σ stay defined


def word_positions(word_ids: Tensor, attributable: Tensor) -> tuple[Tensor, Tensor]:
    """Dense word positions 0..n−1 per row ([batch, tokens], −1 = never masked) and word counts n ([batch]).

    An attributable token in no word (e.g. a whitespace-only BPE piece) joins the word before it (or, at the
    start, the first word), so every attributable token is masked with some word.
    """
    pos = torch.full_like(word_ids, -1)
    counts = torch.zeros(len(word_ids), dtype=torch.long)
    for b in range(len(word_ids)):
        attr = attributable[b]
        if not attr.any():
            continue
        ids = torch.where(attr, word_ids[b], torch.full_like(word_ids[b], -1))
        filled = ids.cummax(0).values  # word ids grow along the text: a running max fills from the left
        first = ids[ids >= 0].min() if (ids >= 0).any() else torch.tensor(0)
        filled = torch.where(filled < 0, first, filled)
        uniq, dense = torch.unique(filled[attr], return_inverse=True)
        pos[b, attr] = dense
        counts[b] = len(uniq)
    return pos, counts


class MaRCMask(nn.Module):
    """Parameters w, σ: [batch, words] (padded to the longest instance); λ on words and on tokens."""

    def __init__(
        self,
        positions: Tensor,
        n_words: Tensor,
        w_init: float = 1.2,
        sigma_init: float = 2.0,
        kernel: str = "sigma",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if sigma_init <= 0:
            raise ValueError(f"sigma_init must be > 0, got {sigma_init}")
        self.kernel = kernel
        n_max = max(int(n_words.max()) if n_words.numel() else 0, 1)
        self.register_buffer("positions", positions)  # [batch, tokens] word position, −1 = never masked
        self.register_buffer("valid", torch.arange(n_max) < n_words[:, None].to(torch.long))  # [batch, words]
        self.w = nn.Parameter(torch.full((len(n_words), n_max), float(w_init)))
        self.sigma = nn.Parameter(torch.full((len(n_words), n_max), float(sigma_init)))

    def word_mask(self) -> Tensor:
        """λ [batch, words] = sigmoid(Σ_i w_i·exp(−|i−j|²/σ_i)) (Eq. 5–6); σ_i² in place of σ_i for ``sigma_sq``."""
        idx = torch.arange(self.w.shape[1], device=self.w.device, dtype=self.w.dtype)
        d2 = (idx[:, None] - idx[None, :]) ** 2  # [i, j]
        denom = self.sigma if self.kernel == "sigma" else self.sigma**2  # [batch, i]
        influence = self.w[:, :, None] * torch.exp(-d2 / denom[:, :, None])  # [batch, i, j]: w_{i→j}
        return torch.sigmoid((influence * self.valid[:, :, None]).sum(1))

    def token_mask(self, word_mask: Tensor | None = None) -> Tensor:
        """λ on tokens [batch, tokens]: each piece takes its word's λ; 1 where never masked (specials, prompt, pad)."""
        lam = self.word_mask() if word_mask is None else word_mask
        on_tokens = lam.gather(1, self.positions.clamp(min=0))
        return torch.where(self.positions >= 0, on_tokens, torch.ones_like(on_tokens))

    def regularizers(self, word_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Ω_λ = (mean_j λ_j)² (Eq. 2) and −mean_i log σ_i (Eq. 7 without α_σ) per instance: [batch] each."""
        n = self.valid.sum(1).clamp(min=1)
        omega_lambda = ((word_mask * self.valid).sum(1) / n) ** 2
        omega_sigma = -(torch.log(self.sigma) * self.valid).sum(1) / n
        return omega_lambda, omega_sigma


def class_scores(logits: Tensor, target: Tensor, scoring: str) -> tuple[Tensor, Tensor]:
    """(L, log(1 − exp L)) of the target class per row: [rows] each, L = log p_c or log sigmoid(logit_c)."""
    if scoring == "log_likelihood":
        logp = logits.float().log_softmax(-1)
        score = logp.gather(1, target[:, None])[:, 0]
        others = logp.masked_fill(F.one_hot(target, logp.shape[1]).bool(), float("-inf"))
        return score, others.logsumexp(-1)  # log Σ_{k≠c} p_k = log(1 − p_c), exact even when p_c → 1
    if scoring == "log_sigmoid":
        logit = logits.float().gather(1, target[:, None])[:, 0]
        return F.logsigmoid(logit), F.logsigmoid(-logit)
    raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


def marc_objective(
    logits_keep: Tensor, logits_comp: Tensor, target: Tensor, omega_lambda: Tensor, omega_sigma: Tensor,
    alpha_lambda: float = 1.0, alpha_sigma: float = 1.2, scoring: str = "log_likelihood", complement: str = "score",
) -> Tensor:  # fmt: skip
    """Eq. 8 per instance: −L(x̃, c) + L(x̃^c, c) + α_λ·Ω_λ + α_σ·Ω_σ, [batch] (logits: [batch, classes]).

    ``complement="one_minus"`` replaces + L(x̃^c, c) by − log(1 − exp L(x̃^c, c)) (the seed code's bounded form).
    """
    if complement not in COMPLEMENTS:
        raise ValueError(f"complement must be one of {COMPLEMENTS}, got {complement!r}")
    keep, _ = class_scores(logits_keep, target, scoring)
    comp, comp_rest = class_scores(logits_comp, target, scoring)
    comp_term = comp if complement == "score" else -comp_rest
    return -keep + comp_term + alpha_lambda * omega_lambda + alpha_sigma * omega_sigma


@dataclass
class MaRCResult:
    """What ``MaRC.fit`` returns for a batch."""

    token_mask: Tensor  # [batch, tokens] final λ (no noise, no flips) on tokens, 1 where never masked
    mask: MaRCMask  # the optimized parameters w, σ: [batch, words] (``MaRCModule.mask``)
    steps: Tensor  # [batch] Adam steps each instance took (fewer than ``steps`` when it stopped early)
    losses: Tensor  # [batch, steps] Eq. 8 at each step (with its noise); NaN after the instance stopped


@dataclass
class MaRC:
    """Optimization settings for MaRC (paper defaults, seed 004 App. A.1) and ``fit`` for one batch.

    ``noise_std``: Gaussian noise on the x̃ and x̃^c embeddings each step; ``flip_prob``: each word's λ is set to
    0 or 1 (equally likely) with this probability each step (the paper: "5% of mask values"); ``patience`` /
    ``min_delta``: an instance stops when its loss has not fallen below its best − ``min_delta`` for
    ``patience`` steps (``patience=None``: always ``steps``); ``weight_decay`` > 0 makes Adam AdamW; ``trainer``:
    options of the inner Lightning Trainer (``amlx.attributors.inner``: precision, gradient clipping, callbacks, …);
    ``lr_scheduler``: a learning-rate schedule stepped after every step, e.g. ``{class_path:
    torch.optim.lr_scheduler.ReduceLROnPlateau, init_args: {factor: 0.5, patience: 10}}`` (``inner.optimization``;
    a plateau schedule reads the batch's mean loss).
    """

    steps: int = 900
    lr: float = 3e-2
    weight_decay: float = 0.0
    alpha_lambda: float = 1.0
    alpha_sigma: float = 1.2
    w_init: float = 1.2
    sigma_init: float = 2.0
    kernel: str = "sigma"
    scoring: str = "log_likelihood"
    complement: str = "score"
    noise_std: float = 0.03
    flip_prob: float = 0.05
    patience: int | None = 50
    min_delta: float = 1e-3
    trainer: dict | None = None
    lr_scheduler: dict | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (("kernel", self.kernel, KERNELS), ("scoring", self.scoring, SCORINGS),
                                     ("complement", self.complement, COMPLEMENTS)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"MaRC {name} must be one of {allowed}, got {value!r}")
        if self.steps < 0 or not 0 <= self.flip_prob <= 1 or self.noise_std < 0 or self.sigma_init <= 0:
            raise ValueError(
                f"MaRC needs steps ≥ 0, 0 ≤ flip_prob ≤ 1, noise_std ≥ 0 and sigma_init > 0: {self}"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"MaRC patience must be ≥ 1 or None (no early stop), got {self.patience}")
        inner.check_scheduler(self.lr_scheduler)

    def changed(self) -> dict:
        """The settings that differ from the defaults (for a method's ``variant``)."""
        defaults = MaRC()
        values = zip(fields(self), asdict(self).values())
        return {f.name: v for f, v in values if v != getattr(defaults, f.name)}

    def fit(
        self, model, x: Tensor, baseline: Tensor, attention_mask: Tensor, positions: Tensor, n_words: Tensor,
        target: Tensor, generators: list[torch.Generator], token_type_ids: Tensor | None = None,
    ) -> MaRCResult:  # fmt: skip
        """Optimize one mask per row of the batch under the inner Trainer (``MaRCModule``; arguments as there)."""
        module = self.module(model, x, baseline, attention_mask, positions, n_words, target, generators, token_type_ids)
        if self.steps > 0:
            inner.fit(module, x.device, self.steps, self.trainer)
        result = module.result()
        module.release()
        return result

    def module(
        self, model, x: Tensor, baseline: Tensor, attention_mask: Tensor, positions: Tensor, n_words: Tensor,
        target: Tensor, generators: list[torch.Generator], token_type_ids: Tensor | None = None,
    ) -> MaRCModule:  # fmt: skip
        """The LightningModule that optimizes one mask per row of the batch with these settings (``MaRCModule``)."""
        return MaRCModule(self, model, x, baseline, attention_mask, positions, n_words, target, generators,
                          token_type_ids)  # fmt: skip


class MaRCModule(L.LightningModule):
    """The kernel weights and widths w, σ of a batch of instances ([batch, words], ``MaRCMask``), fitted to Eq. 8.

    x, baseline: [batch, tokens, hidden] embeddings of the input and of b (equal where never masked);
    positions: [batch, tokens] from ``word_positions``; ``generators``: one per row, drawn in a fixed order
    (flips, then noise on x̃, then on x̃^c) only while the row is still being optimized. ``token_type_ids``
    [batch, tokens]: the rows' segments for F (``ExplainedModel.token_type_ids``), None for F's default.

    ``Trainer(max_epochs=settings.steps).fit(module)``, on the explained model's device, takes at most
    ``settings.steps`` AdamW steps (``train_dataloader`` yields the batch once per epoch, one step each; the module
    stops the run after ``steps``). Each step minimizes the *sum* of the active rows' losses (Adam is elementwise,
    so each row's update is its own), then puts back the parameters of rows that had stopped and projects
    σ ≥ ``SIGMA_MIN``.
    A row stops after ``patience`` steps without improving by ``min_delta``; once every row has stopped the module
    stops the Trainer. ``result()`` reads off λ, the steps taken and the loss trace. The explained model is held
    outside the module tree: not in ``parameters()`` or ``state_dict()``, never trained, left in eval mode.
    """

    def __init__(
        self, settings: MaRC, model, x: Tensor, baseline: Tensor, attention_mask: Tensor, positions: Tensor,
        n_words: Tensor, target: Tensor, generators: list[torch.Generator], token_type_ids: Tensor | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if len(generators) != len(x):
            raise ValueError(f"MaRC needs one generator per row: got {len(generators)} for {len(x)} rows")
        self.settings = settings
        object.__setattr__(self, "_frozen", _Frozen())
        self._frozen.model = model
        device = x.device
        self.mask = MaRCMask(positions, n_words, settings.w_init, settings.sigma_init, settings.kernel)
        self.batch = {"x": x, "baseline": baseline, "attention_mask": attention_mask, "target": target,
                      "token_type_ids": token_type_ids}  # fmt: skip
        self.lengths = attention_mask.sum(1).tolist()
        self.n_words = n_words.cpu()
        self.generators = generators
        n = len(x)
        self.register_buffer("active", n_words > 0, persistent=False)  # an instance without words has nothing to do
        self.register_buffer("best", torch.full((n,), float("inf")), persistent=False)
        self.register_buffer("since", torch.zeros(n, dtype=torch.long), persistent=False)
        self.register_buffer("taken", torch.zeros(n, dtype=torch.long), persistent=False)
        self.register_buffer("losses", torch.full((n, settings.steps), float("nan")), persistent=False)
        self.step_count = 0
        self._pending: tuple[Tensor, Tensor, Tensor, list[Tensor]] | None = None
        self.to(device)

    @property
    def explained(self):
        """The frozen explained model F (outside the module tree)."""
        return self._frozen.model

    def train_dataloader(self) -> inner.Batches:
        return inner.Batches([self.batch])

    def configure_optimizers(self):
        s = self.settings
        return inner.optimization(torch.optim.AdamW(self.mask.parameters(), lr=s.lr, weight_decay=s.weight_decay),
                                  s.lr_scheduler)  # fmt: skip

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> int | None:
        if self.step_count >= self.settings.steps or not self.active.any():
            self.trainer.should_stop = True
            return -1  # nothing left to optimize: end the epoch (and, with should_stop, the run)
        return None

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Eq. 8 summed over the active rows, on x̃ and x̃^c with this step's flips and noise."""
        s, x = self.settings, batch["x"]
        rows = self.active.nonzero()[:, 0]
        t = max(self.lengths[r] for r in rows.tolist())  # trim the sub-batch to its longest row
        lam_words = self.mask.word_mask()
        flipped, noise = self._draw(lam_words, rows, t, x.shape[-1])
        lam = self.mask.token_mask(flipped)[rows, :t, None].to(x.dtype)  # [rows, t, 1]
        noise = noise.to(x.dtype)
        xr, br, am = x[rows, :t], batch["baseline"][rows, :t], batch["attention_mask"][rows, :t]
        keep = lam * xr + (1 - lam) * br + noise[0]  # x̃, Eq. 1
        comp = (1 - lam) * xr + lam * br + noise[1]  # x̃^c, Eq. 3
        types = None if batch["token_type_ids"] is None else batch["token_type_ids"][rows, :t].repeat(2, 1)
        logits = self.explained.logits(inputs_embeds=torch.cat([keep, comp]), attention_mask=torch.cat([am, am]),
                                       token_type_ids=types)  # fmt: skip
        omega_lambda, omega_sigma = self.mask.regularizers(lam_words)
        loss = marc_objective(logits[: len(rows)], logits[len(rows) :], batch["target"][rows], omega_lambda[rows],
                              omega_sigma[rows], s.alpha_lambda, s.alpha_sigma, s.scoring, s.complement)  # fmt: skip
        before = [p.detach().clone() for p in (self.mask.w, self.mask.sigma)]
        self._pending = (rows, loss.detach(), self.active.clone(), before)
        if inner.watched(self.trainer, s.lr_scheduler):  # for callbacks, loggers, a plateau schedule; else skipped
            self.log("loss", loss.detach().mean(), batch_size=len(rows))
        return loss.sum()  # a sum, not a mean: each instance's gradient is its own

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        """After the AdamW step: stopped rows back to their values, σ projected, the trace and early stops updated."""
        rows, value, active, before = self._pending
        s = self.settings
        with torch.no_grad():
            for p, old in zip((self.mask.w, self.mask.sigma), before):
                p.copy_(torch.where(active[:, None], p, old))  # stopped instances stay frozen
            self.mask.sigma.clamp_(min=SIGMA_MIN)
        self.taken[rows] += 1
        self.losses[rows, self.step_count] = value
        self.step_count += 1
        if s.patience is not None:
            improved = value < self.best[rows] - s.min_delta
            self.best[rows] = torch.where(improved, value, self.best[rows])
            self.since[rows] = torch.where(improved, 0, self.since[rows] + 1)
            self.active[rows] = self.since[rows] < s.patience
        if not self.active.any():
            self.trainer.should_stop = True

    def release(self) -> None:
        """Drop the batch's embeddings and the optimizer state once the result is read (``inner.release``): the
        Trainer ↔ module pair would otherwise keep them until Python's next full garbage collection."""
        inner.release(self)
        self.batch.clear()  # in place: the Trainer's dataloader holds this very dict
        self._pending = None

    def result(self) -> MaRCResult:
        """λ (no noise, no flips), the parameters, the steps each row took and its loss trace."""
        with torch.no_grad():
            return MaRCResult(self.mask.token_mask(), self.mask, self.taken, self.losses)

    def _draw(self, lam_words: Tensor, rows: Tensor, t: int, hidden: int) -> tuple[Tensor, Tensor]:
        """Per-row random flips of λ (all rows, [batch, words]) and noise [2, rows, t, hidden] from each row's generator."""
        s = self.settings
        flip = torch.zeros(lam_words.shape, dtype=torch.bool)
        value = torch.zeros(lam_words.shape)
        noise = torch.zeros(2, len(rows), t, hidden)
        for k, r in enumerate(rows.tolist()):
            g, n, length = self.generators[r], int(self.n_words[r]), self.lengths[r]
            flip[r, :n] = torch.rand(n, generator=g) < s.flip_prob
            value[r, :n] = (torch.rand(n, generator=g) < 0.5).float()
            noise[:, k, :length] = torch.randn(2, length, hidden, generator=g) * s.noise_std
        flip, value = flip.to(lam_words.device), value.to(lam_words.device, lam_words.dtype)
        return torch.where(flip, value, lam_words), noise.to(lam_words.device)
