"""One interface for every kind of explained model: encoder classifiers, decoder classifiers, prompted LMs.

``ExplainedModel`` wraps a Hugging Face model and its tokenizer and gives every attribution method and
metric the same handful of operations: ``encode`` (tokens, offsets, attributable mask, word ids),
``logits`` / ``probs`` from ``input_ids`` or ``inputs_embeds``, the embedding layer and the mask embedding,
per-position ``position_logits`` for decoders (Progressive Inference) and ``attentions``.

Padding is always on the right, and a decoder's prediction is read at the last position whose attention mask
is 1, computed here rather than by the HF head, so the ``input_ids`` and ``inputs_embeds`` paths agree and
batched equals unbatched.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from amlx import assets
from amlx.errors import UserError
from amlx.pairs import PAIR_JOIN, Input, Segments, TextPair
from amlx.words import token_word_ids, word_spans

log = logging.getLogger(__name__)

KINDS = ("encoder", "decoder", "prompted")
META_FILE = "amlx_model.json"
DEFAULT_LABELS = ("negative", "positive")
# Zero-shot default; configs/explained/ holds the few-shot RPI/AML prompt.
DEFAULT_TEMPLATE = "Review: {text}\nSentiment:"
DEFAULT_VERBALIZERS = (" negative", " positive")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU when one is visible, else the CPU; any other value is taken as a torch device.

    Asking for ``cuda`` on a machine without a visible GPU is refused with a clear message (never a silent CPU run).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but torch sees no CUDA GPU here; use device=cpu or auto")
    return dev


class EmptyTextError(UserError, ValueError):
    """An input text is empty or whitespace only."""


class PairInputError(UserError, ValueError):
    """Sentence pairs that this explained model cannot read (a batch mixing pairs and texts, a template without slots)."""


class UnknownLabelError(UserError, ValueError):
    """A label is not in the explained model's label set."""


class MaskTokenError(UserError, ValueError):
    """The tokenizer has no token for the requested mask strategy."""


class DtypeError(UserError, ValueError):
    """A ``dtype`` model option that is not a floating-point torch dtype."""


DTYPES = ("float32", "bfloat16", "float16", "float64")
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from itself or a name (``bfloat16``, ``torch.bfloat16``, ``bf16``; see ``DTYPES``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise DtypeError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)}); "
                         "set model_options: {dtype: bfloat16}, for example")  # fmt: skip
    return getattr(torch, name)


@dataclass
class Encoded:
    """A tokenized batch. Shapes: ``[batch, tokens]`` unless stated; padding on the right."""

    input_ids: Tensor
    attention_mask: Tensor
    attributable: Tensor  # bool: text tokens that may be attributed and masked (no specials, prompt, padding)
    offsets: Tensor  # [batch, tokens, 2] character spans into ``texts[b]``; (0, 0) where not attributable
    word_ids: Tensor  # word index of each attributable token in ``texts[b]``, -1 elsewhere
    texts: list[str]  # the texts as encoded (after truncation); a pair's joined text (amlx.pairs)
    truncated: list[bool]
    # per row, a pair's two segment spans in ``texts[b]`` (amlx.pairs.TextPair.segments); None: no pairs at all
    segments: list[Segments | None] | None = None

    def to(self, device: torch.device | str) -> Encoded:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, Tensor):
                moved[k] = v.to(device)
        return Encoded(**moved)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: slice | list[int]) -> Encoded:
        """Rows of the batch, trimmed to their longest row (padding is on the right)."""
        rows = list(range(len(self)))[rows] if isinstance(rows, slice) else list(rows)
        am = self.attention_mask[rows]
        t = int(am.sum(1).max()) if len(rows) else 0
        return Encoded(
            input_ids=self.input_ids[rows, :t],
            attention_mask=am[:, :t],
            attributable=self.attributable[rows, :t],
            offsets=self.offsets[rows, :t],
            word_ids=self.word_ids[rows, :t],
            texts=[self.texts[i] for i in rows],
            truncated=[self.truncated[i] for i in rows],
            segments=None if self.segments is None else [self.segments[i] for i in rows],
        )


