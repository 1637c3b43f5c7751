"""AML — Attributive Masking Learning (seed 002): a learned attributor G_θ trained against a frozen classifier F.

G_θ is an encoder backbone plus one shared MLP head (d→d→1, tanh then sigmoid) that scores every token,
conditioned on F's prediction through one extra input embedding z_v = z_0 + Σ_j y_j z_j (seed 002 §3.2).
Scores live on the attributor's own tokens and are mapped to the explained model's tokens by character
offsets (``amlx.align``); F masks its own input embeddings with them (docs/aml.md, methods.md "AML").

The explained model runs inside every step but is not part of the attributor: it is held outside the module
tree, so it is never in ``state_dict()``, ``parameters()`` or a checkpoint, and it stays frozen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from amlx import assets
from amlx.align import REDUCTIONS, align_scores
from amlx.attributors.teacher import TEACHER_LOSSES, TeacherBatch, check_teacher, teacher_loss
from amlx.errors import UserError
from amlx.models.explained import Encoded, ExplainedModel
from amlx.pairs import inputs_of

SPARSITY = ("bce", "l1")
CONDITIONING = ("soft", "hard")
CHECKPOINT_KEY = "amlx_aml"
CHECKPOINT_DIR = "attributors"  # amlx:<name> → <amlx cache>/attributors/<name>.ckpt
EPS = 1e-6  # keeps log(1 − a) finite when the sigmoid saturates


class ExplainedMismatchError(UserError, ValueError):
    """An AML checkpoint is loaded against an explained model or tokenizer it was not trained for."""


@dataclass
class AttributorInputs:
    """The attributor's own tokenization of a batch. Shapes: ``[batch, source]`` unless stated."""

    input_ids: Tensor
    attention_mask: Tensor
    offsets: Tensor  # [batch, source, 2] character spans into the texts
    valid: Tensor  # bool: text tokens (no specials, padding or empty spans)

    def to(self, device: torch.device | str) -> AttributorInputs:
        return AttributorInputs(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class AMLOutput:
    """One AML step: scores on the explained model's tokens and the loss terms of every example."""

    scores: Tensor  # [batch, tokens] a ∈ [0, 1] on explained-model tokens; 0 where not attributable
    terms: dict[str, Tensor]  # "loss", "pred" (L_p), "sparsity" (L_a), "inverse" (L_inv): each [batch]
    probs: Tensor  # [batch, classes] F(x), the unmasked prediction


class _Frozen:
    """Holds the explained model out of the module tree; copies of the attributor share it (fAML copies)."""

    def __init__(self) -> None:
        self.model = None
        self.identity: dict | None = None

    def __deepcopy__(self, memo: dict) -> _Frozen:
        return self


def condition(probs: Tensor, conditioning: str, target: Tensor | None = None) -> Tensor:
    """y_v: the soft prediction p (paper default) or one-hot of ``target`` / ŷ (``hard``): [batch, classes]."""
    if conditioning not in CONDITIONING:
        raise ValueError(f"class_conditioning must be one of {CONDITIONING}, got {conditioning!r}")
    if conditioning == "soft":
        return probs.float()
    idx = probs.argmax(-1) if target is None else target
    return F.one_hot(idx, probs.shape[-1]).float()


def aml_loss(
    explained,
    enc: Encoded,
    a: Tensor,
    y: Tensor,
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0),
    sparsity: str = "bce",
    hard_k: float | None = None,
) -> dict[str, Tensor]:
    """AML loss terms per example (methods.md "AML"; seed 002 Eqs. 3–6): each ``[batch]``.

    ``a``: [batch, tokens] scores on the explained model's tokens (forced to 1 on non-attributable tokens);
    ``y``: [batch, classes] y_v; ``lambdas``: (λ_p, λ_a, λ_inv). The masked and the inversely masked inputs
    go through F in one batch of 2·batch rows. ``hard_k`` (a fraction in (0, 1]): the masks F sees are the hard
    top-⌊k·n⌋ (≥ 1) indicator of ``a`` over the attributable tokens (what the metrics keep or remove), with the
    straight-through gradient of ``a``; L_a stays on the soft ``a``.
    """
    if sparsity not in SPARSITY:
        raise ValueError(f"sparsity must be one of {SPARSITY}, got {sparsity!r}")
    keep = enc.attributable
    b = a.shape[0]
    a = torch.where(keep, a, torch.ones_like(a))
    soft = a
    if hard_k is not None:
        a = a + (hard_topk(a, keep, hard_k) - a).detach()  # forward: the hard mask; backward: ∂/∂a of the soft one
        a = torch.where(keep, a, torch.ones_like(a))
    inv = torch.where(keep, 1 - a, torch.ones_like(a))
    x = explained.embed(enc.input_ids)  # [batch, tokens, hidden]
    m = explained.mask_embedding()  # [hidden]
    w = torch.cat([a, inv])[..., None].to(x.dtype)  # [2·batch, tokens, 1]
    masked = w * torch.cat([x, x]) + (1 - w) * m  # M(a, x) and M(1 − a, x), Eq. 3
    am, types = enc.attention_mask, explained.token_type_ids(enc.input_ids, enc.attention_mask)
    logits = explained.logits(
        inputs_embeds=masked, attention_mask=torch.cat([am, am]), token_type_ids=torch.cat([types, types])
    ).float()
    pred = -(y * logits[:b].log_softmax(-1)).sum(-1)  # L_p, Eq. 5: soft cross-entropy to y_v
    yhat = F.one_hot(y.argmax(-1), y.shape[-1]).bool()
    inv_logits = logits[b:]
    # L_inv, Eq. 6: −log(1 − F(M(1−a, x))_ŷ), computed as −(logsumexp over classes ≠ ŷ − logsumexp over all)
    inverse = inv_logits.logsumexp(-1) - inv_logits.masked_fill(yhat, float("-inf")).logsumexp(-1)
    k = keep.sum(-1).clamp_min(1)
    per_token = -torch.log((1 - soft).clamp_min(EPS)) if sparsity == "bce" else soft  # L_a: BCE to 0, or L1
    sparse = (per_token * keep).sum(-1) / k
    lp, la, linv = lambdas
    return {"loss": lp * pred + la * sparse + linv * inverse, "pred": pred, "sparsity": sparse, "inverse": inverse}


