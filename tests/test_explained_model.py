"""Specification of ExplainedModel on tiny random models: every property is checked by value."""

from __future__ import annotations

import json
import unicodedata

import pytest
import torch

from amlx.models.explained import (
    EmptyTextError,
    ExplainedModel,
    MaskTokenError,
    UnknownLabelError,
    last_positions,
)
from amlx.words import word_spans
from tests.tiny import (
    CASES,
    DECODERS,
    MODEL_MAX_LENGTH,
    TEMPLATE,
    TEXTS,
    VERBALIZERS,
    byte_bpe_tokenizer,
    tiny_explained,
    tiny_model,
    tiny_tokenizer,
)

CAUSAL = [c for c in CASES if c[1] != "encoder"]
ENCODER_CASES = [c for c in CASES if c[1] == "encoder"]
PROMPTED = [c for c in CASES if c[1] == "prompted"]
ATOL = 1e-6
NFD_TEXT = "The cafe\u0301 scene, nai\u0308ve but fun"  # decomposed accents: still one word each
LONG_TEXT = " ".join(["The plot is dull, the cast is good and the café scene is long."] * 12)


def case_id(case: tuple[str, str]) -> str:
    return "-".join(case)


cases = pytest.mark.parametrize("case", CASES, ids=case_id)
causal_cases = pytest.mark.parametrize("case", CAUSAL, ids=case_id)
prompted_cases = pytest.mark.parametrize("case", PROMPTED, ids=case_id)


def attributable_rows(m: ExplainedModel, enc):
    """Per row: (token ids, offsets, text) of the attributable tokens, in order."""
    for b, text in enumerate(enc.texts):
        keep = enc.attributable[b]
        yield enc.input_ids[b][keep].tolist(), enc.offsets[b][keep].tolist(), text


def surface(m: ExplainedModel, token_id: int) -> str:
    """The text a token stands for, without the "##" / "Ġ" / "▁" markers, normalized like its tokenizer."""
    piece = m.tokenizer.convert_ids_to_tokens(token_id)
    if piece.startswith("##"):
        piece = piece[2:]
    return m.tokenizer.backend_tokenizer.decoder.decode([piece]).replace("▁", " ")


def normalize(m: ExplainedModel, s: str) -> str:
    norm = m.tokenizer.backend_tokenizer.normalizer
    return (norm.normalize_str(s) if norm is not None else s).strip()