def detect_kind(config) -> str:
    """encoder (has a masked-LM family), decoder (sequence classification head) or prompted (causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    archs = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "decoder"
    return "prompted"


class ExplainedModel(nn.Module):
    """A frozen classifier seen through the operations attribution methods need (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        kind: str,
        labels: list[str] | tuple[str, ...] | None = None,
        mask: str = "auto",
        template: str = DEFAULT_TEMPLATE,
        verbalizers: list[str] | tuple[str, ...] = DEFAULT_VERBALIZERS,
        max_length: int | None = None,
        trainable: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False  # enable_gradient_checkpointing()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "")
        tokenizer.padding_side = "right"
        self.hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        if tokenizer.pad_token_id is None:  # GPT-2 style tokenizers: pad with EOS (masked out anyway)
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if getattr(self.hf.config, "pad_token_id", None) is None:
            self.hf.config.pad_token_id = tokenizer.pad_token_id

        if kind == "prompted":
            if "{text}" not in template:
                raise ValueError("a prompted model's template must contain '{text}'")
            self.template = template
            self.labels = list(labels or DEFAULT_LABELS)
            if len(verbalizers) != len(self.labels):
                raise ValueError(f"{len(verbalizers)} verbalizers for {len(self.labels)} labels")
            self.verbalizers = list(verbalizers)
            ids = []
            for v in self.verbalizers:
                t = tokenizer(v, add_special_tokens=False)["input_ids"]
                if len(t) != 1:
                    raise ValueError(f"verbalizer {v!r} is {len(t)} tokens; each class needs exactly one token")
                ids.append(t[0])
            self.register_buffer("verbalizer_ids", torch.tensor(ids), persistent=False)
        else:
            self.template, self.verbalizers = "", []
            n = self.hf.config.num_labels
            names = labels or [self.hf.config.id2label.get(i, str(i)) for i in range(n)]
            if n == 2 and all(str(x).startswith("LABEL_") for x in names):
                names = list(DEFAULT_LABELS)
            if len(names) != n:
                raise ValueError(f"{len(names)} label names for a head with {n} outputs")
            self.labels = list(names)

        self.max_length = max_length or self._model_max_length()
        self.mask_spec = mask
        self._set_mask(mask)
        if trainable:
            self.train()  # from_pretrained leaves HF models in eval mode; fine-tuning wants dropout on
        else:
            self.requires_grad_(False)
            self.eval()

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name: str,
        kind: str = "auto",
        labels: list[str] | None = None,
        mask: str | None = None,
        template: str | None = None,
        verbalizers: list[str] | None = None,
        max_length: int | None = None,
        num_labels: int | None = None,
        dtype: torch.dtype | str = torch.float32,
        attn_implementation: str | None = None,
        trainable: bool = False,
        gradient_checkpointing: bool = False,
    ) -> ExplainedModel:
        """Load by hub name, local folder or ``amlx:`` name; a folder holding a peft adapter is merged in.

        ``dtype``: the weights' dtype (``bfloat16`` halves a 7B model's memory; probabilities are still returned
        in float32). ``gradient_checkpointing``: recompute each layer's activations in the backward pass instead
        of keeping them (``enable_gradient_checkpointing``), for methods that back-propagate through the model.
        """
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        dtype = resolve_dtype(dtype)  # a wrong name fails before anything loads
        path = assets.resolve(name)
        meta = _read_meta(path)
        kind = meta.get("kind", kind) if kind == "auto" else kind
        labels = labels or meta.get("labels")
        mask = mask or meta.get("mask", "auto")
        template = template or meta.get("template", DEFAULT_TEMPLATE)
        verbalizers = verbalizers or meta.get("verbalizers", DEFAULT_VERBALIZERS)
        max_length = max_length or meta.get("max_length")
        kw = {"dtype": dtype}
        if attn_implementation:
            kw["attn_implementation"] = attn_implementation

        adapter_cfg = Path(path) / "adapter_config.json" if Path(path).is_dir() else None
        base_path = path
        if adapter_cfg is not None and adapter_cfg.exists():
            base_path = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
            base_path = assets.resolve(meta.get("base_model", base_path))
        config = AutoConfig.from_pretrained(base_path)
        if kind == "auto":
            kind = detect_kind(config)
        if kind == "prompted":
            model = AutoModelForCausalLM.from_pretrained(base_path, **kw)
        else:
            n = num_labels or (len(labels) if labels else None)
            if n is not None:
                kw["num_labels"] = n
            model = AutoModelForSequenceClassification.from_pretrained(base_path, **kw)
        tok_path = path if (Path(path) / "tokenizer_config.json").exists() or not Path(path).is_dir() else base_path
        tokenizer = AutoTokenizer.from_pretrained(tok_path)
        if base_path != path:
            from peft import PeftModel

            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
            model = PeftModel.from_pretrained(model, path)
            if not trainable:
                model = model.merge_and_unload()
        explained = cls(
            model,
            tokenizer,
            kind,
            labels=labels,
            mask=mask,
            template=template,
            verbalizers=verbalizers,
            max_length=max_length,
            trainable=trainable,
            name=name,
        )
        if gradient_checkpointing:
            explained.enable_gradient_checkpointing()
        return explained

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer layer in the backward pass (HF's gradient checkpointing), frozen or not.

        HF checkpoints a layer only while the layer is in training mode; a frozen explained model stays in eval
        mode, so only the checkpointed layers' own ``training`` flag is raised — their submodules (dropout,
        attention) stay in eval mode and every output is unchanged. ``train`` / ``eval`` keep it that way.
        """
        kwargs = {"use_reentrant": False}
        if hasattr(self.hf, "activation_checkpointing_enable"):  # the newer name; gradient_checkpointing_enable is deprecated
            self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.gradient_checkpointing = True
        self._raise_checkpointed_layers()

    def _raise_checkpointed_layers(self) -> None:
        from transformers.modeling_layers import GradientCheckpointingLayer

        for module in self.hf.modules():
            if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
                module.training = True  # the layer's flag only (``.train()`` would recurse into dropout)

    def train(self, mode: bool = True) -> ExplainedModel:
        super().train(mode)
        if self.gradient_checkpointing:
            self._raise_checkpointed_layers()
        return self

    def save_pretrained(self, path: str | Path) -> None:
        """Save weights (or the peft adapter), tokenizer and the amlx metadata so any tool can reload them."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        meta = {
            "kind": self.kind,
            "labels": self.labels,
            "mask": self.mask_spec,
            "max_length": self.max_length,
        }
        if self.kind == "prompted":
            meta.update(template=self.template, verbalizers=self.verbalizers)
        if hasattr(self.model, "peft_config"):
            meta["base_model"] = self.model.peft_config["default"].base_model_name_or_path
        (path / META_FILE).write_text(json.dumps(meta, indent=1))

    def _model_max_length(self) -> int:
        positions = getattr(self.hf.config, "max_position_embeddings", None)
        pos_emb = getattr(getattr(self.hf.base_model, "embeddings", None), "position_embeddings", None)
        if positions and getattr(pos_emb, "padding_idx", None) is not None:
            positions -= pos_emb.padding_idx + 1  # RoBERTa family: position ids start after padding_idx (514 → 512)
        cands = [positions, self.tokenizer.model_max_length]
        cands = [int(c) for c in cands if c is not None and 0 < c < 1_000_000]
        return min(cands) if cands else 512

    # ------------------------------------------------------------------------------------- mask embedding
    def _set_mask(self, spec: str) -> None:
        """Resolve the mask strategy: mask | unk | pad | id:N | learned | auto (mask for encoders, unk else)."""
        self.learned_mask = None
        self.mask_token_id: int | None = None
        resolved = spec
        if spec == "auto":
            resolved = "mask" if self.kind == "encoder" else "unk"
        if resolved in ("mask", "unk", "pad"):
            tid = getattr(self.tokenizer, f"{resolved}_token_id", None)
            if tid is None:
                raise MaskTokenError(
                    f"the tokenizer of {self.name or 'this model'} has no {resolved} token; set the explained "
                    "model's mask to one it has (mask | unk | pad), an explicit 'id:N', or 'learned'"
                )
            self.mask_token_id = int(tid)
        elif resolved.startswith("id:"):
            self.mask_token_id = int(resolved[3:])
            if not 0 <= self.mask_token_id < self.embedding_layer.num_embeddings:
                raise MaskTokenError(f"mask id {self.mask_token_id} is outside the vocabulary")
        elif resolved == "learned":
            init = self.embedding_layer.weight.detach().mean(0).clone()
            self.learned_mask = nn.Parameter(init)
        else:
            raise MaskTokenError(f"unknown mask strategy {spec!r}; use mask | unk | pad | id:N | learned | auto")

    @property
    def embedding_layer(self) -> nn.Embedding:
        return self.hf.get_input_embeddings()

    def mask_embedding(self) -> Tensor:
        """The embedding ``m`` that replaces masked tokens: [hidden]."""
        if self.learned_mask is not None:
            return self.learned_mask
        return self.embedding_layer.weight[self.mask_token_id]

    def embed(self, input_ids: Tensor) -> Tensor:
        """Input embeddings: [batch, tokens] → [batch, tokens, hidden]."""
        return self.embedding_layer(input_ids)

    @property
    def device(self) -> torch.device:
        return self.embedding_layer.weight.device

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def label_index(self, label: int | str) -> int:
        """Class index of a label given by index (int or 0-d tensor) or name."""
        if isinstance(label, Tensor) and label.ndim == 0 and not label.is_floating_point():
            label = int(label)
        if isinstance(label, str) and label in self.labels:
            return self.labels.index(label)
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(self.labels):
            return int(label)
        raise UnknownLabelError(f"label {label!r} is not in this model's label set {self.labels}")

    # ---------------------------------------------------------------------------------------- tokenizing
    def encode(self, texts: Input | list[Input]) -> Encoded:
        """Tokenize texts (or ``TextPair``s) with offsets, the attributable mask and word ids; truncate over-long ones.

        A pair is read as the model was fine-tuned on pairs: ``tokenizer(text, text_pair)`` (its specials and
        separators are never attributable), or a prompted model's ``{text}`` / ``{text_pair}`` slots. Offsets and
        word ids then point into the pair's joined text (``amlx.pairs``), ``Encoded.segments`` holds its two spans.
        """
        items = [texts] if isinstance(texts, (str, TextPair)) else list(texts)
        if not items:
            raise EmptyTextError("encode() got no texts")
        for i, item in enumerate(items):
            for t in (item.text, item.text_pair) if isinstance(item, TextPair) else (item,):
                if not isinstance(t, str) or not t.strip():
                    raise EmptyTextError(
                        f"text {i} is empty or whitespace only ({t!r}); there is nothing to classify or attribute — "
                        "drop it (amlx's data modules drop such rows with a warning)"
                    )
        is_pair = [isinstance(item, TextPair) for item in items]
        if any(is_pair) and not all(is_pair):
            raise PairInputError(
                "one batch mixes sentence pairs (TextPair) and single texts; encode them in separate batches"
            )
        # parts[b]: the text, or the pair's (text, text_pair), as encoded (after truncation)
        parts = [(item.text, item.text_pair) if isinstance(item, TextPair) else (item,) for item in items]
        if self.kind == "prompted":
            parts, truncated = self._truncate_for_prompt(parts)
            slots = self._template_pieces(len(parts[0]))
            full, pieces = [], []  # pieces[b]: (sequence, start, end) of each part in what the tokenizer reads
            for p in parts:
                text, spans = slots[0], []
                for part, after in zip(p, slots[1:]):
                    spans.append((0, len(text), len(text) + len(part)))
                    text += part + after
                full.append(text)
                pieces.append(spans)
            enc = self.tokenizer(
                full, return_offsets_mapping=True, return_special_tokens_mask=True, padding=True, truncation=False
            )
        else:
            columns = [list(c) for c in zip(*parts)]  # [texts] or [texts, text_pairs]
            lengths = [len(x) for x in self.tokenizer(*columns, truncation=False)["input_ids"]]
            truncated = [n > self.max_length for n in lengths]
            enc = self.tokenizer(
                *columns,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
                padding=True,
                truncation=True,
                max_length=self.max_length,
            )
            if any(truncated):
                # keep only what was encoded, so offsets, words and renderers describe the same text
                parts = [
                    tuple(_cut_to_tokens(t, o, enc.sequence_ids(b), s) for s, t in enumerate(p)) if tr else p
                    for b, (p, o, tr) in enumerate(zip(parts, enc["offset_mapping"], truncated))
                ]
            pieces = [[(s, 0, len(t)) for s, t in enumerate(p)] for p in parts]
        if any(truncated):
            warnings.warn(
                f"{sum(truncated)} of {len(parts)} texts exceed the model's {self.max_length} tokens and were "
                "truncated (only the kept part is classified and attributed)",
                stacklevel=2,
            )
        texts = [PAIR_JOIN.join(p) for p in parts]
        segments = [TextPair(*p).segments for p in parts] if all(is_pair) else None
        ids = torch.tensor(enc["input_ids"])
        am = torch.tensor(enc["attention_mask"])
        off = torch.tensor(np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(len(texts), ids.shape[1], 2))
        special = torch.tensor(enc["special_tokens_mask"]).bool()
        seq = torch.tensor([[-1 if s is None else s for s in enc.sequence_ids(b)] for b in range(len(texts))])
        # a part's tokens: those of its sequence that overlap its span; their offsets move to where it starts in texts[b]
        p_seq, p_start, p_end = (torch.tensor([[pc[k] for pc in p] for p in pieces]) for k in range(3))  # [batch, parts]
        p_dest = torch.tensor([[s for s, _ in seg] for seg in segments] if segments else [[0]] * len(texts))
        o0, o1 = off[..., 0, None], off[..., 1, None]  # [batch, tokens, 1]
        inside = (seq[..., None] == p_seq[:, None]) & (o1 > p_start[:, None]) & (o0 < p_end[:, None]) & (o1 > o0)
        attributable = inside.any(-1) & ~special & am.bool()
        part = inside.long().argmax(-1)  # [batch, tokens]: the part a token belongs to
        start, end, shift = (x.gather(1, part)[..., None] for x in (p_start, p_end, p_dest))
        off = torch.minimum((off - start).clamp(min=0), end - start) + shift
        off = off * attributable[..., None]
        word_ids = torch.full_like(ids, -1)
        off_np, attr_np = off.numpy(), attributable.numpy()
        for b, t in enumerate(texts):
            word_ids[b] = torch.from_numpy(token_word_ids(off_np[b], word_spans(t), attr_np[b]))
        return Encoded(ids, am, attributable, off, word_ids, texts, truncated, segments)

    def _template_pieces(self, n_parts: int) -> list[str]:
        """The prompt template cut around its ``{text}`` (and, for pairs, ``{text_pair}``) slots."""
        prefix, rest = self.template.split("{text}", 1)
        if n_parts == 1:
            if "{text_pair}" in rest:
                raise PairInputError(
                    f"the prompt template {self.template!r} has a {{text_pair}} slot but got single texts; give "
                    "sentence pairs (a dataset with a text_pair column) or a template with {text} only"
                )
            return [prefix, rest]
        if "{text_pair}" not in rest:
            raise PairInputError(
                f"the prompt template {self.template!r} has no {{text_pair}} slot after {{text}}, so it cannot read "
                "a sentence pair; set the explained model's template, e.g. "
                "'Premise: {text}\\nHypothesis: {text_pair}\\nAnswer:'"
            )
        return [prefix, *rest.split("{text_pair}", 1)]

    def _truncate_for_prompt(self, parts: list[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], list[bool]]:
        """Cut each text (pairs: the longer part first) so that it fits in the template within ``max_length``."""
        slots = self._template_pieces(len(parts[0]))
        fixed = len(self.tokenizer("".join(slots))["input_ids"]) + len(slots)  # + one merge at each slot boundary
        budget = self.max_length - fixed
        if budget < len(slots) - 1:
            raise ValueError(f"the prompt template alone fills the model's {self.max_length} tokens")
        encoded = [self.tokenizer(list(col), add_special_tokens=False, return_offsets_mapping=True)
                   for col in zip(*parts)]  # fmt: skip
        out, truncated = [], []
        for b, p in enumerate(parts):
            counts = [len(e["input_ids"][b]) for e in encoded]
            keep = _longest_first(counts, budget)
            out.append(tuple(t if k == n else t[: e["offset_mapping"][b][k - 1][1]]
                             for t, e, k, n in zip(p, encoded, keep, counts)))  # fmt: skip
            truncated.append(keep != counts)
        return out, truncated

    # ------------------------------------------------------------------------------------------ forward
    def _in_model_dtype(self, inputs_embeds: Tensor | None) -> Tensor | None:
        """Embeddings mixed in float32 by a method (masks, baselines) in the weights' dtype (bf16 models)."""
        dtype = self.embedding_layer.weight.dtype
        return inputs_embeds if inputs_embeds is None or inputs_embeds.dtype == dtype else inputs_embeds.to(dtype)

    def _backbone_hidden(self, input_ids, attention_mask, inputs_embeds, **kw):
        if self.uses_token_types and input_ids is not None:
            kw["token_type_ids"] = self.token_type_ids(input_ids, attention_mask)
        out = self.hf.base_model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kw
        )
        return out

    @property
    def uses_token_types(self) -> bool:
        """Whether F has segment (token type) embeddings that mark a pair's second segment (BERT, ALBERT, ELECTRA)."""
        return (
            self.kind == "encoder"
            and getattr(self.hf.config, "type_vocab_size", 0) > 1
            and self.tokenizer.sep_token_id is not None
        )

    def token_type_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Segment ids [batch, tokens]: 1 after the first separator token, 0 before it and on padding.

        The BERT convention for ``[CLS] A [SEP] B [SEP]`` (single texts: all 0), read off the ids, so that a variant
        with text tokens deleted or masked (separators are never touched) keeps its segments. Methods that call F on
        ``inputs_embeds`` pass these ids, computed from the batch's ``input_ids``, as ``token_type_ids``.
        """
        if not self.uses_token_types:
            return torch.zeros_like(input_ids)
        sep = (input_ids == self.tokenizer.sep_token_id).long()
        after = (sep.cumsum(1) - sep) > 0
        if attention_mask is not None:
            after = after & attention_mask.bool()
        return after.long()

    def position_logits(
        self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, inputs_embeds: Tensor | None = None
    ) -> Tensor:
        """Class logits read at every position (decoders / prompted LMs): [batch, tokens, classes].

        Position i sees only tokens ≤ i, so it is the prediction on the prefix ending at i.
        """
        if self.kind == "encoder":
            raise ValueError(
                "per-position (intermediate) predictions need a decoder: an encoder's tokens all see each other"
            )
        hidden = self._backbone_hidden(input_ids, attention_mask, self._in_model_dtype(inputs_embeds)).last_hidden_state
        if self.kind == "decoder":
            return self.hf.score(hidden)
        head = self.hf.get_output_embeddings()
        bias = head.bias[self.verbalizer_ids] if getattr(head, "bias", None) is not None else None
        return F.linear(hidden, head.weight[self.verbalizer_ids], bias)

    def logits(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Class logits from ``input_ids`` or ``inputs_embeds``: [batch, classes].

        ``token_type_ids`` [batch, tokens] (``token_type_ids()``; only models with ``uses_token_types`` read them):
        derived from ``input_ids`` when not given; with ``inputs_embeds`` pass them for pairs (default: all 0).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        inputs_embeds = self._in_model_dtype(inputs_embeds)
        if attention_mask is None:
            ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(ref.shape, dtype=torch.long, device=ref.device)
        if self.kind == "encoder":
            kw = {}
            if self.uses_token_types:
                if token_type_ids is None and input_ids is not None:
                    token_type_ids = self.token_type_ids(input_ids, attention_mask)
                kw["token_type_ids"] = token_type_ids
            return self.hf(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kw).logits
        per_pos = self.position_logits(input_ids, attention_mask, inputs_embeds)
        return per_pos[torch.arange(per_pos.shape[0], device=per_pos.device), last_positions(attention_mask)]

    def probs(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Class probabilities: [batch, classes], rows sum to 1."""
        return self.logits(input_ids, attention_mask, inputs_embeds, token_type_ids).float().softmax(-1)

    def intermediate_probs(
        self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, inputs_embeds: Tensor | None = None
    ) -> Tensor:
        """Per-position class probabilities for decoders: [batch, tokens, classes]."""
        return self.position_logits(input_ids, attention_mask, inputs_embeds).float().softmax(-1)

    def attentions(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, ...]:
        """Attention probabilities of every layer, each [batch, heads, tokens, tokens] (eager attention)."""
        if getattr(self.hf.config, "_attn_implementation", "eager") != "eager":
            self.hf.set_attn_implementation("eager")
        out = self._backbone_hidden(input_ids, attention_mask, None, output_attentions=True)
        return tuple(out.attentions)

    @torch.no_grad()
    def predict(self, texts: Input | list[Input], batch_size: int = 32) -> Tensor:
        """Class probabilities of raw texts (or ``TextPair``s): [batch, classes] on the CPU."""
        texts = [texts] if isinstance(texts, (str, TextPair)) else list(texts)
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.encode(texts[i : i + batch_size]).to(self.device)
            out.append(self.probs(enc.input_ids, enc.attention_mask).cpu())
        return torch.cat(out)


