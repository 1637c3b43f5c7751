"""The Attribution record: validation, word aggregation, JSONL round trip and schema versioning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from amlx.records import SCHEMA, Attribution, SchemaError, load_jsonl, save_jsonl
from tests.bow import bow_explained, bow_record


@pytest.fixture(scope="module")
def model():
    return bow_explained()


def fields(rec: Attribution, **change) -> dict:
    d = {k: getattr(rec, k) for k in rec.__dataclass_fields__}
    d.update(change)
    return d


def test_scores_length_mismatch_names_both_lengths(model):
    rec = bow_record(model, "good movie")
    with pytest.raises(ValueError, match=r"scores has 3 entries but the example has 4 tokens"):
        Attribution(**fields(rec, scores=np.zeros(3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_raise_naming_method_and_example(model, bad):
    rec = bow_record(model, "good movie")
    with pytest.raises(ValueError, match=r"method 'ig/50 steps' on example 'ex-7'.*NaN or infinite"):
        Attribution(**fields(rec, scores=[0, bad, 0, 0], method="ig", variant="50 steps", example_id="ex-7"))


def test_record_from_a_batch_strips_padding_and_zeroes_non_attributable_scores(model):
    from amlx.methods import get

    recs = get("random").attribute(["good movie", "the plot was slow and dull"], model)
    assert [len(r) for r in recs] == [4, 8]
    assert all(r.scores[~r.attributable].sum() == 0 and r.tokens[0] == "[CLS]" for r in recs)
    assert recs[0].target_label in model.labels and recs[0].method == "random"


def test_word_scores_aggregate_tokens_of_each_word(model):
    rec = bow_record(model, "badly good", scores=[1.0, 3.0, 2.0])  # bad ##ly | good
    assert rec.words == ["badly", "good"]
    assert np.allclose(rec.word_scores("max"), [3, 2])
    assert np.allclose(rec.word_scores("mean"), [2, 2])
    assert np.allclose(rec.word_scores("sum"), [4, 2])
    with pytest.raises(ValueError, match="max"):
        rec.word_scores("median")


def test_spans_to_tokens_marks_overlapping_attributable_tokens(model):
    rec = bow_record(model, "good badly slow")
    assert rec.spans_to_tokens([(5, 10)]).tolist() == [False, False, True, True, False, False]


def test_spans_to_tokens_leaves_out_a_token_that_starts_where_the_span_ends(model):
    rec = bow_record(model, "good badly, slow")  # [CLS] good bad ##ly , slow [SEP]; "bad" is 5..8, "##ly" 8..10
    assert rec.spans_to_tokens([(5, 8)]).tolist() == [False, False, True, False, False, False, False]
    assert rec.spans_to_tokens([(8, 10)]).tolist() == [False, False, False, True, False, False, False]
    assert rec.spans_to_tokens([(4, 5)]).tolist() == [False] * 7  # the space between two words


def test_jsonl_round_trip_and_append(model, tmp_path):
    recs = [bow_record(model, "good movie", ground_truth=["good"]), bow_record(model, "the plot was slow")]
    recs[0].meta["fold"] = 3
    path = save_jsonl(recs[:1], tmp_path / "a.jsonl")
    save_jsonl(recs[1:], path, append=True)
    back = load_jsonl(path)
    assert len(back) == 2
    for a, b in zip(recs, back):
        assert a.to_dict() == b.to_dict()
    assert back[0].ground_truth.tolist() == [False, True, False, False] and back[1].ground_truth is None
    assert all(json.loads(line)["schema"] == SCHEMA for line in path.read_text().splitlines())


def test_loading_an_unknown_schema_version_says_what_to_do(model, tmp_path):
    d = bow_record(model, "good movie").to_dict()
    path = tmp_path / "future.jsonl"
    path.write_text(json.dumps({**d, "schema": "amlx.attribution/2"}) + "\n")
    with pytest.raises(SchemaError, match=r"future.jsonl:1 has schema 'amlx.attribution/2'.*upgrade amlx"):
        load_jsonl(path)
    path.write_text(json.dumps({k: v for k, v in d.items() if k != "schema"}) + "\n")
    with pytest.raises(SchemaError, match="not an amlx attribution record"):
        load_jsonl(path)