# ------------------------------------------------------------------------------------------------ forward
@cases
def test_probabilities_sum_to_one(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    p = m.probs(enc.input_ids, enc.attention_mask)
    assert p.shape == (len(TEXTS), 2)
    torch.testing.assert_close(p.sum(-1), torch.ones(len(TEXTS)), atol=1e-6, rtol=0)
    assert (p > 0).all()


@cases
def test_inputs_embeds_path_equals_input_ids_path(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    by_ids = m.logits(enc.input_ids, enc.attention_mask)
    by_embeds = m.logits(inputs_embeds=m.embed(enc.input_ids), attention_mask=enc.attention_mask)
    torch.testing.assert_close(by_embeds, by_ids, atol=ATOL, rtol=0)


@cases
def test_batched_prediction_equals_one_at_a_time(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    assert len(set(enc.attention_mask.sum(1).tolist())) == len(TEXTS), "texts must differ in length"
    assert (enc.attention_mask[:, 0] == 1).all(), "padding is on the right"
    batched = m.predict(list(TEXTS))
    single = torch.cat([m.predict(t) for t in TEXTS])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    # the random tiny models do tell the texts apart, so the comparison above is not vacuous
    assert (single[:, 0].max() - single[:, 0].min()) > 0.01


@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_logits_equal_hf_head_on_unpadded_input(explained, arch):
    m = explained(arch, "decoder")
    enc = m.encode(TEXTS[1])
    torch.testing.assert_close(m.logits(enc.input_ids), m.hf(input_ids=enc.input_ids).logits, atol=ATOL, rtol=0)


def test_last_positions_is_last_real_token():
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_positions(am).tolist() == [2, 4, 0]


# --------------------------------------------------------------------------------------- attributable tokens
@cases
def test_attributable_mask_excludes_special_and_padding_tokens(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    special = torch.isin(enc.input_ids, torch.tensor(m.tokenizer.all_special_ids))
    real = enc.attention_mask.bool()
    assert not (enc.attributable & special & real).any()
    assert not (enc.attributable & ~real).any()
    if case[0] in ("bert", "roberta"):  # [CLS]/<s> first, [SEP]/</s> last
        last = last_positions(enc.attention_mask)
        assert not enc.attributable[:, 0].any()
        assert not enc.attributable[torch.arange(len(TEXTS)), last].any()
    if m.tokenizer.bos_token_id is not None and (enc.input_ids[:, 0] == m.tokenizer.bos_token_id).all():
        assert not enc.attributable[:, 0].any()


@cases
def test_attributable_tokens_cover_every_character_of_the_text(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    for _, offsets, text in attributable_rows(m, enc):
        covered = set()
        for s, e in offsets:
            covered.update(range(s, e))
        assert {i for i, ch in enumerate(text) if not ch.isspace()} <= covered, text


@prompted_cases
def test_prompted_attributable_mask_excludes_every_template_token(explained, case):
    m = explained(*case)
    prefix, suffix = TEMPLATE.split("{text}")
    enc = m.encode(list(TEXTS))
    for b in range(len(TEXTS)):
        ids, attr = enc.input_ids[b][enc.attention_mask[b].bool()], enc.attributable[b][enc.attention_mask[b].bool()]
        where = attr.nonzero().flatten()
        first, last = int(where[0]), int(where[-1])
        assert attr[first : last + 1].all(), "the text is one contiguous block of attributable tokens"
        before = m.tokenizer.decode(ids[:first], skip_special_tokens=True)
        after = m.tokenizer.decode(ids[last + 1 :], skip_special_tokens=True)
        assert before.strip() == prefix.strip()
        assert after.strip() == suffix.strip()
        # and the prompt as a whole is exactly what the tokenizer makes of the filled-in template
        assert ids.tolist() == m.tokenizer(TEMPLATE.format(text=TEXTS[b]))["input_ids"]


@cases
def test_offsets_of_attributable_tokens_index_into_the_text(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    unk = m.tokenizer.unk_token_id
    for ids, offsets, text in attributable_rows(m, enc):
        for tid, (s, e) in zip(ids, offsets):
            assert 0 <= s < e <= len(text)
            piece = surface(m, tid)
            if tid == unk or "\ufffd" in piece:  # unknown char, or part of a multi-byte char's bytes
                assert not text[s:e].isascii()
            elif not piece.strip():  # a lone marker: a space, or the one Metaspace prepends to the first char
                assert text[s:e].isspace() or (s, e) == (0, 1)
            else:
                assert normalize(m, text[s:e]) == normalize(m, piece), (text[s:e], piece)


@cases
def test_non_attributable_offsets_are_zero(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    assert (enc.offsets[~enc.attributable] == 0).all()


# ----------------------------------------------------------------------------------------------- word ids
def expected_word_id(text: str, start: int, end: int) -> int:
    """By hand: the word that holds the token's first non-space character, -1 for whitespace-only tokens."""
    spans = word_spans(text)
    for i in range(start, end):
        if not text[i].isspace():
            return next(w for w, (s, e) in enumerate(spans) if s <= i < e)
    return -1


@cases
def test_word_ids_group_pieces_of_one_word_in_word_order(explained, case):
    m = explained(*case)
    enc = m.encode([*TEXTS, NFD_TEXT])
    for b, text in enumerate(enc.texts):
        wid = enc.word_ids[b]
        expected = [
            expected_word_id(text, s, e) if a else -1
            for (s, e), a in zip(enc.offsets[b].tolist(), enc.attributable[b].tolist())
        ]
        assert wid.tolist() == expected
        seen = wid[wid >= 0]
        assert (seen[1:] >= seen[:-1]).all(), "word ids follow word order"
        # every word has a token, unless a piece merged across the boundary ("e," in "scene,") took its start
        spans = word_spans(text)
        merged = {w for w, (ws, _) in enumerate(spans) for s, e in enc.offsets[b].tolist() if s < ws < e}
        assert set(seen.tolist()) | merged == set(range(len(spans)))
    # "unforgettably" is split into several pieces by every tiny tokenizer; they all belong to one word
    text = enc.texts[1]
    w = next(i for i, (s, e) in enumerate(word_spans(text)) if text[s:e] == "unforgettably")
    assert (enc.word_ids[1] == w).sum() >= 2
    # "didn't" is one word however the tokenizer splits the apostrophe
    w = next(i for i, (s, e) in enumerate(word_spans(text)) if text[s:e] == "didn't")
    pieces = enc.attributable[1] & (enc.word_ids[1] == w)
    assert text[int(enc.offsets[1][pieces, 0].min()) : int(enc.offsets[1][pieces, 1].max())].strip() == "didn't"


# ------------------------------------------------------------------------------ intermediate predictions
@causal_cases
def test_intermediate_prediction_at_last_position_equals_final_probs(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    inter = m.intermediate_probs(enc.input_ids, enc.attention_mask)
    assert inter.shape == (*enc.input_ids.shape, 2)
    final = m.probs(enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(inter[torch.arange(len(TEXTS)), last_positions(enc.attention_mask)], final)


@causal_cases
def test_intermediate_prediction_at_i_equals_prefix_prediction(explained, case):
    m = explained(*case)
    enc = m.encode("I didn't like it: dull, 2 hours too long!")
    inter = m.intermediate_probs(enc.input_ids, enc.attention_mask)[0]
    n = enc.input_ids.shape[1]
    positions = sorted({*range(0, n, 3), n - 2, n - 1})  # every third position keeps the suite fast
    prefixes = torch.cat([m.probs(enc.input_ids[:, : i + 1]) for i in positions])
    torch.testing.assert_close(inter[positions], prefixes, atol=1e-5, rtol=0)
    assert (inter[:, 0].max() - inter[:, 0].min()) > 0.01, "predictions change along the text"


def test_intermediate_predictions_need_a_decoder(explained):
    m = explained("bert", "encoder")
    enc = m.encode(TEXTS[0])
    with pytest.raises(ValueError, match="decoder"):
        m.intermediate_probs(enc.input_ids, enc.attention_mask)


# --------------------------------------------------------------------------------------------- prompted
@prompted_cases
def test_prompted_probs_equal_softmax_over_verbalizer_logits_by_hand(explained, case):
    m = explained(*case)
    tok = m.tokenizer
    verbalizer_ids = [tok(v, add_special_tokens=False)["input_ids"][0] for v in VERBALIZERS]
    for text in TEXTS:
        ids = torch.tensor([tok(TEMPLATE.format(text=text))["input_ids"]])
        with torch.no_grad():
            next_token = m.hf(input_ids=ids).logits[0, -1]
        expected = next_token[verbalizer_ids].softmax(-1)
        torch.testing.assert_close(m.predict(text)[0], expected, atol=1e-6, rtol=0)


def test_prompted_template_must_hold_the_text():
    with pytest.raises(ValueError, match=r"\{text\}"):
        tiny_explained("llama", "prompted", template="Review: Sentiment:")


def test_prompted_verbalizer_must_be_one_token():
    with pytest.raises(ValueError, match="exactly one token"):
        tiny_explained("llama", "prompted", verbalizers=(" unforgettably", " good"))


# ------------------------------------------------------------------------------------------- save / load
def test_encoder_save_and_reload_predicts_identically(explained, tmp_path):
    m = explained("roberta", "encoder")
    m.save_pretrained(tmp_path)
    again = ExplainedModel.from_pretrained(str(tmp_path))
    assert (again.kind, again.labels, again.mask_token_id) == (m.kind, m.labels, m.mask_token_id)
    assert again.encode(list(TEXTS)).input_ids.tolist() == m.encode(list(TEXTS)).input_ids.tolist()
    torch.testing.assert_close(again.predict(list(TEXTS)), m.predict(list(TEXTS)), atol=0, rtol=0)


def test_prompted_save_and_reload_keeps_template_and_verbalizers(tmp_path):
    m = tiny_explained("gpt2", "prompted", labels=["neg", "pos"], template="Text: {text} Label:")
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "amlx_model.json").read_text())["kind"] == "prompted"
    again = ExplainedModel.from_pretrained(str(tmp_path))
    assert (again.kind, again.template, again.verbalizers, again.labels) == (
        "prompted", "Text: {text} Label:", list(VERBALIZERS), ["neg", "pos"]
    )  # fmt: skip
    torch.testing.assert_close(again.predict(list(TEXTS)), m.predict(list(TEXTS)), atol=1e-6, rtol=0)


def test_lora_decoder_save_and_reload_predicts_like_before_and_unlike_the_base(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    tok = tiny_tokenizer("llama")
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_model("llama", "decoder", tok).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)  # so the adapter's base path is local
    lora = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would make the adapter a no-op
            p.data.normal_(0, 0.5)
    m = ExplainedModel(lora, tok, "decoder")
    before = m.predict(list(TEXTS))
    m.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_config.json").exists()

    again = ExplainedModel.from_pretrained(str(adapter_dir))
    torch.testing.assert_close(again.predict(list(TEXTS)), before, atol=1e-5, rtol=0)
    plain = ExplainedModel.from_pretrained(str(base_dir), kind="decoder")
    assert (plain.predict(list(TEXTS)) - before).abs().max() > 1e-3, "the adapter changes the predictions"


# -------------------------------------------------------------------------------------------- attentions
@cases
def test_attentions_give_one_row_stochastic_map_per_layer(explained, case):
    m = explained(*case)
    enc = m.encode(list(TEXTS))
    maps = m.attentions(enc.input_ids, enc.attention_mask)
    assert len(maps) == m.hf.config.num_hidden_layers == 2
    real = enc.attention_mask.bool()
    n = enc.input_ids.shape[1]
    for a in maps:
        assert a.shape == (len(TEXTS), m.hf.config.num_attention_heads, n, n)
        rows = a.sum(-1).transpose(1, 2)[real]  # [real queries, heads]
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
        to_padding = a.transpose(1, 3)[~real]  # weights on padding keys: [padded keys, queries, heads]
        assert to_padding.numel() > 0 and to_padding.abs().max() < 1e-6
        if case[1] != "encoder":
            assert torch.triu(a, diagonal=1).abs().max() < 1e-6, "decoders never attend to later tokens"


# ---------------------------------------------------------------------------------------- mask embedding
@cases
def test_default_mask_is_mask_token_for_encoders_and_unk_for_decoders(explained, case):
    m = explained(*case)
    expected = m.tokenizer.mask_token_id if case[1] == "encoder" else m.tokenizer.unk_token_id
    assert expected is not None and m.mask_token_id == expected
    assert torch.equal(m.mask_embedding(), m.embedding_layer.weight[expected])


@pytest.mark.parametrize("case", [("bert", "encoder"), ("llama", "decoder")], ids=case_id)
def test_mask_strategies_pad_explicit_id_and_learned(case):
    pad = tiny_explained(*case, mask="pad")
    assert torch.equal(pad.mask_embedding(), pad.embedding_layer.weight[pad.tokenizer.pad_token_id])
    explicit = tiny_explained(*case, mask="id:7")
    assert explicit.mask_token_id == 7
    assert torch.equal(explicit.mask_embedding(), explicit.embedding_layer.weight[7])
    learned = tiny_explained(*case, mask="learned", trainable=True)
    torch.testing.assert_close(learned.mask_embedding(), learned.embedding_layer.weight.mean(0))
    assert learned.mask_embedding().requires_grad


@pytest.mark.parametrize("spec", ["mask", "auto"])
def test_missing_mask_token_raises_and_names_the_options(spec):
    # the tiny Llama tokenizer has no mask token; the GPT-2 one without unk has neither
    case = ("llama", "decoder", None) if spec == "mask" else ("gpt2", "decoder", byte_bpe_tokenizer(unk=False))
    with pytest.raises(MaskTokenError) as err:
        tiny_explained(case[0], case[1], tokenizer=case[2], mask=spec)
    for option in ("mask", "unk", "pad", "id:N", "learned"):
        assert option in str(err.value)


@pytest.mark.parametrize("spec", ["id:100000", "id:-1", "zeros"])
def test_bad_mask_strategy_raises(spec):
    with pytest.raises(MaskTokenError):
        tiny_explained("bert", "encoder", mask=spec)


# --------------------------------------------------------------------------------------------- bad input
@cases
@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_or_whitespace_text_raises(explained, case, text):
    m = explained(*case)
    with pytest.raises(EmptyTextError, match="empty or whitespace"):
        m.encode(text)
    with pytest.raises(EmptyTextError, match="text 1 "):
        m.encode([TEXTS[0], text])


def test_no_texts_raises(explained):
    with pytest.raises(EmptyTextError):
        explained("bert", "encoder").encode([])


@pytest.mark.parametrize("case", [("bert", "encoder"), ("roberta", "encoder"), ("gpt2", "decoder")], ids=case_id)
def test_long_text_is_truncated_to_a_prefix_with_a_warning(case):
    m = tiny_explained(*case, max_length=16)
    with pytest.warns(UserWarning, match="truncated"):
        enc = m.encode([LONG_TEXT, TEXTS[0]])
    assert enc.truncated == [True, False]
    assert enc.input_ids.shape[1] == 16
    kept = enc.texts[0]
    assert 0 < len(kept) < len(LONG_TEXT) and LONG_TEXT.startswith(kept)
    assert enc.texts[1] == TEXTS[0]
    assert int(enc.offsets[0, :, 1].max()) == len(kept), "the kept text ends where the last kept token ends"
    if case[1] == "encoder":  # the closing special token is kept
        assert enc.input_ids[0, -1] == m.tokenizer.sep_token_id
    assert m.predict(LONG_TEXT).shape == (1, 2)


@cases
def test_default_max_length_fits_the_position_embeddings(case):
    tok = tiny_tokenizer(case[0])
    tok.model_max_length = int(1e30)  # a tokenizer saved without a length: the model's positions decide
    m = tiny_explained(*case, tokenizer=tok)
    assert m.max_length == MODEL_MAX_LENGTH  # RoBERTa's 130 position rows hold 128 positions
    with pytest.warns(UserWarning, match="truncated"):
        enc = m.encode(LONG_TEXT + LONG_TEXT)
    assert enc.input_ids.shape[1] <= MODEL_MAX_LENGTH
    assert m.probs(enc.input_ids, enc.attention_mask).shape == (1, 2)


@prompted_cases
def test_prompted_truncation_keeps_the_template_suffix(case):
    m = tiny_explained(*case, max_length=24)
    with pytest.warns(UserWarning, match="truncated"):
        enc = m.encode(LONG_TEXT)
    assert enc.truncated == [True]
    assert enc.input_ids.shape[1] <= 24
    kept = enc.texts[0]
    assert 0 < len(kept) < len(LONG_TEXT) and LONG_TEXT.startswith(kept)
    assert enc.input_ids[0].tolist() == m.tokenizer(TEMPLATE.format(text=kept))["input_ids"]
    # the tokens after the text are exactly those that follow an untruncated text
    short = m.encode("A good movie.")
    after = enc.input_ids[0][int(enc.attributable[0].nonzero().max()) + 1 :]
    short_after = short.input_ids[0][int(short.attributable[0].nonzero().max()) + 1 :]
    assert after.tolist() == short_after.tolist()
    assert m.tokenizer.decode(after).strip() == TEMPLATE.split("{text}")[1].strip()


def test_label_index_accepts_names_and_indices(explained):
    m = explained("bert", "encoder")
    assert m.labels == ["negative", "positive"]
    assert [m.label_index("negative"), m.label_index("positive"), m.label_index(1)] == [0, 1, 1]
    assert m.label_index(torch.tensor(1)) == 1  # a 0-d integer tensor, as argmax returns


@pytest.mark.parametrize("label", ["neutral", "Positive", 2, -1, True, 1.0, torch.tensor(0.0), torch.tensor(2)])
def test_unknown_label_raises(explained, label):
    with pytest.raises(UnknownLabelError, match="label set"):
        explained("bert", "encoder").label_index(label)


def test_custom_labels_name_the_classes():
    m = tiny_explained("llama", "decoder", labels=["sad", "neutral", "happy"])
    assert m.num_labels == 3 and m.label_index("happy") == 2
    assert m.predict(TEXTS[0]).shape == (1, 3)


def test_surface_helper_handles_non_ascii():
    # guards the helper the offset test relies on: "café" round-trips through the byte-level decoder
    m = tiny_explained("gpt2", "decoder")
    ids = m.tokenizer("café", add_special_tokens=False)["input_ids"]
    assert unicodedata.normalize("NFC", "".join(surface(m, i) for i in ids)) == "café"
