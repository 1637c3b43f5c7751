"""AML attributor (amlx/attributors/aml.py) and fAML (amlx/attributors/faml.py) on tiny random models."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from amlx.attributors import FAML, AMLAttributor, aml_loss
from amlx.attributors.aml import ExplainedMismatchError
from amlx.data.datamodule import collate
from amlx.models.explained import Encoded
from tests.tiny import TEXTS, save_tiny_backbone, tiny_explained, tiny_tokenizer

# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    """A saved tiny BERT encoder + WordPiece tokenizer: the attributor's backbone."""
    return save_tiny_backbone(tmp_path_factory.mktemp("backbone"))


@pytest.fixture(scope="module")
def target():
    """The explained model: a tiny RoBERTa classifier (byte-level BPE, so alignment is exercised)."""
    return tiny_explained("roberta", "encoder")


def make_attributor(backbone_dir, explained, **kw) -> AMLAttributor:
    torch.manual_seed(0)
    att = AMLAttributor(backbone=backbone_dir, num_labels=explained.num_labels, **kw)
    att.set_explained(explained)
    return att


class StubExplained(nn.Module):
    """An explained model whose class logits are the sum of its input embeddings over non-padding tokens."""

    name = "stub"
    num_labels = 2

    def __init__(self) -> None:
        super().__init__()
        # token 0: a special token, 1 and 2: text tokens; the mask embedding m is the zero vector
        self.table = nn.Embedding(3, 2)
        self.table.weight.data = torch.tensor([[0.5, 0.0], [1.0, 0.0], [0.0, 2.0]])
        self.tokenizer = tiny_tokenizer("bert")

    def embed(self, input_ids):
        return self.table(input_ids)

    def mask_embedding(self):
        return torch.zeros(2)

    def token_type_ids(self, input_ids, attention_mask=None):
        return torch.zeros_like(input_ids)

    def logits(self, input_ids=None, attention_mask=None, inputs_embeds=None, token_type_ids=None):
        return (inputs_embeds * attention_mask[..., None]).sum(1)


def stub_batch() -> Encoded:
    return Encoded(
        input_ids=torch.tensor([[0, 1, 2]]),
        attention_mask=torch.ones(1, 3, dtype=torch.long),
        attributable=torch.tensor([[False, True, True]]),
        offsets=torch.tensor([[[0, 0], [0, 1], [2, 3]]]),
        word_ids=torch.tensor([[-1, 0, 1]]),
        texts=["a b"],
        truncated=[False],
    )


def log_softmax(z: list[float]) -> list[float]:
    lse = math.log(sum(math.exp(v) for v in z))
    return [v - lse for v in z]


# ------------------------------------------------------------------------------------------------ the loss

A = torch.tensor([[0.3, 0.5, 0.25]])  # the special token's 0.3 is ignored: forced to 1
P = torch.tensor([[0.4, 0.6]])
# M(a, x) = 1·x0 + 0.5·x1 + 0.25·x2 = (1.0, 0.5); M(1 − a, x) = x0 + 0.5·x1 + 0.75·x2 = (1.0, 1.5); ŷ = 1
LOGP_MASKED = log_softmax([1.0, 0.5])
LOGP_INVERSE = log_softmax([1.0, 1.5])


