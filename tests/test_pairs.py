"""Sentence pairs (NLI): the data columns, the explained model's pair encoding, methods and metrics on pairs,
human rationales scored by word, and one ``explain.py evaluate`` run on a local NLI file."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

from amlx import methods
from amlx.data import TextClassificationData, datamodule, load_table
from amlx.data.rationales import DatasetRationaleError, rationale_tokens
from amlx.data.sources import DatasetColumnError
from amlx.errors import UserError
from amlx.evaluation import Evaluator
from amlx.jobs.cli import main
from amlx.jobs.evaluate import evaluate
from amlx.metrics import get as metric
from amlx.metrics.perturb import FILL, build_variants, n_units_for, replacement_id
from amlx.models.explained import PairInputError
from amlx.pairs import PAIR_JOIN, TextPair, inputs_of
from amlx.records import Attribution, load_jsonl, save_jsonl
from amlx.words import word_spans
from tests.test_device import BERT_FAMILY_ONLY, DECODER_ONLY, OPTIONS, SKIP
from tests.tiny import CASES, tiny_explained, tiny_model, tiny_tokenizer

NLI = ["entailment", "neutral", "contradiction"]
PAIR_TEMPLATE = "Premise: {text}\nHypothesis: {text_pair}\nLabel:"
PAIRS = [
    TextPair("A man plays a guitar.", "A person plays music."),
    TextPair("The plot was dull, two hours too long.", "A slow film."),
]


def pair_model(arch: str, kind: str, **kw):
    if kind == "prompted":
        kw.setdefault("template", PAIR_TEMPLATE)
    return tiny_explained(arch, kind, **kw)


@pytest.fixture(scope="module")
def bert():
    return tiny_explained("bert", "encoder", labels=NLI)


def test_a_pair_is_one_joined_text_with_the_spans_of_its_two_segments():
    pair = TextPair("A dog runs.", "An animal moves.")
    assert pair.joined == "A dog runs." + PAIR_JOIN + "An animal moves."
    assert [pair.joined[s:e] for s, e in pair.segments] == ["A dog runs.", "An animal moves."]
    assert TextPair.from_joined(pair.joined, pair.segments) == pair
    table = datasets.Dataset.from_dict({"text": ["a"], "text_pair": ["b"]})
    assert inputs_of(table) == [TextPair("a", "b")] and inputs_of({"text": ["a"]}) == ["a"]


@pytest.mark.parametrize("arch,kind", CASES)
def test_attributable_mask_covers_both_segments_and_excludes_the_separators(arch, kind):
    model = pair_model(arch, kind)
    enc = model.encode(PAIRS)
    ref = model.tokenizer([p.text for p in PAIRS], [p.text_pair for p in PAIRS], return_special_tokens_mask=True)
    for b, pair in enumerate(PAIRS):
        n = int(enc.attention_mask[b].sum())
        attributable = enc.attributable[b, :n].numpy()
        (s0, e0), (s1, e1) = enc.segments[b]
        assert enc.texts[b] == pair.joined and (enc.texts[b][s0:e0], enc.texts[b][s1:e1]) == (pair.text, pair.text_pair)
        off = enc.offsets[b, :n].numpy()[attributable]
        in_first, in_second = (off[:, 0] >= s0) & (off[:, 1] <= e0), (off[:, 0] >= s1) & (off[:, 1] <= e1)
        assert (in_first | in_second).all() and in_first.any() and in_second.any()
        # every word of both segments has a token: nothing of either segment is left out of the attribution
        words = set(enc.word_ids[b, :n][enc.attributable[b, :n]].tolist()) - {-1}  # -1: a whitespace-only piece
        assert words == set(range(len(word_spans(pair.joined))))
        if kind != "prompted":  # the only tokens left out are the tokenizer's own specials and separators
            assert n == len(ref["input_ids"][b])
            assert (~attributable).tolist() == [bool(m) for m in ref["special_tokens_mask"][b]]
    if arch == "bert":
        tokens = model.tokenizer.convert_ids_to_tokens(enc.input_ids[0].tolist())
        assert [t for t, a in zip(tokens, enc.attributable[0]) if not a] == ["[CLS]", "[SEP]", "[SEP]"]


def test_a_pair_gets_bert_token_types_on_the_id_and_the_embedding_paths(bert):
    enc = bert.encode(PAIRS)
    ref = bert.tokenizer([p.text for p in PAIRS], [p.text_pair for p in PAIRS], padding=True)
    # HF's convention: 1 on the second segment and its closing [SEP] (the sequence ids without the specials)
    expected = torch.tensor([[1 if s == 1 else 0 for s in ref.sequence_ids(b)] for b in range(len(PAIRS))])
    for b in range(len(PAIRS)):
        n = int(enc.attention_mask[b].sum())
        expected[b, n - 1] = 1
    types = bert.token_type_ids(enc.input_ids, enc.attention_mask)
    assert torch.equal(types, expected)
    by_hf = bert.hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask, token_type_ids=expected).logits
    x = bert.embed(enc.input_ids)
    torch.testing.assert_close(bert.logits(enc.input_ids, enc.attention_mask), by_hf)
    torch.testing.assert_close(bert.logits(inputs_embeds=x, attention_mask=enc.attention_mask, token_type_ids=types), by_hf)
    assert not torch.allclose(bert.logits(inputs_embeds=x, attention_mask=enc.attention_mask), by_hf)  # types matter
    single = bert.encode(["A man plays a guitar."])
    assert not bert.token_type_ids(single.input_ids, single.attention_mask).any()


def test_gradient_x_input_on_a_pair_differentiates_the_model_with_the_pair_token_types(bert):
    for rec in methods.get("gradient_x_input").attribute(PAIRS, bert, target=1):
        ids = torch.tensor([rec.input_ids])
        sep = ids[0].tolist().index(bert.tokenizer.sep_token_id)
        types = (torch.arange(len(rec)) > sep).long()[None]
        x = bert.embed(ids).detach().requires_grad_(True)
        bert.hf(inputs_embeds=x, token_type_ids=types).logits[0, 1].backward()
        np.testing.assert_allclose(rec.scores, (x.grad * x).sum(-1)[0].detach().numpy() * rec.attributable, atol=1e-5)


@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder"), ("gpt2", "prompted")])
def test_every_method_attributes_both_segments_of_a_pair_and_never_a_separator(arch, kind):
    model = pair_model(arch, kind)
    for name in methods.names():
        if name in SKIP | {"ensemble"} or name in (DECODER_ONLY if kind == "encoder" else BERT_FAMILY_ONLY):
            continue
        torch.manual_seed(0)
        for rec in methods.get(name, **OPTIONS.get(name, {})).attribute(PAIRS, model):
            assert rec.segments is not None and np.isfinite(rec.scores).all(), name
            assert (rec.scores[~rec.attributable] == 0).all(), name
            assert set(rec.segment_ids()[rec.attributable]) == {0, 1}, name
            assert np.abs(rec.scores[rec.segment_ids() == 1]).sum() > 0, name  # the hypothesis is attributed too


def test_deletion_and_masking_keep_the_separators_and_perturb_only_text_tokens_of_either_segment(bert):
    (rec, *_) = methods.get("random", seed=3).attribute(PAIRS, bert)
    ids, tok = torch.tensor(rec.input_ids), bert.tokenizer
    specials = np.flatnonzero(~rec.attributable)
    assert [rec.input_ids[i] for i in specials] == [tok.cls_token_id, tok.sep_token_id, tok.sep_token_id]
    segment = rec.segment_ids()
    for name in ("comp", "suff", "aopc_comp", "aopc_suff", "log_odds"):
        m = metric(name)
        keep = m.keep_masks(rec)  # [variants, tokens]
        assert keep[:, specials].all(), name  # the separators and [CLS] are in every variant
        changed = ~keep.numpy()
        assert {int(s) for s in segment[changed.any(0)]} == {0, 1}, name  # text tokens of both segments are hit
        rows = build_variants(ids, keep, m.perturbation, replacement_id(bert, m.perturbation))
        for row, k in zip(rows.tolist(), keep.tolist()):
            row = [t for t in row if t != FILL]
            if m.perturbation == "delete":  # [CLS] kept premise [SEP] kept hypothesis [SEP]
                assert row == [t for t, kept in zip(rec.input_ids, k) if kept], name
            else:  # same positions; only text tokens become [MASK]
                assert row == [t if kept else tok.mask_token_id for t, kept in zip(rec.input_ids, k)], name


def test_comp_and_suff_of_a_pair_equal_the_hand_computed_probability_drops(bert):
    """Top-20% of the 30 text tokens = 6: "man" (3 pieces) of the premise, "a", "music", "." of the hypothesis."""
    (rec,) = methods.get("random").attribute(PAIRS[:1], bert)
    tok = bert.tokenizer
    prem = tok(PAIRS[0].text, add_special_tokens=False)["input_ids"]
    hyp = tok(PAIRS[0].text_pair, add_special_tokens=False)["input_ids"]
    top = {("p", 1), ("p", 2), ("p", 3), ("h", 0), ("h", 11), ("h", 12)}
    assert rec.n_attributable == len(prem) + len(hyp) and n_units_for(rec.n_attributable, 20) == len(top)
    scores = [0.0] + [0.9 if ("p", i) in top else 0.1 for i in range(len(prem))] + [0.0]
    scores += [0.8 if ("h", i) in top else 0.2 for i in range(len(hyp))] + [0.0]
    rec.scores = np.array(scores)
    cls, sep = tok.cls_token_id, tok.sep_token_id

    def p(premise: list[int], hypothesis: list[int]) -> float:
        ids = [cls, *premise, sep, *hypothesis, sep]
        types = [0] * (len(premise) + 2) + [1] * (len(hypothesis) + 1)
        with torch.no_grad():
            logits = bert.hf(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits
        return float(logits.softmax(-1)[0, rec.target])

    p0 = p(prem, hyp)
    kept_p = [t for i, t in enumerate(prem) if ("p", i) not in top]
    kept_h = [t for i, t in enumerate(hyp) if ("h", i) not in top]
    top_p = [t for i, t in enumerate(prem) if ("p", i) in top]
    top_h = [t for i, t in enumerate(hyp) if ("h", i) in top]
    values = Evaluator(bert, ["comp", "suff"]).evaluate([rec])
    assert values["comp"][0] == pytest.approx(p0 - p(kept_p, kept_h), abs=1e-6)
    assert values["suff"][0] == pytest.approx(p0 - p(top_p, top_h), abs=1e-6)
    one_by_one = Evaluator(bert, ["comp", "suff"]).evaluate_one_by_one([rec])
    assert one_by_one["comp"][0] == pytest.approx(values["comp"][0], abs=1e-6)


def write_nli(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("premise_words,hypothesis_words", [
    ([1, 6], [0, 3]),  # word indices
    ("1,6", "0,3"),  # e-SNLI's Sentence{1,2}_Highlighted_1 strings
    ([[1, 2], [6, 7]], [[0, 1], [3, 4]]),  # ERASER [start, end) token spans
    ([{"start_token": 1, "end_token": 2}, {"start_token": 6, "end_token": 7}],
     [{"start_token": 0, "end_token": 1}, {"start_token": 3, "end_token": 4}]),  # ERASER evidences
])  # fmt: skip
def test_rationale_columns_in_every_accepted_form_become_word_spans_of_their_segment(tmp_path, premise_words,
                                                                                       hypothesis_words):  # fmt: skip
    rows = [{"premise": "Two (tall) dogs run in the park.", "hypothesis": "Dogs sleep on grass.", "label": "neutral",
             "premise_rationale": premise_words, "hypothesis_rationale": hypothesis_words},
            {"premise": "A cat.", "hypothesis": "An animal.", "label": "entailment", "premise_rationale": premise_words[:0],
             "hypothesis_rationale": "{}" if isinstance(hypothesis_words, str) else []}]  # fmt: skip
    table = load_table(write_nli(tmp_path / "nli.jsonl", rows), NLI)
    assert list(table["text"]) == ["Two (tall) dogs run in the park.", "A cat."] and list(table["label"]) == [1, 0]
    assert list(table["text_pair"]) == ["Dogs sleep on grass.", "An animal."]
    columns = ("text", "text_pair")
    words = [[(columns[seg], row[columns[seg]][s:e]) for seg, s, e in row["rationale"]] for row in table]
    # "(tall)", "park." and "grass." lose their punctuation; nothing highlighted in the second row
    assert words == [[("text", "tall"), ("text", "park"), ("text_pair", "Dogs"), ("text_pair", "grass")], []]


def _word_record(model, pair: TextPair, word_scores: list[float], spans) -> Attribution:
    (rec,) = methods.get("random").attribute([pair], model)
    rec.scores = np.where(rec.word_ids >= 0, np.asarray(word_scores)[rec.word_ids], 0.0)
    rec.ground_truth = rationale_tokens(rec, spans)
    return rec


def test_word_level_rationale_agreement_equals_a_hand_computation(bert, tmp_path):
    rows = [{"premise": "A man plays a guitar.", "hypothesis": "A person plays music.", "label": 0,
             "premise_rationale": [1, 4], "hypothesis_rationale": [1, 3]}]  # fmt: skip
    spans = load_table(write_nli(tmp_path / "nli.jsonl", rows), NLI)["rationale"][0]
    # words: A man plays a guitar . | A person plays music .   (ground truth: man, guitar, person, music)
    scores = [0.1, 0.9, 0.2, 0.0, 0.8, 0.05, 0.3, 0.7, 0.1, 0.25, 0.0]
    rec = _word_record(bert, PAIRS[0], scores, spans)
    gt_words = sorted({int(w) for w in rec.word_ids[rec.ground_truth]})
    assert [rec.words[w] for w in gt_words] == ["man", "guitar", "person", "music"]
    # top-4 words: man, guitar, person, A(hypothesis) → 3 of 4 right
    assert metric("token_f1", unit="word")(rec) == pytest.approx(2 * 3 / (4 + 4))
    # predicted spans: [man] [guitar] | [A person] ; true spans: [man] [guitar] | [person] [music]
    # IoU: 1, 1, |{person}| / |{A, person}| = 0.5 ≥ 0.5 → precision 3/3, recall 3/4
    assert metric("iou_f1", unit="word")(rec) == pytest.approx(2 * 1 * 0.75 / 1.75)
    # ranked: man ✓, guitar ✓, person ✓, A ✗, music ✓ → AP = (1 + 1 + 1 + 4/5) / 4
    assert metric("auprc", unit="word")(rec) == pytest.approx(0.95)
    evaluator = Evaluator(bert, ["token_f1", "iou_f1", "auprc"], agreement_unit="word")
    assert evaluator.evaluate([rec])["auprc"][0] == pytest.approx(0.95)


def test_an_iou_span_never_runs_across_the_two_segments(bert):
    # ground truth: the premise's last word "guitar" and the hypothesis' first "A"; predicted: "." and "A"
    spans = [[0, 14, 20], [1, 0, 1]]
    scores = [0.0, 0.0, 0.0, 0.0, 0.1, 0.9, 0.8, 0.0, 0.0, 0.0, 0.0]
    rec = _word_record(bert, PAIRS[0], scores, spans)
    # by segment the true spans are [guitar] | [A], the predicted [.] | [A]: one of two matched each way (F1 1/2);
    # one span "." "A" across the join would match [A] at IoU 1/2 and give precision 1, recall 1/2 (F1 2/3)
    assert metric("iou_f1", unit="word")(rec) == pytest.approx(0.5)


def test_pair_records_round_trip_and_single_text_records_keep_the_old_format(bert, tmp_path):
    recs = methods.get("random").attribute(PAIRS, bert)
    (single,) = methods.get("random").attribute(["A man plays a guitar."], bert)
    assert "segments" not in single.to_dict() and single.segments is None
    path = save_jsonl([*recs, single], tmp_path / "r.jsonl")
    back = load_jsonl(path)
    assert [r.segments for r in back] == [r.segments for r in recs] + [None]
    assert [r.to_dict() for r in back] == [r.to_dict() for r in [*recs, single]]
    np.testing.assert_array_equal(back[0].segment_ids(), recs[0].segment_ids())
    old = single.to_dict()  # a line written before pairs existed has no segments field and loads as before
    assert Attribution.from_dict(old).segments is None
    with pytest.raises(ValueError, match="segments"):
        Attribution(**{**recs[0].__dict__, "segments": [(0, 5)]})


def test_truncation_cuts_the_longer_segment_and_keeps_both_separators():
    model = tiny_explained("bert", "encoder", max_length=12)
    long = TextPair("The plot was dull, two hours too long and the ending bad.", "A slow film.")
    with pytest.warns(UserWarning, match="truncated"):
        enc = model.encode([long])
    assert enc.truncated == [True] and enc.input_ids.shape[1] == 12
    (s0, e0), (s1, e1) = enc.segments[0]
    assert enc.texts[0][s1:e1] == "A slow film." and long.text.startswith(enc.texts[0][s0:e0])
    tokens = model.tokenizer.convert_ids_to_tokens(enc.input_ids[0].tolist())
    assert [t for t, a in zip(tokens, enc.attributable[0]) if not a] == ["[CLS]", "[SEP]", "[SEP]"]


def test_pairs_mixed_with_texts_or_a_template_without_a_text_pair_slot_are_refused():
    with pytest.raises(PairInputError, match="mixes"):
        tiny_explained("bert", "encoder").encode([PAIRS[0], "a text"])
    with pytest.raises(PairInputError, match=r"\{text_pair\}"):
        tiny_explained("gpt2", "prompted").encode(PAIRS)
    with pytest.raises(PairInputError, match="single texts"):
        pair_model("gpt2", "prompted").encode(["a text"])


@pytest.fixture
def nli_run(tmp_path):
    """A tiny 3-class BERT saved to disk and a local NLI JSONL (string labels, rationales on both segments)."""
    tok = tiny_tokenizer("bert")
    model = tiny_model("bert", "encoder", tok, num_labels=3)
    model.config.id2label, model.config.label2id = dict(enumerate(NLI)), {n: i for i, n in enumerate(NLI)}
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    premises = ["A man plays a guitar.", "Two dogs run in a park.", "A woman reads a book.", "Kids play outside."]
    hypotheses = ["A person plays music.", "Animals are sleeping.", "Someone is reading.", "Children are indoors."]
    rows = [{"premise": p, "hypothesis": h, "label": NLI[i % 3], "premise_rationale": [1], "hypothesis_rationale": "0,1"}
            for i, (p, h) in enumerate(zip(premises * 3, hypotheses * 3))]  # fmt: skip
    data = write_nli(tmp_path / "nli.jsonl", rows)
    return tmp_path, str(tmp_path / "model"), data


def test_evaluate_runs_end_to_end_on_a_local_nli_file_and_writes_a_table(nli_run):
    tmp_path, model, data = nli_run
    metrics = ["comp", "suff", "aopc_comp", "token_f1", "iou_f1", "auprc"]
    res = evaluate(model=model, dataset=data, n=5, chunk_size=2, progress=False, methods=["random", "gradient_x_input"],
                   metrics=metrics, agreement_unit="word", data={"test_size": 5, "val_size": 2},
                   out_dir=str(tmp_path / "run"))  # fmt: skip
    assert {(r["method"], r["metric"]) for r in res["rows"]} == {(m, k) for m in ("random", "gradient_x_input") for k in metrics}
    assert all(np.isfinite(r["mean"]) for r in res["rows"])
    recs = load_jsonl(tmp_path / "run" / "attributions" / "gradient_x_input.jsonl")
    assert len(recs) == 5 and all(r.segments is not None and r.ground_truth.any() for r in recs)
    assert (tmp_path / "run" / "table.md").exists() and json.loads((tmp_path / "run" / "table.json").read_text())
    # the same run from the command line, as a user types it
    argv = ["evaluate", "--model", model, "--dataset", data, "--n", "3", "--methods", "random", "--metrics", "comp",
            "token_f1", "--agreement_unit", "word", "--data", '{"test_size": 5, "val_size": 2}', "--progress", "false",
            "--out_dir", str(tmp_path / "cli")]  # fmt: skip
    assert main(argv) == 0
    assert "token_f1" in (tmp_path / "cli" / "table.md").read_text()


def test_bad_nli_inputs_give_one_clear_user_error(nli_run, tmp_path, capsys):
    _, model, _ = nli_run
    no_hyp = write_nli(tmp_path / "no_hyp.jsonl", [{"premise": "A man sleeps.", "label": "neutral"}] * 9)
    with pytest.raises(DatasetColumnError, match="'premise' column but no 'hypothesis' column"):
        load_table(no_hyp, NLI)
    with pytest.raises(DatasetColumnError, match="no text_pair column 'hyp'"):
        load_table(no_hyp, NLI, text_pair_column="hyp")
    rows = [{"premise": "A man sleeps.", "hypothesis": "He rests.", "label": "neutral", "premise_rationale": [5],
             "hypothesis_rationale": [0]}]  # fmt: skip
    bad = write_nli(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DatasetColumnError, match="no rationale column 'hyp_words'"):
        load_table(bad, NLI, rationale_columns=["premise_rationale", "hyp_words"])
    with pytest.raises(DatasetColumnError, match="one rationale column per segment"):
        load_table(bad, NLI, rationale_columns=["premise_rationale"])
    with pytest.raises(DatasetRationaleError, match="row 0, column premise_rationale.*out of range.*3 whitespace"):
        load_table(bad, NLI)
    assert issubclass(DatasetColumnError, UserError) and issubclass(DatasetRationaleError, UserError)
    argv = ["evaluate", "--model", model, "--dataset", no_hyp, "--methods", "random", "--out_dir", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "hypothesis" in err[-1] and "Traceback" not in "\n".join(err)


def test_multi_nli_matched_validation_is_the_validation_split(monkeypatch):
    table = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"text": [f"{name} {i}" for i in range(n)], "text_pair": ["h"] * n,
                                          "label": [i % 3 for i in range(n)]})
        for name, n in (("train", 30), ("validation_matched", 6), ("validation_mismatched", 7))
    })  # fmt: skip
    monkeypatch.setattr(datamodule, "load_table", lambda *a, **k: table)
    dm = TextClassificationData("multi_nli", labels=NLI, test_size=5)
    assert list(dm.split("val")["text"]) == list(table["validation_matched"]["text"])
    assert len(dm.split("test")) == 5 and len(dm.split("train")) == 25
    batch = next(iter(dm.test_dataloader()))
    assert inputs_of(batch)[0] == TextPair(dm.split("test")["text"][0], "h")


def test_a_classifier_fine_tuned_on_pairs_reads_the_second_segment(tmp_path):
    """Only the hypothesis decides the label: a classifier that saw the premise alone could not learn it."""
    import lightning as L

    from amlx.models.classifier import ClassifierModule

    tok = tiny_tokenizer("bert")
    tiny_model("bert", "encoder", tok).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    premises = ["a movie", "the plot", "the cast", "a film", "the score", "the story"]
    rows = [{"premise": p, "hypothesis": h, "label": y} for p in premises for h, y in
            (("it is good", 1), ("it is bad", 0), ("really great fun", 1), ("terrible and dull", 0))] * 2  # fmt: skip
    data = write_nli(tmp_path / "pairs.jsonl", rows)
    dm = TextClassificationData(dataset=data, test_size=12, val_size=6, batch_size=8, eval_batch_size=12, seed=0)
    torch.manual_seed(0)
    module = ClassifierModule(model=str(tmp_path / "base"), kind="encoder", lr=3e-3, warmup_ratio=0.0)
    trainer = L.Trainer(max_steps=80, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    acc, n = module.test_result
    assert n == 12 and acc >= 0.9


def test_hub_nli_labels_are_mapped_by_name_to_the_explained_models_label_order(monkeypatch):
    """esnli's ClassLabel ids follow (entailment, neutral, contradiction); the model's labels may be in another order."""
    names = datasets.ClassLabel(names=NLI)
    split = datasets.Dataset.from_dict({"premise": ["A dog runs.", "A cat.", "Kids play."],
                                        "hypothesis": ["An animal moves.", "A dog.", "Kids sleep."], "label": [0, 1, 2]},
                                       features=datasets.Features({"premise": datasets.Value("string"),
                                                                   "hypothesis": datasets.Value("string"),
                                                                   "label": names}))  # fmt: skip
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: datasets.DatasetDict({"test": split}))
    model_order = ["contradiction", "entailment", "neutral"]
    table = load_table("esnli", model_order)["test"]
    assert [model_order[i] for i in table["label"]] == NLI and list(table["text_pair"]) == list(split["hypothesis"])
    assert list(load_table("esnli", NLI)["test"]["label"]) == [0, 1, 2]  # the same order: unchanged


def test_the_esnli_rationales_config_runs_on_a_csv_in_the_esnli_format(nli_run, tmp_path, monkeypatch):
    """configs/eval/nli_esnli_rationales.yaml as documented, on a made-up file with e-SNLI's columns and strings."""
    import csv
    from pathlib import Path

    _, model, _ = nli_run
    config = Path(__file__).resolve().parent.parent / "configs" / "eval" / "nli_esnli_rationales.yaml"
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    header = ["pairID", "gold_label", "Sentence1", "Sentence2", "Explanation_1", "Sentence1_marked_1",
              "Sentence2_marked_1", "Sentence1_Highlighted_1", "Sentence2_Highlighted_1"]  # fmt: skip
    examples = [("A man plays a guitar.", "A person plays music.", "entailment", "1,4", "1,3"),
                ("Two dogs run.", "Dogs sleep.", "contradiction", "2", "1"),
                ("A woman reads.", "She is happy.", "neutral", "{}", "2")]  # fmt: skip
    with open("data/esnli_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(2600):  # the config cuts 2000 test and 500 validation rows
            p, h, y, hp, hh = examples[i % 3]
            w.writerow([f"{i}", y, p, h, "because", p, h, hp, hh])
    argv = ["evaluate", "--config", str(config), "--model", model, "--n", "4", "--methods", "random",
            "--progress", "false", "--out_dir", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    recs = load_jsonl(tmp_path / "run" / "attributions" / "random.jsonl")
    assert all(r.segments is not None for r in recs) and any(r.ground_truth.any() for r in recs)
    table = json.loads((tmp_path / "run" / "table.json").read_text())
    assert {row["metric"] for row in table["rows"]} >= {"token_f1", "iou_f1", "auprc", "comp"}


def test_explain_on_an_nli_dataset_writes_pair_records_and_html(nli_run):
    tmp_path, model, data = nli_run
    argv = ["explain", "--model", model, "--dataset", data, "--n", "2", "--methods", "gradient_x_input",
            "--data", json.dumps({"test_size": 5, "val_size": 2, "labels": NLI}), "--terminal", "false",
            "--out_dir", str(tmp_path / "ex")]  # fmt: skip
    assert main(argv) == 0
    recs = load_jsonl(tmp_path / "ex" / "attributions.jsonl")
    assert [TextPair.from_joined(r.text, r.segments) for r in recs] == inputs_of(
        TextClassificationData(data, labels=NLI, test_size=5, val_size=2).split("test").select(range(2)))
    assert recs[0].segments is not None and (tmp_path / "ex" / "attributions.html").exists()
