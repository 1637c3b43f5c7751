"""A bag-of-words logistic classifier behind the ExplainedModel interface, so every metric can be done by hand.

Each token has a weight w (its 1-d input embedding); the positive logit is ½(b + Σ attended w) and the negative
one its opposite, so p(positive) = sigmoid(b + Σ w) over the tokens with attention 1 — padding does not count,
but a [PAD] id with attention 1 (the ``pad`` perturbation) adds w[PAD]. Gradient×Input of token i is therefore
±½·w_i (+ for the positive class). [CLS]/[SEP] weigh 0, [MASK] and [PAD] do not, so delete / mask / pad differ.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import PretrainedConfig, PreTrainedTokenizerFast

from amlx.models.explained import ExplainedModel
from amlx.records import Attribution, records_from_encoded

BIAS = 0.1
WEIGHTS = {
    "[PAD]": 0.25, "[UNK]": 0.0, "[CLS]": 0.0, "[SEP]": 0.0, "[MASK]": -0.5,
    "good": 2.0, "great": 1.5, "fun": 1.0, "bad": -2.0, "awful": -1.2, "dull": -0.8,
    "movie": 0.1, "plot": -0.2, "the": 0.05, "a": 0.02, "was": -0.05, "and": 0.03, ".": 0.01, ",": -0.01,
    "slow": -0.6, "##ly": 0.4, "positive": 3.0, "negative": -3.0,
}  # fmt: skip
VOCAB = {t: i for i, t in enumerate(WEIGHTS)}


def bow_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece over the ``WEIGHTS`` vocabulary with BERT normalization and [CLS] … [SEP]."""
    tok = Tokenizer(models.WordPiece(VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)  # fmt: skip


class BowClassifier(nn.Module):
    """logits = [−½ s, ½ s] with s = b + Σ_i attention_i · embedding_i (embeddings are 1-d: the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = PretrainedConfig(num_labels=2, max_position_embeddings=64, pad_token_id=VOCAB["[PAD]"])
        self.embeddings = nn.Embedding(len(VOCAB), 1)
        with torch.no_grad():
            self.embeddings.weight[:, 0] = torch.tensor(list(WEIGHTS.values()))
        self.bias = nn.Parameter(torch.tensor(BIAS))

    @property
    def base_model(self) -> BowClassifier:
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # [batch, tokens, 1]
        s = self.bias + (x[..., 0] * attention_mask.to(x.dtype)).sum(-1)
        return SimpleNamespace(logits=torch.stack([-s / 2, s / 2], -1))


def bow_explained() -> ExplainedModel:
    return ExplainedModel(BowClassifier(), bow_tokenizer(), "encoder", name="bow")


def p_positive(tokens: list[str]) -> float:
    """The hand formula: sigmoid(b + Σ w) over the given tokens (specials included by the caller)."""
    return 1 / (1 + math.exp(-(BIAS + sum(WEIGHTS[t] for t in tokens))))


def bow_record(model: ExplainedModel, text: str, scores: list[float] | None = None, target: int | None = None,
               ground_truth: list[str] | None = None, method: str = "hand") -> Attribution:  # fmt: skip
    """A record of ``text`` with ``scores`` on its attributable tokens (default: the true weights, signed for the target)."""
    enc = model.encode([text])
    full = torch.zeros(enc.input_ids.shape, dtype=torch.float64)
    attr = enc.attributable[0]
    probs = model.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    tgt = probs.argmax(-1) if target is None else torch.tensor([target])
    if scores is None:
        sign = 1.0 if int(tgt) == 1 else -1.0
        scores = sign * model.embedding_layer.weight[enc.input_ids[0][attr], 0].double()
    full[0, attr] = torch.as_tensor(scores, dtype=torch.float64)
    rec = records_from_encoded(enc, model.tokenizer, full, tgt, probs, model.labels, method)[0]
    if ground_truth is not None:
        rec.ground_truth = np.array([t in ground_truth for t in rec.tokens]) & rec.attributable
    return rec


PERTURBATION_METRICS = (
    "comp", "suff", "log_odds", "aopc_comp", "aopc_suff", "marc_comp", "marc_suff", "as_auc", "ias_auc",
)  # every registered perturbation metric, for tests that run them all