def test_loss_terms_equal_hand_computed_values_with_soft_conditioning():
    terms = aml_loss(StubExplained(), stub_batch(), A, P, lambdas=(2.0, 3.0, 0.5))
    pred = -(0.4 * LOGP_MASKED[0] + 0.6 * LOGP_MASKED[1])
    sparsity = -(math.log(1 - 0.5) + math.log(1 - 0.25)) / 2
    inverse = -math.log(1 - math.exp(LOGP_INVERSE[1]))
    assert terms["pred"].item() == pytest.approx(pred, rel=1e-5)
    assert terms["sparsity"].item() == pytest.approx(sparsity, rel=1e-5)
    assert terms["inverse"].item() == pytest.approx(inverse, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(2 * pred + 3 * sparsity + 0.5 * inverse, rel=1e-5)


def test_hard_conditioning_and_l1_sparsity_equal_hand_computed_values():
    terms = aml_loss(StubExplained(), stub_batch(), A, torch.tensor([[0.0, 1.0]]), sparsity="l1")
    assert terms["pred"].item() == pytest.approx(-LOGP_MASKED[1], rel=1e-5)
    assert terms["sparsity"].item() == pytest.approx((0.5 + 0.25) / 2, rel=1e-5)


def test_hard_topk_marks_the_top_floor_k_fraction_of_attributable_tokens():
    from amlx.attributors.aml import hard_topk

    a = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.2], [0.3, 0.8, 0.6, 0.1, 0.4]])
    keep = torch.tensor([[True, True, True, True, True], [False, True, True, True, False]])
    assert hard_topk(a, keep, 0.5).tolist() == [[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]]  # ⌊2.5⌋ = 2, ⌊1.5⌋ = 1
    assert hard_topk(a, keep, 0.01).tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]]  # at least one token
    assert hard_topk(a, keep, 1.0).tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]]  # never a special token


def test_hard_k_loss_masks_with_the_top_k_forward_and_passes_soft_gradients_back():
    # text tokens 1, 2 with a = 0.5, 0.25: the top-50% (1 token) is token 1 → forward mask (1, 1, 0)
    a = A.clone().requires_grad_()
    terms = aml_loss(StubExplained(), stub_batch(), a, P, hard_k=0.5)
    # M(hard, x) = x0 + x1 = (1.5, 0); M(1 − hard, x) = x0 + x2 = (0.5, 2.0); ŷ = 1
    masked, inverse = log_softmax([1.5, 0.0]), log_softmax([0.5, 2.0])
    assert terms["pred"].item() == pytest.approx(-(0.4 * masked[0] + 0.6 * masked[1]), rel=1e-5)
    assert terms["inverse"].item() == pytest.approx(-math.log(1 - math.exp(inverse[1])), rel=1e-5)
    sparsity = -(math.log(1 - 0.5) + math.log(1 - 0.25)) / 2  # L_a on the soft a
    assert terms["sparsity"].item() == pytest.approx(sparsity, rel=1e-5)
    terms["pred"].sum().backward()
    # straight-through: the gradient is the soft loss's gradient taken at the hard mask
    hard = torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)
    aml_loss(StubExplained(), stub_batch(), hard, P)["pred"].sum().backward()
    torch.testing.assert_close(a.grad[:, 1:], hard.grad[:, 1:])
    assert a.grad[:, 1:].abs().sum() > 0


# ---------------------------------------------------------------------------------------- the attributor


