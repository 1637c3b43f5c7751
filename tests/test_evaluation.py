"""The batched Evaluator equals the plain one-variant-at-a-time path, on tiny random and the real MiniLM models."""

from __future__ import annotations

import numpy as np
import pytest

from amlx import assets
from amlx.evaluation import Evaluator
from amlx.methods import get
from tests.bow import PERTURBATION_METRICS
from tests.tiny import TEXTS

# short and medium texts with contractions and punctuation runs: different lengths, so batches are padded
EVAL_TEXTS = [TEXTS[0], "I didn't like it: the plot was dull!!", TEXTS[2]]
PERTURBATION = list(PERTURBATION_METRICS)


def assert_batched_equals_one_by_one(model, records, **kw):
    ev = Evaluator(model, PERTURBATION, **kw)
    batched, plain = ev.evaluate(records), ev.evaluate_one_by_one(records)
    for name in PERTURBATION:
        assert batched[name].shape == (len(records),)
        np.testing.assert_allclose(batched[name], plain[name], atol=1e-5, rtol=0, err_msg=name)
    return ev


@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder"), ("gpt2", "prompted")])
def test_batched_evaluation_equals_one_by_one(explained, arch, kind):
    model = explained(arch, kind)
    records = get("gradient_x_input").attribute(EVAL_TEXTS[:2], model) + get("random").attribute(
        EVAL_TEXTS[2], model
    )
    ev = assert_batched_equals_one_by_one(model, records, max_tokens=512)
    s = ev.stats
    assert (
        s["unique"] < s["variants"]
    )  # e.g. Comp at 0 tokens and AS with every word added are the input itself
    assert 1 < s["forward_passes"] < s["unique"]


def test_overrides_apply_to_every_named_perturbation_metric_and_chunking_does_not_change_values(explained):
    model = explained("bert", "encoder")
    records = get("random", seed=3).attribute(list(TEXTS), model)
    ev = Evaluator(model, ["comp", "suff"], perturbation="pad", unit="word", rounding="ceil")
    assert all((m.perturbation, m.unit, m.rounding) == ("pad", "word", "ceil") for m in ev.metrics)
    one_pass = Evaluator(
        model, ["comp", "suff"], perturbation="pad", unit="word", rounding="ceil", max_tokens=10**6
    )
    a, b = ev.evaluate(records), one_pass.evaluate(records)
    assert one_pass.stats["forward_passes"] == 1
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6)


def test_records_from_another_tokenizer_are_rejected(explained):
    bert, llama = explained("bert", "encoder"), explained("llama", "decoder")
    rec = get("random").attribute(list(TEXTS[:1]), bert)[0]
    rec.input_ids = [10**6] * len(rec.input_ids)
    with pytest.raises(ValueError, match="evaluate records with the model that produced them"):
        Evaluator(llama, ["comp"]).evaluate([rec])


def test_a_record_whose_target_is_not_a_class_of_the_model_is_rejected():
    from dataclasses import replace

    from tests.bow import bow_explained, bow_record

    model = bow_explained()  # 2 classes
    rec = replace(bow_record(model, "good movie"), probs=np.array([0.2, 0.3, 0.5]), target=2)  # from a 3-class model
    with pytest.raises(ValueError, match="evaluate records with the model that produced them"):
        Evaluator(model, ["comp"]).evaluate([rec])


def test_every_pass_stays_within_max_tokens():
    from tests.bow import bow_explained, bow_record

    model = bow_explained()
    texts = ["good great fun movie the plot was slow dull bad", "the bad movie was awful", "a great fun plot"]
    records = [bow_record(model, t) for t in texts]
    budget = 3 * max(len(r) for r in records)  # room for 3 rows of the longest variant, more of the short ones
    shapes, probs = [], model.probs

    def recording(input_ids=None, attention_mask=None, inputs_embeds=None):
        shapes.append(tuple(input_ids.shape))
        return probs(input_ids, attention_mask, inputs_embeds)

    model.probs = recording
    ev = Evaluator(model, ["aopc_comp", "aopc_suff"], max_tokens=budget)
    ev.evaluate(records)
    assert len(shapes) == ev.stats["forward_passes"] > 1
    assert all(rows * tokens <= budget for rows, tokens in shapes), shapes
    assert sum(rows for rows, _ in shapes) == ev.stats["unique"]


@pytest.mark.integration
def test_batched_evaluation_equals_one_by_one_on_minilm():
    if not (assets.local_path("amlx:minilm") / ".complete").exists():
        pytest.skip(
            "MiniLM weights are not in the local cache; fetch them with scripts/test.sh (python -m amlx.assets)"
        )
    from amlx.models.explained import ExplainedModel

    model = ExplainedModel.from_pretrained("amlx:minilm", num_labels=2)
    records = get("gradient_x_input").attribute(EVAL_TEXTS, model)
    assert_batched_equals_one_by_one(model, records)


def test_deleting_every_token_of_an_input_without_specials_leaves_one_mask_token(explained):
    import torch

    model = explained("gpt2", "decoder")  # GPT-2 adds no special tokens
    rec = get("random").attribute(["bad"], model)[0]
    assert rec.attributable.all()
    alone = torch.tensor([[model.mask_token_id]])
    p_alone = float(model.probs(input_ids=alone, attention_mask=torch.ones_like(alone))[0, rec.target])
    suff = Evaluator(model, ["suff"]).evaluate([rec])["suff"][0]
    assert suff == pytest.approx(rec.probs[rec.target] - p_alone, abs=1e-5)


def test_max_rows_caps_each_pass_without_changing_values(explained):
    model = explained("llama", "decoder")
    records = get("random", seed=1).attribute(list(TEXTS), model)
    wide = Evaluator(model, ["aopc_comp", "aopc_suff"], max_tokens=10**6, max_rows=10**6)
    narrow = Evaluator(model, ["aopc_comp", "aopc_suff"], max_tokens=10**6, max_rows=3)
    a, b = wide.evaluate(records), narrow.evaluate(records)
    assert wide.stats["forward_passes"] == 1
    assert narrow.stats["forward_passes"] == -(-narrow.stats["unique"] // 3)  # ⌈unique / 3⌉ passes of ≤ 3 rows
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6)
