"""The top-k explanation attack (``amlx.attack``) and ``explain.py robustness`` on tiny models with known behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from amlx import methods
from amlx.attack import TopKAttack, ranks
from amlx.attributors import AMLAttributor
from amlx.jobs.robustness import aggregate, robustness
from amlx.methods.base import differentiable_names
from tests.bow import bow_explained
from tests.tiny import CORPUS, tiny_config, tiny_explained, tiny_model, tiny_tokenizer

TEXTS = list(CORPUS[:6])
GRADIENT_METHODS = ("saliency", "gradient_x_input", "integrated_gradients")


@pytest.fixture(scope="module")
def bert():
    return tiny_explained("bert", "encoder")


@pytest.fixture(scope="module")
def paml(bert, tmp_path_factory):
    """pAML with a tiny BERT backbone that shares the explained tiny BERT's WordPiece tokenizer."""
    path = tmp_path_factory.mktemp("backbone")
    tok = tiny_tokenizer("bert")
    torch.manual_seed(1)
    AutoModel.from_config(tiny_config("bert", tok)).save_pretrained(path)
    tok.save_pretrained(path)
    torch.manual_seed(0)
    att = AMLAttributor(backbone=str(path), num_labels=2).eval()
    att.set_explained(bert)
    return methods.get("paml", attributor=att)


def get(name: str, paml):
    return paml if name == "paml" else methods.get(name)


def predicted(model, enc):
    return model.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask).argmax(-1)


@pytest.mark.parametrize("name", [*GRADIENT_METHODS, "paml"])
def test_scores_from_embeds_at_the_real_embeddings_equal_the_methods_scores(bert, paml, name):
    method, enc = get(name, paml), bert.encode(TEXTS)
    target = predicted(bert, enc)
    probs = {"probs": bert.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask)} if method.takes_probs else {}
    expected = method.scores(enc, bert, target, **probs)
    x = bert.embed(enc.input_ids).detach().requires_grad_(True)
    got = method.scores_from_embeds(x, enc, bert, target)
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=1e-4)
    (grad,) = torch.autograd.grad((got * enc.attributable).sum(), x)  # differentiable in the embeddings
    assert grad[enc.attributable].abs().sum() > 0


def test_the_four_differentiable_methods_are_the_ones_that_can_be_attacked():
    assert set(differentiable_names()) == {*GRADIENT_METHODS, "paml"}
    with pytest.raises(NotImplementedError, match="top-k attack"):
        methods.get("random").scores_from_embeds(None, None, None, None)


@pytest.mark.parametrize("name", [*GRADIENT_METHODS, "paml"])
def test_the_attack_lowers_the_top_k_sum_with_the_prediction_kept(bert, paml, name):
    res = TopKAttack(steps=8).run(get(name, paml), bert, bert.encode(TEXTS))
    held = [r for r in res if r["prediction_held"]]
    assert len(held) >= 4
    assert all(r["topk_sum_adv"] < r["topk_sum"] for r in held)
    assert all(r["topk_sum_change"] == pytest.approx(r["topk_sum"] - r["topk_sum_adv"]) for r in held)
    assert all(r["k"] == max(1, int(np.floor(0.15 * n))) for r, n in zip(res, bert.encode(TEXTS).attributable.sum(1)))


def test_the_constrained_objective_keeps_the_probability_change_smaller(bert):
    enc, method = bert.encode(TEXTS), methods.get("saliency")
    dp = {obj: np.mean([abs(r["prob_change"]) for r in TopKAttack(objective=obj, steps=20).run(method, bert, enc)])
          for obj in ("unconstrained", "constrained")}  # fmt: skip
    assert dp["constrained"] < dp["unconstrained"]


class Spy:
    """Wraps a method and records every embedding batch the attack evaluates it at."""

    def __init__(self, method) -> None:
        self.method, self.seen = method, []

    def scores_from_embeds(self, embeds, enc, model, target):
        self.seen.append(embeds.detach().clone())
        return self.method.scores_from_embeds(embeds, enc, model, target)


def test_delta_never_exceeds_epsilon_and_moves_only_attributable_word_embeddings(bert):
    enc = bert.encode(TEXTS)
    spy = Spy(methods.get("gradient_x_input"))
    res = TopKAttack(epsilon=0.05, lr=0.2, update="sign", steps=6).run(spy, bert, enc)
    e0 = bert.embed(enc.input_ids)
    moved = [(x - e0).abs().amax(-1) for x in spy.seen]  # [batch, tokens] per iterate
    assert len(spy.seen) == 7 and moved[0].max() == 0  # δ₀ = 0, then six updates
    assert max(float(m.max()) for m in moved) == pytest.approx(0.05)  # the steps overshoot ε: clipped to it
    assert all(float(m[~enc.attributable].max()) == 0 for m in moved)  # specials and padding never move
    assert all(r["linf"] <= 0.05 + 1e-7 for r in res)