def test_gradients_reach_backbone_head_and_class_embeddings_but_never_the_explained_model(backbone_dir, target):
    att = make_attributor(backbone_dir, target)
    att(list(TEXTS)).terms["loss"].mean().backward()
    for name in ("head.0.weight", "head.2.weight", "class_embeddings", "backbone.encoder.layer.0.attention.self.query.weight"):
        grad = dict(att.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert att.backbone.get_input_embeddings().weight.grad is None  # the word-embedding matrix is frozen
    assert all(not p.requires_grad and p.grad is None for p in target.parameters())


def test_the_class_embedding_token_conditions_the_scores_on_the_prediction(backbone_dir, target):
    att = make_attributor(backbone_dir, target).eval()
    enc = target.encode(list(TEXTS))
    with torch.no_grad():
        neg = att.token_scores(enc, torch.tensor([[0.9, 0.1]] * len(TEXTS)))
        pos = att.token_scores(enc, torch.tensor([[0.1, 0.9]] * len(TEXTS)))
    assert (neg - pos)[enc.attributable].abs().max() > 1e-4
    hard = make_attributor(backbone_dir, target, class_conditioning="hard")
    assert not torch.equal(hard.attribute(list(TEXTS), torch.zeros(3, dtype=torch.long)),
                           hard.attribute(list(TEXTS), torch.ones(3, dtype=torch.long)))  # fmt: skip


def test_scores_live_on_explained_tokens_in_unit_interval_and_zero_elsewhere(backbone_dir, target):
    att = make_attributor(backbone_dir, target)
    scores = att.attribute(list(TEXTS))
    enc = target.encode(list(TEXTS))
    assert scores.shape == enc.input_ids.shape
    assert (scores[~enc.attributable] == 0).all()
    assert ((scores[enc.attributable] > 0) & (scores[enc.attributable] < 1)).all()


def test_state_dict_holds_no_explained_model_weights(backbone_dir, target):
    att = make_attributor(backbone_dir, target)
    assert {k.split(".")[0] for k in att.state_dict()} == {"backbone", "head", "class_embeddings"}
    explained_ids = {id(p) for p in target.parameters()}
    assert not any(id(p) in explained_ids for p in att.parameters())
    assert all(m is not target for m in att.modules())


def fit_two_steps(att: AMLAttributor, tmp_path) -> str:
    batches = DataLoader([{"text": t} for t in TEXTS], batch_size=2, collate_fn=collate)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(att, train_dataloaders=batches)
    path = str(tmp_path / "aml.ckpt")
    trainer.save_checkpoint(path)
    return path


def test_pAML_checkpoint_reloads_weights_only_with_identical_attributions_and_refuses_another_model(
    backbone_dir, target, tmp_path
):
    att = make_attributor(backbone_dir, target)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    initial_head = att.head[0].weight.detach().clone()
    path = fit_two_steps(att, tmp_path)
    assert not torch.equal(att.head[0].weight, initial_head)  # pAML moved the attributor …
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # … and never F

    ckpt = torch.load(path, weights_only=True)
    assert not any(k.startswith("explained") or ".model." in k for k in ckpt["state_dict"])
    again = AMLAttributor.from_checkpoint(path, explained=target)
    assert torch.equal(again.attribute(list(TEXTS)), att.attribute(list(TEXTS)))

    with pytest.raises(ExplainedMismatchError, match="tiny-roberta-encoder"):
        AMLAttributor.from_checkpoint(path, explained=tiny_explained("gpt2", "decoder"))
    lightning_loaded = AMLAttributor.load_from_checkpoint(path, weights_only=True)
    with pytest.raises(ExplainedMismatchError, match="only explains the model it was trained against"):
        lightning_loaded.set_explained(tiny_explained("roberta", "encoder", seed=1, mask="pad", labels=["a", "b", "c"]))


# ------------------------------------------------------------------------------------------------- fAML


@pytest.mark.parametrize(("params", "lr"), [("all", 1e-3), ("head", 1e-2), ("lora", 1e-2)])
def test_fAML_loss_selection_returns_the_lowest_loss_map_and_leaves_pretrained_weights_unchanged(
    backbone_dir, target, params, lr
):
    att = make_attributor(backbone_dir, target)
    pretrained = {k: v.clone() for k, v in att.state_dict().items()}
    res = FAML(att, steps=3, params=params, lr=lr).attribute(list(TEXTS[:2]))
    assert res.losses.shape == (2, 4) and res.maps.shape[:2] == (2, 4)
    assert torch.equal(res.step, res.losses.argmin(1))
    assert torch.equal(res.scores, res.maps[torch.arange(2), res.step])
    assert (res.losses[:, -1] < res.losses[:, 0]).all()  # fine-tuning lowers the instance's AML loss
    assert torch.allclose(res.maps[:, 0], att.attribute(list(TEXTS[:2])), atol=1e-6)  # step 0 = the pAML map
    assert all(torch.equal(v, att.state_dict()[k]) for k, v in pretrained.items())


@pytest.mark.parametrize(("params", "lr", "parallel"), [("all", 1e-3, 3), ("head", 1e-2, 1)])
def test_fAML_batched_modes_tune_a_batch_exactly_like_each_instance_alone(backbone_dir, target, params, lr, parallel):
    att = make_attributor(backbone_dir, target)
    texts = list(TEXTS)  # different lengths: the batch is padded, each instance alone is not
    together = FAML(att, steps=3, params=params, lr=lr, parallel=parallel).attribute(texts)
    in_pairs = FAML(att, steps=3, params=params, lr=lr, parallel=2).attribute(texts)
    for i, text in enumerate(texts):
        alone = FAML(att, steps=3, params=params, lr=lr, parallel=1).attribute([text])  # all: the sequential loop
        t = alone.maps.shape[-1]
        assert torch.allclose(together.losses[i], alone.losses[0], atol=1e-5)
        assert torch.allclose(together.maps[i, :, :t], alone.maps[0], atol=1e-5)
        assert torch.allclose(in_pairs.maps[i, :, :t], alone.maps[0], atol=1e-5)
    assert (together.losses[:, -1] < together.losses[:, 0]).all()


def test_fAML_all_mode_equals_a_plain_per_instance_fine_tuning_of_a_model_copy(backbone_dir, target):
    """The vmapped ``all`` mode against the obvious reference: deepcopy G, Adam on its trainable parameters."""
    import copy

    att = make_attributor(backbone_dir, target).eval()
    res = FAML(att, steps=2, params="all", lr=1e-3, parallel=2).attribute(list(TEXTS[:2]))
    for i, text in enumerate(TEXTS[:2]):
        work = copy.deepcopy(att)
        enc, _, y = work.prepare([text])
        opt = torch.optim.Adam([p for p in work.parameters() if p.requires_grad], lr=1e-3)
        for step in range(3):
            a = work.token_scores(enc, y)
            loss = work.loss_terms(enc, a, y)["loss"].sum()
            assert torch.allclose(res.losses[i, step], loss.detach(), atol=1e-5)
            if step < 2:
                opt.zero_grad()
                loss.backward()
                opt.step()


def test_fAML_metric_selection_is_the_oracle_protocol(backbone_dir, target):
    att = make_attributor(backbone_dir, target)

    def mean_score(record, model) -> float:
        return float(record.scores[record.attributable].mean())

    res = FAML(att, steps=2, params="head", lr=1e-2, selection="metric", metric=mean_score,
               metric_direction="lower").attribute([TEXTS[0]])  # fmt: skip
    values = res.maps[0][:, res.enc.attributable[0]].mean(-1)
    assert res.selection == "oracle-selected"
    assert int(res.step[0]) == int(values.argmin())


class MeanScore:
    """A selection metric with its own direction: the mean score over the attributable tokens."""

    def __init__(self, direction: str) -> None:
        self.direction = direction

    def __call__(self, record, model) -> float:
        return float(record.scores[record.attributable].mean())


def test_fAML_explicit_metric_direction_overrides_the_metrics_own_direction(backbone_dir, target):
    att = make_attributor(backbone_dir, target)
    texts = list(TEXTS[:2])
    own = FAML(att, steps=2, params="head", lr=1e-2, selection="metric", metric=MeanScore("higher")).attribute(texts)
    values = torch.stack([own.maps[b][:, own.enc.attributable[b]].mean(-1) for b in range(2)])  # [batch, steps + 1]
    assert (values.argmax(1) != values.argmin(1)).all(), "the steps' maps must differ in mean score"
    assert torch.equal(own.step, values.argmax(1))
    flipped = FAML(att, steps=2, params="head", lr=1e-2, selection="metric", metric=MeanScore("higher"),
                   metric_direction="lower").attribute(texts)  # fmt: skip
    assert torch.equal(flipped.step, values.argmin(1))
    assert torch.equal(flipped.scores, flipped.maps[torch.arange(2), values.argmin(1)])


def test_fAML_last_selection_returns_the_map_after_the_final_step(backbone_dir, target):
    att = make_attributor(backbone_dir, target)
    res = FAML(att, steps=2, params="head", lr=1e-2, selection="last").attribute(list(TEXTS[:2]))
    assert res.selection == "last" and res.maps.shape[1] == 3
    assert res.step.tolist() == [2, 2]
    assert torch.equal(res.scores, res.maps[:, -1])
    assert not torch.allclose(res.maps[:, -1], res.maps[:, -2])  # the last step moved the maps