def hard_topk(a: Tensor, keep: Tensor, fraction: float) -> Tensor:
    """1 on each row's top-⌊fraction·n⌋ (at least 1) attributable tokens by ``a``, else 0: [batch, tokens].

    n = the row's attributable count; ⌊·⌋ is the metrics' default rounding (``amlx.metrics.perturb.n_units_for``),
    with a minimum of one token so that every step carries a signal.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"hard_k must be a fraction in (0, 1], got {fraction}")
    n = keep.sum(-1, keepdim=True)
    k = torch.floor(n * fraction + 1e-9).clamp(min=1).minimum(n)  # [batch, 1]
    order = a.detach().masked_fill(~keep, float("-inf")).argsort(-1, descending=True)
    rank = order.argsort(-1)  # rank of every token in its row, 0 = highest
    return ((rank < k) & keep).to(a.dtype)


def tokenizer_fingerprint(tokenizer) -> dict:
    """A tokenizer's identity as plain types: class, vocabulary size and a hash of the vocabulary."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
    }


def explained_identity(explained) -> dict:
    """What an AML checkpoint records about the model it explains: name, number of classes, tokenizer."""
    return {
        "name": explained.name,
        "num_labels": int(explained.num_labels),
        "tokenizer": tokenizer_fingerprint(explained.tokenizer),
    }


