"""Tiny tokenizers and random models, built in-process in milliseconds, for specification tests.

Tokenizers are trained with the ``tokenizers`` library on a small built-in corpus and wrapped as
``PreTrainedTokenizerFast`` (so offsets work); models are random 2-layer, hidden-32 configs with a fixed seed.
Nothing here touches the network. Import as ``from tests.tiny import tiny_explained`` (tests/conftest.py puts
the repository root on ``sys.path``).
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from amlx.models.explained import ExplainedModel

CORPUS = (
    "A good movie, a good cast and a good score.",
    "A bad movie with a bad plot and bad acting.",
    "I don't think it's good; it's bad.",
    "It wasn't bad at all -- it was really good!!!",
    "The café scene is lovely, the crème brûlée is great.",
    "Naïve, clichéd and far too long: 2 hours and 17 minutes.",
    "One of the best films of 2019, 10/10 would watch again.",
    "The worst film I've seen in years... avoid.",
    "Well-made, well-acted, and never boring.",
    "A slow,   dull   and   forgettable sequel.",
    "The actors can't save a script this weak?",
    "Funny, warm and surprisingly moving; a small gem.",
    "Great   music, great cast, great fun.",
    "Terrible dialogue, terrible pacing, terrible ending.",
    "I laughed, I cried, I loved it.",
    "It's a mess: loud, long and pointless.",
    "Smart writing and a clever twist at the end.",
    "The plot makes no sense and the jokes fall flat.",
    "A must-see for fans of the genre, 5 stars.",
    "Two hours of my life I won't get back.",
    "Beautifully shot, but the story is thin.",
    "Not good, not bad, just okay.",
    "An unforgettable performance by the lead actress.",
    "Predictable and lazy, with 3 good scenes at most.",
    "The director's best work since 1999.",
    "Review: good movie\nSentiment: positive",
    "Review: bad movie\nSentiment: negative",
    "Text: a good film Label: P",
    "Text: a bad film Label: N",
    "positive negative positive negative good bad good bad",
    "Über-cool soundtrack, déjà vu plot, 100% fun.",
    "Café owners and naïve tourists: a good, bad, good story.",
)

# Texts used across the tests: different lengths, contractions, punctuation runs, numbers, non-ASCII, spaces.
TEXTS = (
    "A good movie.",
    "I didn't like it: the plot was dull, 2 hours too long and the café scene unforgettably bad!!",
    "Well-made   and naïve",
)

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")
GPT2_EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 128


SUFFIXES = ("##s", "##ed", "##ing", "##ly", "##able", "##er", "##est", "##n't", "##'s")


def _wordpiece_vocab() -> dict[str, int]:
    """A deterministic WordPiece vocabulary: specials, characters, ##characters, a few suffixes, corpus words.

    (The tokenizers library's WordPiece and Unigram trainers break frequency ties differently from process to
    process, which would make the tiny models differ between runs; BPE training is deterministic.)
    """
    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: set[str] = set()
    for line in CORPUS:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    chars = sorted({c for w in words for c in w})
    pieces = list(BERT_SPECIALS) + chars + [f"##{c}" for c in chars] + list(SUFFIXES)
    pieces = list(dict.fromkeys(pieces + sorted(words)))  # first occurrence wins: ids are dense, no duplicates
    return {p: i for i, p in enumerate(pieces)}


@functools.cache
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """BERT-style uncased WordPiece with [CLS] … [SEP] and [PAD]/[UNK]/[MASK]."""
    tok = Tokenizer(models.WordPiece(vocab=_wordpiece_vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MODEL_MAX_LENGTH,
    )


def _byte_level_bpe(specials: tuple[str, ...], vocab_size: int = 420) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@functools.cache
def byte_bpe_tokenizer(unk: bool = True) -> PreTrainedTokenizerFast:
    """GPT-2/SmolLM2-style byte-level BPE: no specials added; <|endoftext|> is BOS, EOS (and UNK unless ``unk=False``)."""
    tok = _byte_level_bpe((GPT2_EOS,))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=GPT2_EOS,
        eos_token=GPT2_EOS,
        unk_token=GPT2_EOS if unk else None,
        model_max_length=MODEL_MAX_LENGTH,
    )


@functools.cache
def roberta_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """RoBERTa-style byte-level BPE with <s> … </s> and <pad>/<unk>/<mask>."""
    tok = _byte_level_bpe(ROBERTA_SPECIALS)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), add_prefix_space=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MODEL_MAX_LENGTH,
    )


@functools.cache
def metaspace_tokenizer(model: str = "bpe") -> PreTrainedTokenizerFast:
    """Llama/Mistral-style "▁" tokenizer (``model`` bpe | unigram) that prepends <s>; no pad, no mask token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, special_tokens=list(LLAMA_SPECIALS)))
    if model == "unigram":
        # Unigram over the (deterministic) BPE pieces of at most 3 characters (and the verbalizer words), each
        # scoring -1: Viterbi picks the fewest pieces, so it splits differently from the BPE ("▁the" → "▁t", "he").
        # Built rather than trained: the Unigram trainer is not deterministic across processes.
        vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
        keep = set(LLAMA_SPECIALS) | {v.replace(" ", "▁") for v in VERBALIZERS}
        pieces = [(p, 0.0 if p in LLAMA_SPECIALS else -1.0) for p, _ in vocab if p in keep or len(p) <= 3]
        unigram = Tokenizer(models.Unigram(pieces, unk_id=0))
        unigram.pre_tokenizer, unigram.decoder = tok.pre_tokenizer, tok.decoder
        tok = unigram
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=MODEL_MAX_LENGTH
    )


