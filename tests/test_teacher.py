"""Amortization from teacher maps: the loss, its gradients, offset alignment, refusals, and teacher-map files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from amlx.attributors import AMLAttributor
from amlx.attributors.teacher import TeacherBatch, TeacherMismatchError, teacher_loss, teacher_row
from amlx.data import TextClassificationData
from amlx.jobs.explain import explain
from amlx.models import ExplainedModel
from amlx.records import load_jsonl, save_jsonl
from tests.test_aml_training import save_tiny_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def teacher_file(assets, tmp_path_factory):
    """Occlusion maps of the first 12 train rows of the tiny data set, written by the explain job in chunks of 5."""
    out = tmp_path_factory.mktemp("teacher-maps")
    explain(model=assets["explained"], methods=["occlusion"], dataset=assets["data"], split="train", n=12,
            data={"val_size": 8, "test_size": 4}, out_dir=str(out), html=False, terminal=False, chunk_size=5)  # fmt: skip
    return out / "attributions.jsonl"


def attributor(assets, **kw) -> AMLAttributor:
    att = AMLAttributor(backbone=assets["backbone"], num_labels=2, **kw)
    att.set_explained(ExplainedModel.from_pretrained(assets["explained"]))
    return att


def datamodule(assets, teacher, **kw) -> TextClassificationData:
    return TextClassificationData(dataset=assets["data"], val_size=8, test_size=4, batch_size=4, seed=0,
                                  teacher=str(teacher), **kw)  # fmt: skip


def test_teacher_loss_is_zero_when_the_map_equals_the_teacher_up_to_a_positive_affine_map():
    t = torch.tensor([[0.3, -0.2, 0.9, 0.0, 5.0], [1.0, 2.0, -1.0, 0.5, 0.0]])
    valid = torch.tensor([[True] * 4 + [False], [True] * 5])
    for kind in ("zmse", "listnet", "zmse+listnet"):
        assert teacher_loss(t, t, valid, kind).abs().max() < 1e-6
        assert teacher_loss(3.0 * t - 7.0, t, valid, kind).abs().max() < 1e-5
        assert (teacher_loss(-t, t, valid, kind) > 0.1).all()  # the reversed order is far from it


def test_teacher_loss_of_a_reversed_ranking_equals_the_hand_values():
    s = torch.tensor([[1.0, 2.0, 3.0]])
    t = torch.tensor([[3.0, 2.0, 1.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    # z-scores (population sd) of (1, 2, 3): (−√1.5, 0, √1.5); reversed: each end differs by 2√1.5 → (6 + 0 + 6)/3
    assert teacher_loss(s, t, valid, "zmse").item() == pytest.approx(4.0, rel=1e-5)
    z = math.sqrt(1.5)
    zt, zs = [z, 0.0, -z], [-z, 0.0, z]
    p = [math.exp(v) / sum(math.exp(u) for u in zt) for v in zt]
    q = [math.exp(v) / sum(math.exp(u) for u in zs) for v in zs]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert teacher_loss(s, t, valid, "listnet").item() == pytest.approx(kl, rel=1e-5)
    q2 = [math.exp(v / 2) / sum(math.exp(u / 2) for u in zs) for v in zs]
    p2 = [math.exp(v / 2) / sum(math.exp(u / 2) for u in zt) for v in zt]
    kl2 = sum(pi * math.log(pi / qi) for pi, qi in zip(p2, q2))
    assert teacher_loss(s, t, valid, "listnet", temperature=2.0).item() == pytest.approx(kl2, rel=1e-5)
    assert teacher_loss(s, t, valid, "zmse+listnet").item() == pytest.approx(4.0 + kl, rel=1e-5)


def test_examples_without_a_ranking_to_learn_add_nothing():
    s = torch.tensor([[0.1, 0.7, 0.2], [0.4, 0.9, 0.3]])
    t = torch.tensor([[2.0, 2.0, 2.0], [5.0, 1.0, 1.0]])  # constant teacher; one valid token
    valid = torch.tensor([[True, True, True], [False, True, False]])
    for kind in ("zmse", "listnet"):
        assert teacher_loss(s, t, valid, kind).tolist() == [0.0, 0.0]


def test_teacher_scores_move_to_the_attributors_tokens_by_character_overlap(assets, teacher_file):
    """RoBERTa BPE teacher tokens → BERT WordPiece attributor tokens: each gets the mean of the teacher tokens it overlaps."""
    recs = load_jsonl(teacher_file)[:4]
    for r in recs:  # distinct scores per token, so a wrong alignment shows
        r.scores = np.where(r.attributable, np.arange(len(r.tokens), dtype=float) * 1.5 + 0.25, 0.0)
    att = attributor(assets)
    src = att.tokenize([r.text for r in recs])
    got = TeacherBatch.from_rows([teacher_row(r) for r in recs]).on_tokens(src.offsets, src.valid)
    for b, r in enumerate(recs):
        spans = [(s, e, v) for (s, e), v, ok in zip(r.offsets.tolist(), r.scores, r.attributable) if ok]
        for j in np.flatnonzero(src.valid[b].numpy()):
            a0, a1 = src.offsets[b, j].tolist()
            hit = [v for s, e, v in spans if s < a1 and a0 < e]
            assert hit, f"attributor token {a0}:{a1} of {r.text!r} overlaps no teacher token"
            assert got[b, j].item() == pytest.approx(float(np.mean(hit)), abs=1e-6)
    assert (got[~src.valid] == 0).all()


def test_the_teacher_term_sends_gradients_to_the_attributor_only(assets, teacher_file):
    att = attributor(assets, lambda_p=0.0, lambda_a=0.0, lambda_inv=0.0, lambda_teacher=1.0)
    recs = load_jsonl(teacher_file)[:4]
    rows = [teacher_row(r) for r in recs]
    out = att([r.text for r in recs], teacher=rows)
    assert set(out.terms) == {"loss", "teacher"}
    assert torch.allclose(out.terms["loss"], out.terms["teacher"])
    assert (out.terms["teacher"] > 0).all()  # a random head does not rank like occlusion
    out.terms["loss"].mean().backward()
    assert att.head[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in att.backbone.parameters())
    assert all(p.grad is None for p in att.explained.parameters())  # F stays frozen
    assert not any(torch.is_tensor(v) and v.requires_grad for v in rows[0].values())


def test_the_teacher_term_adds_to_the_aml_loss_with_its_weight(assets, teacher_file):
    recs = load_jsonl(teacher_file)[:3]
    rows = [teacher_row(r) for r in recs]
    texts = [r.text for r in recs]
    torch.manual_seed(0)
    att = attributor(assets, lambda_teacher=0.5).eval()
    out = att(texts, teacher=rows)
    aml = out.terms["pred"] + out.terms["sparsity"] + out.terms["inverse"]
    assert torch.allclose(out.terms["loss"], aml + 0.5 * out.terms["teacher"], atol=1e-6)
    att.hparams.lambda_teacher = 0.0
    assert "teacher" not in att(texts, teacher=rows).terms


def test_training_refuses_teacher_maps_made_for_another_explained_model(assets, teacher_file):
    att = attributor(assets, lambda_teacher=1.0)
    rec = load_jsonl(teacher_file)[0]
    row = teacher_row(rec)
    with pytest.raises(TeacherMismatchError, match="computed for 'another-model'"):
        att([rec.text], teacher=[{**row, "model": "another-model"}])
    with pytest.raises(TeacherMismatchError, match="other token ids"):
        att([rec.text], teacher=[{**row, "input_ids": row["input_ids"][:-2] + [5, 6]}])
    with pytest.raises(TeacherMismatchError, match="differs from the training text"):
        att([rec.text + " extra"], teacher=[row])


def test_data_module_trains_on_the_rows_with_teacher_maps_and_carries_them(assets, teacher_file):
    dm = datamodule(assets, teacher_file, max_train_examples=10)
    train = dm.split("train")
    assert len(train) == 10 and train["index"] == list(range(10))
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["teacher"]) == 4
    by_text = {r.text: r for r in load_jsonl(teacher_file)}
    for text, row in zip(batch["text"], batch["teacher"]):
        assert row["scores"] == by_text[text].scores.tolist() and row["text"] == text
    assert "teacher" not in next(iter(dm.val_dataloader()))


def test_data_module_refuses_teacher_records_of_other_texts(assets, teacher_file, tmp_path):
    recs = load_jsonl(teacher_file)
    recs[1].text = recs[1].text[:10]  # what a model with a short max length kept of the text: accepted
    recs[2].text = recs[2].text + " (edited)"
    save_jsonl(recs, tmp_path / "edited.jsonl")
    with pytest.raises(TeacherMismatchError, match="other splits") as err:
        datamodule(assets, tmp_path / "edited.jsonl").setup()
    assert "/train/2 " in str(err.value)  # the truncated record 1 passed; the edited one is named
    for r in recs:
        r.example_id = "elsewhere/" + r.example_id
    save_jsonl(recs, tmp_path / "renamed.jsonl")
    with pytest.raises(TeacherMismatchError, match="no record"):
        datamodule(assets, tmp_path / "renamed.jsonl").setup()


def test_explain_job_in_chunks_resumes_after_a_torn_write_without_duplicates(assets, tmp_path):
    kw = dict(model=assets["explained"], methods=["occlusion", "random"], dataset=assets["data"], split="train",
              n=11, data={"val_size": 8, "test_size": 4}, html=False, terminal=False)  # fmt: skip
    whole = explain(**kw, out_dir=str(tmp_path / "whole"))
    path = tmp_path / "chunked" / "attributions.jsonl"
    explain(**kw, out_dir=str(path.parent), chunk_size=4)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:6]) + lines[6][: len(lines[6]) // 2])  # killed while writing line 7
    again = explain(**kw, out_dir=str(path.parent), chunk_size=4)
    saved = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [(d["method"], d["example_id"]) for d in saved]
    assert len(keys) == len(set(keys)) == 22
    assert [(r.method, r.example_id) for r in again] == [(r.method, r.example_id) for r in whole]
    for a, b in zip(again, whole):
        if a.method == "occlusion":  # deterministic: chunking changes only the padding of its passes
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        assert a.meta["model"] == assets["explained"]


def test_faml_from_an_amortized_attributor_needs_and_uses_its_own_lambdas(assets):
    from amlx.attributors import FAML, aml_loss

    att = attributor(assets, lambda_p=0.0, lambda_a=0.0, lambda_inv=0.0, lambda_teacher=1.0)
    with pytest.raises(ValueError, match="lambdas"):
        FAML(att, steps=2)
    texts = ["A good movie, a good cast and a good score.", "Terrible dialogue, terrible pacing, terrible ending."]
    res = FAML(att, steps=2, lambdas=[1.0, 0.5, 2.0]).attribute(texts)
    y = res.probs.float()  # soft conditioning: y_v = p
    for s in range(3):
        want = aml_loss(att.explained, res.enc, res.maps[:, s], y, (1.0, 0.5, 2.0))["loss"]
        torch.testing.assert_close(res.losses[:, s], want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(res.maps[:, 0], res.maps[:, 2])  # the non-zero loss moved the maps


def test_sharded_explain_runs_concatenate_to_the_unsharded_run(assets, tmp_path):
    """``start`` splits one teacher run over processes: the shards' files, concatenated, hold the same records."""
    from amlx.jobs.explain import TextSourceError

    kw = dict(model=assets["explained"], methods=["occlusion", "random"], dataset=assets["data"], split="train",
              data={"val_size": 8, "test_size": 4}, html=False, terminal=False, chunk_size=3)  # fmt: skip
    whole = explain(**kw, n=10, out_dir=str(tmp_path / "whole"))
    first = explain(**kw, n=6, out_dir=str(tmp_path / "a"))
    second = explain(**kw, n=100, start=6, out_dir=str(tmp_path / "b"))  # n past the end: the split's last row
    n_train = len(TextClassificationData(dataset=assets["data"], val_size=8, test_size=4, seed=0).split("train"))
    assert len(second) == 2 * (n_train - 6)
    merged = {(r.method, r.example_id): r for r in first + second}
    for r in whole:
        got = merged[r.method, r.example_id]
        assert got.text == r.text and got.meta["model"] == r.meta["model"]
        if r.method == "occlusion":  # deterministic; random draws per call from its own seed
            np.testing.assert_allclose(got.scores, r.scores, atol=1e-5)
    assert {r.example_id for r in second}.isdisjoint({r.example_id for r in first})
    with pytest.raises(TextSourceError, match="start=10000 is outside"):
        explain(**kw, n=3, start=10000, out_dir=str(tmp_path / "c"))
    with pytest.raises(TextSourceError, match="dataset split only"):
        explain(model=assets["explained"], methods=["random"], texts=["a b"], start=1, out_dir=str(tmp_path / "d"))