class AMLAttributor(L.LightningModule):
    """G_θ of AML: backbone + shared token head + class embeddings, trained by pAML (``training_step``).

    ``explained`` names the explained model (``ExplainedModel.from_pretrained``); pass ``num_labels`` instead
    to build the attributor without loading it, then attach a model with ``set_explained`` (tests, notebooks).
    Options: ``lambda_p``, ``lambda_a``, ``lambda_inv`` (Eq. 4), ``sparsity`` bce | l1, ``class_conditioning``
    soft | hard, ``merge`` max | mean (several attributor tokens in one explained token), ``lr`` (AdamW,
    linear decay, no warmup; 4e-5 for encoder targets, 8e-5 documented for LLM targets).
    Amortization (``amlx.attributors.teacher``): with ``lambda_teacher`` > 0 and teacher maps in the batches
    (``TextClassificationData(teacher=...)``), L += λ_teacher·L_teacher(s, t), where s is the head's pre-sigmoid
    score and ``teacher_loss`` zmse | listnet | zmse+listnet (``teacher_temperature`` τ for listnet).
    Metric-consistent training: ``hard_topk`` (fractions, e.g. the metrics' k's [0.01, 0.05, 0.1, 0.2, 0.5]) makes
    every training step mask F's input with the hard top-k of a for one k drawn from the list, straight-through
    (``aml_loss(hard_k=...)``); validation and fAML keep the soft masks.
    Warm start: ``init_from`` (a checkpoint path or ``amlx:`` name) loads another AML checkpoint's weights before
    training (same backbone and explained model); a checkpoint of this run reloads without that file.
    """

    def __init__(
        self,
        explained: str = "",
        backbone: str = "amlx:minilm",
        num_labels: int | None = None,
        lambda_p: float = 1.0,
        lambda_a: float = 1.0,
        lambda_inv: float = 1.0,
        sparsity: str = "bce",
        class_conditioning: str = "soft",
        merge: str = "max",
        lr: float = 4e-5,
        weight_decay: float = 0.0,
        freeze_word_embeddings: bool = True,
        max_length: int = 512,
        explained_options: dict | None = None,
        lambda_teacher: float = 0.0,
        teacher_loss: str = "zmse",
        teacher_temperature: float = 1.0,
        hard_topk: list[float] | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if sparsity not in SPARSITY:
            raise ValueError(f"sparsity must be one of {SPARSITY}, got {sparsity!r}")
        if class_conditioning not in CONDITIONING:
            raise ValueError(f"class_conditioning must be one of {CONDITIONING}, got {class_conditioning!r}")
        if merge not in REDUCTIONS:
            raise ValueError(f"merge must be one of {REDUCTIONS}, got {merge!r}")
        if teacher_loss not in TEACHER_LOSSES:
            raise ValueError(f"teacher_loss must be one of {TEACHER_LOSSES}, got {teacher_loss!r}")
        if lambda_teacher < 0:
            raise ValueError(f"lambda_teacher must be ≥ 0, got {lambda_teacher}")
        if hard_topk is not None and (not hard_topk or not all(0 < k <= 1 for k in hard_topk)):
            raise ValueError(f"hard_topk must be a non-empty list of fractions in (0, 1], got {hard_topk}")
        self.save_hyperparameters()
        object.__setattr__(self, "_frozen", _Frozen())
        self._expected: dict | None = None  # the explained model a loaded checkpoint was trained for
        if num_labels is None:
            if not explained:
                raise ValueError("AMLAttributor needs explained=<model name>, or num_labels=N and set_explained(model)")
            self.set_explained(ExplainedModel.from_pretrained(explained, **(explained_options or {})))
            num_labels = self.explained.num_labels

        path = assets.resolve(backbone)
        self.backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # unused: scores come from every token's last hidden state
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if not self.tokenizer.is_fast:
            raise ValueError(f"the backbone {backbone!r} has no fast tokenizer; AML needs character offsets")
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        d = self.backbone.config.hidden_size
        self.head = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))  # sigmoid applied in head_scores
        std = getattr(self.backbone.config, "initializer_range", 0.02)
        self.class_embeddings = nn.Parameter(torch.randn(num_labels + 1, d) * std)  # row 0 is z_0
        if freeze_word_embeddings:
            self.backbone.get_input_embeddings().weight.requires_grad_(False)
        self.max_length = self._max_length(max_length)
        if init_from:
            self.init_weights_from(init_from)
        self.train()  # from_pretrained leaves the backbone in eval mode; Lightning keeps modules' modes

    def _max_length(self, requested: int) -> int:
        n = getattr(self.backbone.config, "max_position_embeddings", None) or requested
        pos = getattr(getattr(self.backbone, "embeddings", None), "position_embeddings", None)
        if getattr(pos, "padding_idx", None) is not None:
            n -= pos.padding_idx + 1  # RoBERTa family: positions start after padding_idx
        tok_max = self.tokenizer.model_max_length
        cands = [requested, n] + ([tok_max] if 0 < tok_max < 1_000_000 else [])
        return min(cands) - 1  # one position for the class-embedding token

    # ------------------------------------------------------------------------------ the explained model
    @property
    def explained(self):
        """The frozen explained model F (loaded on first use when only its name is known), on this device."""
        if self._frozen.model is None:
            if not self.hparams.explained:
                raise ValueError("no explained model: pass explained=<name> or call set_explained(model)")
            self.set_explained(
                ExplainedModel.from_pretrained(self.hparams.explained, **(self.hparams.explained_options or {}))
            )
        model = self._frozen.model
        if model.device != self.device:
            model.to(self.device)
        return model

    def set_explained(self, model) -> None:
        """Attach the explained model F; it is frozen and kept out of this module's state (see module docstring)."""
        if self._frozen.model is model:
            return  # already attached and checked
        model.requires_grad_(False)
        model.eval()
        identity = explained_identity(model)
        if self._expected is not None:
            _refuse_mismatch(self._expected, identity)
        if hasattr(self, "class_embeddings") and model.num_labels != self.class_embeddings.shape[0] - 1:
            raise ExplainedMismatchError(
                f"the explained model has {model.num_labels} classes but this attributor was built for "
                f"{self.class_embeddings.shape[0] - 1}"
            )
        self._frozen.model = model
        self._frozen.identity = identity
        if not self.hparams.explained:
            self.hparams.explained = model.name  # so a checkpoint names the model it explains

    # ----------------------------------------------------------------------------------------- forward
    def tokenize(self, texts: list[str]) -> AttributorInputs:
        """The attributor's tokenization of ``texts`` (the texts as the explained model encoded them)."""
        enc = self.tokenizer(
            list(texts),
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        off = enc["offset_mapping"]
        valid = ~enc["special_tokens_mask"].bool() & enc["attention_mask"].bool() & (off[..., 1] > off[..., 0])
        return AttributorInputs(enc["input_ids"], enc["attention_mask"], off, valid)

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, y: Tensor) -> Tensor:
        """Backbone states of the attributor tokens with z_v inserted after the last real token: [batch, source, d]."""
        return self.hidden_from_embeds(self.backbone.get_input_embeddings()(input_ids), attention_mask, y)

    def hidden_from_embeds(self, emb: Tensor, attention_mask: Tensor, y: Tensor) -> Tensor:
        """``hidden`` from the attributor's word embeddings ``emb`` [batch, source, d] instead of token ids."""
        b, s, d = emb.shape
        z = self.class_embeddings[0] + y.to(emb.dtype) @ self.class_embeddings[1:]  # z_v = z_0 + Σ_j y_j z_j
        length = attention_mask.sum(1)[:, None]  # [batch, 1]
        pos = torch.arange(s + 1, device=emb.device)[None]  # [1, source + 1]
        src = (pos - (pos > length).long()).clamp(max=s - 1)  # positions after the insertion shift right by one
        x = emb.gather(1, src[..., None].expand(b, s + 1, d))
        x = torch.where((pos == length)[..., None], z[:, None, :].to(emb.dtype), x)
        am = (pos <= length).long()
        h = self.backbone(inputs_embeds=x, attention_mask=am).last_hidden_state  # [batch, source + 1, d]
        back = pos[:, :s] + (pos[:, :s] >= length).long()  # drop the class-embedding token's state
        return h.gather(1, back[..., None].expand(b, s, h.shape[-1]))

    def head_logits(self, h: Tensor) -> Tensor:
        """The shared MLP head's pre-sigmoid score s on every token: [batch, source, d] → [batch, source]."""
        return self.head(h)[..., 0]

    def head_scores(self, h: Tensor) -> Tensor:
        """The shared MLP head on every token: [batch, source, d] → a = σ(s) ∈ [0, 1]^[batch, source]."""
        return torch.sigmoid(self.head_logits(h))

    def to_explained(self, a_src: Tensor, inputs: AttributorInputs, enc: Encoded) -> Tensor:
        """Attributor-token scores → explained-model-token scores [batch, tokens] (0 where not attributable)."""
        return align_scores(a_src, inputs.offsets, inputs.valid, enc.offsets, enc.attributable, self.hparams.merge)

    def token_scores(self, enc: Encoded, y: Tensor) -> Tensor:
        """a on the explained model's tokens for the batch ``enc`` conditioned on y_v: [batch, tokens]."""
        inputs = self.tokenize(enc.texts).to(self.device)
        a_src = self.head_scores(self.hidden(inputs.input_ids, inputs.attention_mask, y))
        return self.to_explained(a_src, inputs, enc)

    def loss_terms(self, enc: Encoded, a: Tensor, y: Tensor, hard_k: float | None = None) -> dict[str, Tensor]:
        """``aml_loss`` with this attributor's λ's and sparsity option."""
        hp = self.hparams
        return aml_loss(self.explained, enc, a, y, (hp.lambda_p, hp.lambda_a, hp.lambda_inv), hp.sparsity, hard_k)

    def prepare(
        self, inputs: list[str] | Encoded, target: Tensor | None = None, probs: Tensor | None = None
    ) -> tuple[Encoded, Tensor, Tensor]:
        """Encode for F and read its prediction without gradients: (enc, p [batch, classes], y_v [batch, classes]).

        ``probs``: F(x) when the caller already computed it (one forward pass of F saved).
        """
        explained = self.explained
        enc = inputs if isinstance(inputs, Encoded) else explained.encode(inputs)
        enc = enc.to(self.device)
        if probs is not None:
            p = probs.to(self.device).clone()  # a normal tensor even if computed under inference_mode
        else:
            with torch.no_grad():
                p = explained.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        return enc, p, condition(p, self.hparams.class_conditioning, target)

    def forward(
        self, inputs: list[str] | Encoded, target: Tensor | None = None, teacher: list[dict] | None = None
    ) -> AMLOutput:
        """Scores and loss terms of a batch; labels are F's own predictions (pAML needs no gold labels).

        ``teacher``: one ``teacher_row`` per example (from the data module); with ``lambda_teacher`` > 0 it adds
        the term "teacher" (L_teacher of the pre-sigmoid scores on the attributor's tokens) to the loss.
        """
        enc, p, y = self.prepare(inputs, target)
        src = self.tokenize(enc.texts).to(self.device)
        logits = self.head_logits(self.hidden(src.input_ids, src.attention_mask, y))  # [batch, source]
        a = self.to_explained(torch.sigmoid(logits), src, enc)
        hp = self.hparams
        if hp.lambda_p or hp.lambda_a or hp.lambda_inv:
            hard_k = None
            if self.training and hp.hard_topk:  # one of the metrics' k's per step (drawn with torch's RNG)
                hard_k = float(hp.hard_topk[int(torch.randint(len(hp.hard_topk), ()))])
            terms = self.loss_terms(enc, a, y, hard_k)
        else:  # pure amortization: F's masked passes would only be multiplied by 0
            terms = {"loss": torch.zeros(len(enc), device=self.device)}
        lt = hp.lambda_teacher
        if teacher is not None and lt > 0:
            check_teacher(teacher, self.explained, enc)
            t = TeacherBatch.from_rows(teacher).on_tokens(src.offsets, src.valid)
            terms["teacher"] = teacher_loss(logits, t, src.valid, hp.teacher_loss, hp.teacher_temperature)
            terms["loss"] = terms["loss"] + lt * terms["teacher"]
        return AMLOutput(a * enc.attributable, terms, p)

    @torch.no_grad()
    def scores(self, enc: Encoded, target: Tensor | None = None, probs: Tensor | None = None) -> Tensor:
        """Inference: one forward pass of G on an encoded batch → [batch, tokens] (0 where not attributable)."""
        with evaluating(self):
            enc, _, y = self.prepare(enc, target, probs)
            return self.token_scores(enc, y) * enc.attributable

    def scores_from_embeds(self, embeds: Tensor, enc: Encoded, target: Tensor | None = None) -> Tensor:
        """Scores [batch, tokens] when the explained model's word embeddings are ``embeds`` [batch, tokens, hidden].

        G reads the text through its own tokenizer, so an embedding perturbation δ = embeds − F's embeddings must
        reach G through the tokens they share: G's own word embeddings of the same tokens are displaced by the
        same δ, and G is conditioned on F(embeds). Differentiable w.r.t. ``embeds`` (the top-k attack); refused
        unless G and F tokenize the batch identically with equal hidden sizes.
        """
        explained = self.explained
        enc = enc.to(self.device)
        inputs = self.tokenize(enc.texts).to(self.device)
        own = self.backbone.get_input_embeddings()(inputs.input_ids)  # [batch, source, d]
        if inputs.input_ids.shape != enc.input_ids.shape or not torch.equal(inputs.input_ids, enc.input_ids) or (
            own.shape[-1] != embeds.shape[-1]
        ):
            raise ValueError(
                "a perturbation of the explained model's embeddings reaches the pAML attributor only through tokens "
                f"both share: its backbone {self.hparams.backbone!r} must tokenize the texts exactly as the explained "
                f"model {explained.name!r} does, with the same hidden size; attack another method, or an attributor "
                "trained with such a backbone"
            )
        with evaluating(self):
            types = explained.token_type_ids(enc.input_ids, enc.attention_mask)
            probs = explained.probs(inputs_embeds=embeds, attention_mask=enc.attention_mask, token_type_ids=types)
            y = condition(probs, self.hparams.class_conditioning, target)
            delta = embeds - explained.embed(enc.input_ids).detach()
            a_src = self.head_scores(self.hidden_from_embeds(own + delta.to(own.dtype), inputs.attention_mask, y))
            return self.to_explained(a_src, inputs, enc) * enc.attributable

    def attribute(self, texts: str | list[str], target: Tensor | None = None) -> Tensor:
        """Scores on the tokens of ``explained.encode(texts)``: [batch, tokens]; ``target`` matters only for hard."""
        return self.scores(self.explained.encode(texts), target)

    # ---------------------------------------------------------------------------------------- training
    def _step(self, batch: dict, stage: str) -> Tensor:
        out = self(inputs_of(batch), teacher=batch.get("teacher"))
        n = len(batch["text"])
        for k, v in out.terms.items():
            self.log(f"{stage}/{k}", v.mean(), prog_bar=k == "loss", batch_size=n, sync_dist=stage != "train")
        return out.terms["loss"].mean()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = get_linear_schedule_with_warmup(opt, 0, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        identity = self._frozen.identity if self._frozen.model is not None else self._expected
        if identity is None:
            identity = explained_identity(self.explained)
        checkpoint[CHECKPOINT_KEY] = {
            "format": 1,
            "explained": identity,
            "attributor_tokenizer": tokenizer_fingerprint(self.tokenizer),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise ExplainedMismatchError("this checkpoint was not written by AMLAttributor (no 'amlx_aml' entry)")
        mine = tokenizer_fingerprint(self.tokenizer)
        if meta["attributor_tokenizer"] != mine:
            raise ExplainedMismatchError(
                f"the checkpoint's attributor tokenizer {meta['attributor_tokenizer']} differs from the backbone "
                f"{self.hparams.backbone!r} tokenizer {mine}; load it with the backbone it was trained with"
            )
        self._expected = meta["explained"]
        if self._frozen.model is not None:
            _refuse_mismatch(self._expected, self._frozen.identity)

    def init_weights_from(self, name: str) -> None:
        """Start from the weights of another AML checkpoint (``init_from``: a path or an ``amlx:`` name), e.g. an
        amortized attributor trained further with more teacher rows or with the AML terms switched on. Its attributor
        tokenizer and explained model must be this one's; λ's, lr and the rest come from this run's arguments."""
        ckpt = torch.load(resolve_checkpoint(name), map_location="cpu", weights_only=True)
        self.on_load_checkpoint(ckpt)  # refuses another backbone tokenizer, and (once F is attached) another F
        if ckpt[CHECKPOINT_KEY]["explained"]["num_labels"] != self.class_embeddings.shape[0] - 1:
            raise ExplainedMismatchError(
                f"init_from={name!r} was trained for {ckpt[CHECKPOINT_KEY]['explained']['num_labels']} classes, "
                f"this attributor has {self.class_embeddings.shape[0] - 1}"
            )
        self.load_state_dict(ckpt["state_dict"])

    @classmethod
    def from_checkpoint(cls, path: str, explained=None, map_location: str | torch.device = "cpu") -> AMLAttributor:
        """Load a checkpoint (a path or an ``amlx:`` name, see ``checkpoint_path``) with ``torch.load(weights_only=True)``;
        ``explained`` overrides loading F by name."""
        ckpt = torch.load(resolve_checkpoint(path), map_location=map_location, weights_only=True)
        # LightningCLI adds "_class_path" / "_instantiator" to the hyperparameters; they are not arguments
        hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
        hp["num_labels"] = ckpt[CHECKPOINT_KEY]["explained"]["num_labels"]  # so F is loaded lazily, or attached
        hp["init_from"] = None  # the state dict below replaces those weights: the file need not exist here
        model = cls(**hp)
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
        if explained is not None:
            model.set_explained(explained)
        return model


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode (no dropout) inside the block, its previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def checkpoint_path(name: str) -> Path:
    """Where an attributor checkpoint lives: ``amlx:<name>`` → ``<amlx cache>/attributors/<name>.ckpt``; a path as is."""
    if not assets.is_amlx_name(name):
        return Path(name)
    key = name[len(assets.PREFIX) :]
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"invalid attributor name {name!r}: use amlx:<name> or a checkpoint path")
    return assets.cache_dir() / CHECKPOINT_DIR / f"{key}.ckpt"


def resolve_checkpoint(name: str) -> str:
    """An existing checkpoint file for ``name`` (path or ``amlx:`` name); the error says how to make it."""
    path = checkpoint_path(str(name))
    if not path.is_file():
        raise assets.AssetMissingError(
            f"no AML attributor checkpoint at {path} (from {name!r}); train one with "
            "`python train.py fit --config configs/aml/paml_minilm_movies.yaml` (its MetricCheckpoint exports the "
            "best checkpoint to amlx:<name>), or pass the path of a .ckpt written by train.py"
        )
    return str(path)


def _refuse_mismatch(expected: dict, got: dict) -> None:
    if expected == got:
        return
    raise ExplainedMismatchError(
        f"this AML attributor was trained to explain {expected['name']!r} ({expected['num_labels']} classes, tokenizer "
        f"{expected['tokenizer']['class']} with {expected['tokenizer']['vocab_size']} tokens), not {got['name']!r} "
        f"({got['num_labels']} classes, tokenizer {got['tokenizer']['class']} with {got['tokenizer']['vocab_size']} "
        "tokens); an attributor only explains the model it was trained against — attach that model, or train an "
        "attributor for this one with train.py"
    )