def test_a_changed_prediction_is_flagged_and_excluded_from_the_aggregates():
    # bag of words: p(positive) = σ(0.1 + w_good + w_bad) = σ(0.1); G×I = ½w, so B = {good} and lowering its
    # share lowers w_good: the first sign step (lr 1) flips the prediction, and so does every later one
    bow = bow_explained()
    res = TopKAttack(update="sign", lr=1.0, steps=5).run(methods.get("gradient_x_input"), bow, bow.encode(["good bad"]))
    assert res[0]["prediction_held"] is False and res[0]["attacked"] is False
    assert res[0]["prob"] > 0.5 > res[0]["prob_adv"]
    held = {"rank_change": 1.0, "topk_changed": 1.0, "topk_sum_change": 0.2, "prob_change": -0.1,
            "prediction_held": True, "attacked": True}  # fmt: skip
    flagged = {**res[0], "rank_change": 99.0}
    table = aggregate([held, flagged])
    assert table["adv_rank_change"][::2] == (1.0, 1) and table["adv_prob_change"][0] == pytest.approx(0.1)
    assert table["adv_success"][::2] == (0.5, 2)  # the share counts every example


def test_a_linear_model_has_constant_saliency_so_nothing_changes_and_the_attack_stops_early():
    bow = bow_explained()  # logits linear in the embeddings: ∂logit/∂e = ±½ whatever e is
    res = TopKAttack(steps=100, patience=20).run(methods.get("saliency"), bow, bow.encode(["a good movie", "the plot was dull and slow"]))  # fmt: skip
    for r in res:
        assert r["rank_change"] == 0 and r["topk_changed"] == 0 and r["topk_intersection"] == 1
        assert r["topk_sum_change"] == 0 and r["linf"] == 0 and r["prediction_held"] and not r["attacked"]
        assert r["steps"] == 20  # δ did not move for `patience` steps


def test_a_batch_is_attacked_as_each_example_alone(bert):
    enc, method, spec = bert.encode(TEXTS[:3]), methods.get("saliency"), TopKAttack(steps=4)
    together = spec.run(method, bert, enc)
    alone = [spec.run(method, bert, enc.select([i]))[0] for i in range(3)]
    for a, b in zip(together, alone):
        assert a["topk"] == b["topk"] and a["prediction_held"] == b["prediction_held"]
        for key in ("topk_sum_adv", "prob_adv", "linf", "rank_change"):
            assert a[key] == pytest.approx(b[key], abs=1e-4)


def test_ranks_order_attributable_tokens_by_score_with_ties_by_position():
    scores = torch.tensor([[9.0, 0.5, 2.0, 0.5, 7.0]])
    mask = torch.tensor([[False, True, True, True, False]])
    assert ranks(scores, mask)[0, 1:4].tolist() == [1, 0, 2]


def test_paml_is_refused_when_the_attributor_tokenizes_differently(paml):
    roberta = tiny_explained("roberta", "encoder")
    att = AMLAttributor(backbone=paml.attributor.hparams.backbone, num_labels=2).eval()
    att.set_explained(roberta)
    enc = roberta.encode(TEXTS[:2])
    with pytest.raises(ValueError, match="tokenize the texts exactly"):
        att.scores_from_embeds(roberta.embed(enc.input_ids), enc)


def test_robustness_job_writes_examples_and_a_table_and_resumes(tmp_path):
    tok = tiny_tokenizer("bert")
    model_dir = tmp_path / "model"
    tiny_model("bert", "encoder", tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(CORPUS[:12])))
    kw = dict(model=str(model_dir), methods=["saliency", "gradient_x_input"], dataset=str(data), n=3, batch_size=2,
              attack={"steps": 3}, data={"test_size": 4, "val_size": 2}, out_dir=str(tmp_path / "run"),
              progress=False)  # fmt: skip
    res = robustness(**kw)
    assert {(r["method"], r["variant"].split(",")[-1]) for r in res["rows"]} == {
        (m, o) for m in kw["methods"] for o in ("unconstrained", "constrained")}  # fmt: skip
    examples = (tmp_path / "run" / "examples" / "saliency.constrained.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in examples] == [0, 1, 2]
    table = json.loads((tmp_path / "run" / "table.json").read_text())
    assert {r["metric"] for r in table["rows"]} == {"adv_rank_change", "adv_topk_changed", "adv_topk_sum_change",
                                                     "adv_prob_change", "adv_success"}  # fmt: skip
    again = robustness(**kw)  # everything on disk: nothing recomputed, same table
    assert again["rows"] == res["rows"]
    assert len((tmp_path / "run" / "examples" / "saliency.constrained.jsonl").read_text().splitlines()) == 3