def last_positions(attention_mask: Tensor) -> Tensor:
    """Index of the last position whose attention mask is 1, per row: [batch]."""
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * pos).argmax(1)


def _cut_to_tokens(text: str, offsets: list[tuple[int, int]], sequence_ids: list[int | None], sequence: int) -> str:
    """``text`` up to the end of the last token the tokenizer kept of it (sequence ``sequence`` of the encoding)."""
    end = max((e for (_, e), s in zip(offsets, sequence_ids) if s == sequence), default=0)
    return text[:end]


def _longest_first(counts: list[int], budget: int) -> list[int]:
    """Tokens kept per part when their ``counts`` exceed ``budget``: a pair loses tokens from its longer part first."""
    if sum(counts) <= budget:
        return list(counts)
    if len(counts) == 1:
        return [budget]
    n0, n1 = counts
    if n0 < n1:
        k0 = min(n0, budget // 2)
        return [k0, budget - k0]
    k1 = min(n1, budget // 2)
    return [budget - k1, k1]


def _read_meta(path: str) -> dict:
    p = Path(path) / META_FILE
    return json.loads(p.read_text()) if p.exists() else {}


class ModelOptionsError(UserError, ValueError):
    """``model_options`` names an option ``ExplainedModel.from_pretrained`` does not take (a typo, usually)."""


# what a job's ``model_options`` may hold: from_pretrained's options except the model name and ``kind`` (its own
# job argument); read once here, so a test that replaces from_pretrained does not change it
MODEL_OPTIONS = tuple(
    p for p in inspect.signature(ExplainedModel.from_pretrained).parameters if p not in ("name", "kind")
)


def check_model_options(options: dict | None) -> None:
    """Refuse unknown ``model_options`` keys before any model loads, naming the valid ones (and the likely one)."""
    import difflib

    for key in options or {}:
        if key not in MODEL_OPTIONS:
            close = difflib.get_close_matches(str(key), MODEL_OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelOptionsError(
                f"model_options has no option {key!r}{hint}; the explained model's options are: "
                + ", ".join(MODEL_OPTIONS)
            )