TOKENIZERS = {
    "bert": wordpiece_tokenizer,
    "roberta": roberta_bpe_tokenizer,
    "gpt2": byte_bpe_tokenizer,
    "llama": functools.partial(metaspace_tokenizer, "bpe"),
    "mistral": functools.partial(metaspace_tokenizer, "unigram"),
}
ENCODERS = ("bert", "roberta")
DECODERS = ("gpt2", "llama", "mistral")
# every (arch, kind) pair an ExplainedModel supports in these tests
CASES = tuple((a, "encoder") for a in ENCODERS) + tuple((a, k) for k in ("decoder", "prompted") for a in DECODERS)

TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZERS = (" bad", " good")


def tiny_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """A fresh copy of the cached tiny tokenizer of ``arch`` (ExplainedModel sets pad/padding side on it)."""
    import copy

    return copy.deepcopy(TOKENIZERS[arch]())


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerFast, num_labels: int = 2, seed: int = 0):
    """A 2-layer, hidden-32 config of ``arch`` sized to ``tokenizer``."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, MistralConfig, RobertaConfig

    # a wide init so that random models' predictions vary visibly from text to text
    common = {"vocab_size": len(tokenizer), "num_labels": num_labels, "initializer_range": 0.3}
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "bert":
        return BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=MODEL_MAX_LENGTH, pad_token_id=tokenizer.pad_token_id, **common,
        )  # fmt: skip
    if arch == "roberta":
        # RoBERTa positions start after padding_idx: 2 extra rows, like roberta-base's 514
        return RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=MODEL_MAX_LENGTH + 2, **ids, **common,
        )  # fmt: skip
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=MODEL_MAX_LENGTH, **ids, **common)
    cls = LlamaConfig if arch == "llama" else MistralConfig
    return cls(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH, **ids, **common,
    )  # fmt: skip


def tiny_model(arch: str, kind: str, tokenizer: PreTrainedTokenizerFast, num_labels: int = 2, seed: int = 0):
    """A random ``*ForSequenceClassification`` (encoder, decoder) or ``*ForCausalLM`` (prompted) in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = tiny_config(arch, tokenizer, num_labels)
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if kind == "prompted" else AutoModelForSequenceClassification
    return auto.from_config(config).eval()


def tiny_explained(arch: str, kind: str, tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0, **kw):
    """An ExplainedModel around a random tiny ``arch`` model of ``kind`` (encoder | decoder | prompted).

    Prompted models default to the template ``TEMPLATE`` and the single-token verbalizers ``VERBALIZERS``;
    ``kw`` goes to ExplainedModel (``mask``, ``max_length``, ``labels``, ...).
    """
    tokenizer = tokenizer or tiny_tokenizer(arch)
    if kind == "prompted":
        kw.setdefault("template", TEMPLATE)
        kw.setdefault("verbalizers", VERBALIZERS)
    num_labels = len(kw["labels"]) if kw.get("labels") else 2
    model = tiny_model(arch, kind, tokenizer, num_labels=num_labels, seed=seed)
    return ExplainedModel(model, tokenizer, kind, name=f"tiny-{arch}-{kind}", **kw)


def save_tiny_backbone(path) -> str:
    """Save a random tiny BERT encoder + WordPiece tokenizer (an attributor's backbone) at ``path``; returns it."""
    from transformers import AutoModel

    tok = tiny_tokenizer("bert")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert", tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def save_tiny_assets(root) -> dict[str, str]:
    """Paths of a saved tiny explained classifier, a saved tiny attributor backbone and a labelled JSONL file.

    The explained model is a RoBERTa encoder (byte-level BPE) and the backbone a BERT (WordPiece), so an attributor
    trained on them maps scores across tokenizers (``amlx.align``); the data are ``CORPUS`` with labels 0, 1, 0, ...
    """
    import json
    from pathlib import Path

    root = Path(root)
    explained = root / "explained"
    tiny_explained("roberta", "encoder").save_pretrained(explained)
    backbone = save_tiny_backbone(root / "backbone")
    data = root / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(CORPUS)))
    return {"explained": str(explained), "backbone": backbone, "data": str(data)}