def test_init_from_starts_from_a_checkpoints_weights_and_its_own_checkpoint_reloads_without_that_file(assets, tmp_path):
    from amlx.attributors.aml import ExplainedMismatchError

    source = attributor(assets, lambda_teacher=1.0)
    torch.manual_seed(3)
    with torch.no_grad():
        source.head[2].bias.fill_(0.7)
        source.class_embeddings.normal_()
    trainer = __import__("lightning").pytorch.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(source)
    trainer.save_checkpoint(tmp_path / "source.ckpt")
    warm = attributor(assets, lambda_teacher=2.0, lambda_p=0.5, init_from=str(tmp_path / "source.ckpt"))
    for (k, a), b in zip(source.state_dict().items(), warm.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert warm.hparams.lambda_teacher == 2.0 and warm.hparams.lambda_p == 0.5  # this run's arguments, not the file's
    texts = ["A good movie, a good cast.", "Terrible pacing."]
    torch.testing.assert_close(warm.attribute(texts), source.attribute(texts))
    trainer.strategy.connect(warm)
    trainer.save_checkpoint(tmp_path / "warm.ckpt")
    (tmp_path / "source.ckpt").unlink()
    again = AMLAttributor.from_checkpoint(str(tmp_path / "warm.ckpt"), explained=warm.explained)
    torch.testing.assert_close(again.attribute(texts), source.attribute(texts))
    with pytest.raises(ExplainedMismatchError, match="classes"):
        AMLAttributor(backbone=assets["backbone"], num_labels=3, init_from=str(tmp_path / "warm.ckpt"))


def test_a_teacher_named_by_rank_zeros_file_includes_the_other_ranks_files_and_refuses_two_maps_of_one_example(
    assets, teacher_file, tmp_path
):
    """A distributed ``explain`` leaves ``attributions.jsonl`` + ``attributions.rank<r>.jsonl``: naming the first
    reads all (no train row silently loses its map); one example with two different maps is refused."""
    from amlx.attributors.teacher import load_teacher, teacher_files

    recs = load_jsonl(teacher_file)
    save_jsonl(recs[:5], tmp_path / "attributions.jsonl")
    save_jsonl(recs[5:9], tmp_path / "attributions.rank1.jsonl")
    save_jsonl(recs[9:], tmp_path / "attributions.rank3.jsonl")
    save_jsonl(recs[:2], tmp_path / "attributions-old.jsonl")  # another label: not a rank file
    assert [p.name for p in teacher_files(tmp_path / "attributions.jsonl")] == [
        "attributions.jsonl", "attributions.rank1.jsonl", "attributions.rank3.jsonl"]  # fmt: skip
    assert sorted(load_teacher(str(tmp_path / "attributions.jsonl"))) == sorted(r.example_id for r in recs)
    dm = datamodule(assets, tmp_path / "attributions.jsonl")
    dm.setup()
    assert dm.split("train")["index"] == datamodule(assets, teacher_file).split("train")["index"]
    save_jsonl(recs[5:9] + recs[:1], tmp_path / "attributions.rank1.jsonl")  # the same map twice: accepted
    assert len(load_teacher(str(tmp_path / "attributions.jsonl"))) == len(recs)
    other = load_jsonl(teacher_file)[:1]
    other[0].scores = other[0].scores[::-1].copy() + 1.0
    save_jsonl(recs[5:9] + other, tmp_path / "attributions.rank1.jsonl")
    with pytest.raises(TeacherMismatchError, match="two different teacher maps"):
        load_teacher(str(tmp_path / "attributions.jsonl"))
    with pytest.raises(FileNotFoundError):
        load_teacher(str(tmp_path / "missing.jsonl"))
