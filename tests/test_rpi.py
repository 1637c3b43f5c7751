"""RPI: the attention replacement, the diffusion baselines, the batched path integral and the map selection.

The batched implementation is checked against ``reference_maps`` below: a plain transcription of Eqs. 3–4 that
runs one example, one baseline and one interpolant at a time through the full model (also timed by
benchmarks/rpi_speed.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from amlx import methods
from amlx.evaluation import Evaluator
from amlx.methods.attention import prediction_rows
from amlx.methods.diffusion import alpha_bar, sample_baselines
from amlx.methods.rpi import capture, path_integral, resolve_layers
from amlx.models.attention_patch import AttentionReplacementError, swap_attention
from amlx.models.explained import ExplainedModel
from amlx.records import records_from_encoded
from tests.tiny import TEXTS, tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"n_baselines": 3, "n_steps": 4}  # tiny budgets keep the file at a few seconds


def reference_maps(model, text: str, target: int, layer: int, baselines: torch.Tensor, n_steps: int,
                   difference_factor: bool = True) -> torch.Tensor:  # fmt: skip
    """Eq. 4 for one unpadded example, one interpolant per forward pass: full head-mean maps [R, k, k].

    ``baselines``: [R, h, k, k] for this example's k tokens.
    """
    enc = model.encode([text])
    with torch.no_grad(), swap_attention(model.hf, record={layer}) as s:
        model.logits(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    a, module = s.probs[layer][0].float(), s.modules[layer]
    maps = []
    for b in baselines:
        g = torch.zeros_like(a)
        for j in range(1, n_steps + 1):
            v = (b + j / n_steps * (a - b)).requires_grad_(True)  # Eq. 3
            with torch.enable_grad(), swap_attention(model.hf, replace={module: lambda p, _, v=v: v[None]}):
                p = model.probs(input_ids=enc.input_ids, attention_mask=enc.attention_mask)[0, target]
                (grad,) = torch.autograd.grad(p, v)
            g += grad * v.detach()
        maps.append((((a - b) / n_steps if difference_factor else 1) * g).mean(0))
    return torch.stack(maps)


def _batch(model, texts=TEXTS):
    enc = model.encode(list(texts))
    with torch.no_grad():
        target = model.probs(enc.input_ids, enc.attention_mask).argmax(-1)
    return enc, target


# ----------------------------------------------------------------------------------- attention replacement
@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder"), ("gpt2", "prompted")])
def test_interpolant_at_alpha_one_reproduces_the_original_output_exactly(explained, arch, kind):
    model = explained(arch, kind)
    enc, _ = _batch(model)
    before = model.hf.config._attn_implementation
    default = model.logits(enc.input_ids, enc.attention_mask)
    cap = capture(model, enc, [0, 1])
    for layer in (0, 1):
        a = cap.probs[layer]
        noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(layer))
        v = a + (1 - 1.0) * (noise - a)  # the interpolant path_integral builds, at α = 1
        with swap_attention(model.hf, replace={cap.modules[layer]: lambda p, _, v=v: v}) as s:
            replaced = model.logits(enc.input_ids, enc.attention_mask)
        assert s.replaced == {cap.modules[layer]}
        torch.testing.assert_close(replaced, default, rtol=0, atol=1e-5)  # default implementation (sdpa)
        assert torch.equal(replaced, cap.logits)  # eager attention without replacement: bit for bit
        with swap_attention(model.hf, replace={cap.modules[layer]: lambda p, _: torch.full_like(p, 0.1)}):
            assert not torch.allclose(model.logits(enc.input_ids, enc.attention_mask), default)
    assert model.hf.config._attn_implementation == before


def test_replaceable_attention_equals_the_models_eager_attention_bit_for_bit():
    model = ExplainedModel(tiny_model("llama", "decoder", tiny_tokenizer("llama")), tiny_tokenizer("llama"), "decoder")
    enc, _ = _batch(model)
    with swap_attention(model.hf):
        ours = model.logits(enc.input_ids, enc.attention_mask)
    model.hf.set_attn_implementation("eager")
    assert torch.equal(ours, model.logits(enc.input_ids, enc.attention_mask))


def test_a_model_whose_attention_bypasses_the_interface_is_refused_with_a_clear_error():
    from transformers import MPNetConfig, MPNetForSequenceClassification

    tok = tiny_tokenizer("bert")
    config = MPNetConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id)  # fmt: skip
    model = ExplainedModel(MPNetForSequenceClassification(config).eval(), tok, "encoder")
    with pytest.raises(AttentionReplacementError, match="AttentionInterface.*integrated_gradients"):
        methods.get("rpi", **SMALL).attribute(["a good movie"], model)


def test_layers_outside_the_model_are_refused(explained):
    model = explained("bert", "encoder")
    assert resolve_layers(model, [-1, 0, 1]) == [0, 1]
    with pytest.raises(ValueError, match="outside the explained model's 2 layers"):
        methods.get("rpi", layers=[2], **SMALL).attribute(["a good movie"], model)


# -------------------------------------------------------------------------------------- diffusion baselines
def test_linear_schedule_alpha_bar_by_hand():
    ab = alpha_bar(500, "linear", 1e-4, 0.02)
    beta2 = 1e-4 + (0.02 - 1e-4) / 499
    assert ab[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)
    assert ab[1].item() == pytest.approx((1 - 1e-4) * (1 - beta2), abs=1e-15)
    assert ab[-1].item() == pytest.approx(math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / 499) for i in range(500)), rel=1e-9)
    assert 0.006 < ab[-1] < 0.007  # T = 500 ends close to pure noise (√ᾱ_T ≈ 0.08)
    f = [math.cos((t / 10 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in (0, 1)]
    assert alpha_bar(10, "cosine")[0].item() == pytest.approx(f[1] / f[0], abs=1e-12)


@pytest.mark.parametrize("noise_scale", ["sqrt", "linear"])
def test_baselines_follow_the_diffusion_forward_process(noise_scale):
    ab = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    a = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    allowed = torch.ones_like(a, dtype=torch.bool)
    allowed[1, :, :, 3] = False  # a padded key
    b = sample_baselines(a, allowed, 5, ab, noise_scale, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)  # the same draws by hand: t, then ε
    t = torch.randint(0, 3, (2, 5), generator=gen)
    eps = torch.randn((2, 5, 3, 4, 4), generator=gen)
    abt = ab[t].float()[..., None, None, None]
    scale = (1 - abt).sqrt() if noise_scale == "sqrt" else 1 - abt  # √(1 − ᾱ_t) paper, (1 − ᾱ_t) seed code
    expected = (abt.sqrt() * a[:, None] + scale * eps) * allowed[:, None]
    torch.testing.assert_close(b, expected)
    assert (b[1, :, :, :, 3] == 0).all()


def test_baselines_live_on_the_allowed_attention_unless_asked_for_the_full_tensor(explained):
    model = explained("llama", "decoder")
    enc, _ = _batch(model)
    allowed = capture(model, enc, [1]).allowed[1]
    k, short = enc.input_ids.shape[1], int(enc.attention_mask[0].sum())
    assert not allowed[0, 0, 0, 1] and allowed[0, 0, 1, 0]  # causal
    assert not allowed[0, 0, :, short:].any()  # padding
    b = sample_baselines(torch.zeros(allowed.shape), allowed, 2, alpha_bar(), "sqrt", torch.Generator())
    assert (b[:, :, :, torch.triu_indices(k, k, 1)[0], torch.triu_indices(k, k, 1)[1]] == 0).all()


# ------------------------------------------------------------------------------------ batched path integral
@pytest.mark.parametrize("arch,kind", [("bert", "encoder"), ("llama", "decoder")])
def test_batched_candidates_equal_the_one_interpolant_at_a_time_reference(explained, arch, kind):
    model = explained(arch, kind)
    enc, target = _batch(model)
    method = methods.get("rpi", layers=[0, -1], selection="mean", seed=3, internal_batch_size=64, **SMALL)
    maps, _ = method.candidate_maps(enc, model, target)  # [3, 2 layers × 3 baselines, tokens]
    # the same draws: one group of 3 examples (3·3·4 rows ≤ 64), layer 0 then layer 1
    cap, gen = capture(model, enc, [0, 1]), torch.Generator().manual_seed(3)
    base = {layer: sample_baselines(cap.probs[layer], cap.allowed[layer], 3, alpha_bar(), "sqrt", gen) for layer in (0, 1)}
    lengths = enc.attention_mask.sum(1).tolist()
    for i, (text, k) in enumerate(zip(TEXTS, lengths)):
        row = 0 if kind == "encoder" else k - 1  # [CLS] / the last real token
        for j, layer in enumerate((0, 1)):
            ref = reference_maps(model, text, int(target[i]), layer, base[layer][i, :, :, :k, :k], 4)
            torch.testing.assert_close(maps[i, 3 * j : 3 * j + 3, :k], ref[:, row], rtol=0, atol=1e-5)
        assert (maps[i, :, k:] == 0).all()


def test_rows_per_pass_and_prefix_reuse_do_not_change_the_maps(explained):
    model = explained("gpt2", "prompted")
    enc, target = _batch(model)
    cap, full = capture(model, enc, [1]), capture(model, enc, [1], reuse_prefix=False)
    assert cap.prefix[1] is not None and full.prefix[1] is None
    base = sample_baselines(cap.probs[1], cap.allowed[1], 3, alpha_bar(), "sqrt", torch.Generator().manual_seed(0))
    ref = path_integral(model, enc, target, full, 1, base, 5, rows_per_pass=1000)
    for c, rows in ((cap, 7), (cap, 1000), (full, 7)):
        torch.testing.assert_close(path_integral(model, enc, target, c, 1, base, 5, rows_per_pass=rows), ref,
                                   rtol=0, atol=1e-6)  # fmt: skip


def test_without_the_difference_factor_the_map_is_the_accumulated_gradient_times_interpolant(explained):
    model = explained("bert", "encoder")
    enc, target = _batch(model, TEXTS[:1])
    cap = capture(model, enc, [1])
    base = sample_baselines(cap.probs[1], cap.allowed[1], 2, alpha_bar(), "linear", torch.Generator().manual_seed(0))
    got = path_integral(model, enc, target, cap, 1, base, 3, difference_factor=False)
    ref = reference_maps(model, TEXTS[0], int(target[0]), 1, base[0], 3, difference_factor=False)
    torch.testing.assert_close(got[0], ref[:, 0], rtol=0, atol=1e-5)


def test_prediction_row_is_the_first_token_for_encoders_and_the_last_real_token_for_decoders():
    from amlx.models.explained import Encoded

    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    enc = lambda am: Encoded(am, am, am.bool(), torch.zeros(2, 5, 2), am, ["", ""], [False, False])  # noqa: E731
    assert prediction_rows(enc(right), "encoder").tolist() == [0, 0]
    assert prediction_rows(enc(left), "encoder").tolist() == [2, 0]  # the first real token, whatever the padding
    assert prediction_rows(enc(right), "decoder").tolist() == [2, 4]
    assert prediction_rows(enc(left), "prompted").tolist() == [4, 4]


# ------------------------------------------------------------------------------------------------ selection
def test_same_seed_same_maps_other_seed_other_maps(explained):
    model = explained("bert", "encoder")
    run = lambda seed: np.concatenate([r.scores for r in methods.get("rpi", seed=seed, **SMALL).attribute(  # noqa: E731
        list(TEXTS), model)])  # fmt: skip
    assert np.array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))


@pytest.mark.parametrize("metric", ["comp", "suff"])
def test_oracle_selection_returns_a_candidate_with_the_best_metric_value(explained, metric):
    model = explained("llama", "decoder")
    enc, target = _batch(model)
    method = methods.get("rpi", metric=metric, seed=5, **{**SMALL, "n_baselines": 6})
    assert method.variant == f"oracle-selected:{metric} R6n4"
    recs = method.attribute(list(TEXTS), model)
    maps, probs = methods.get("rpi", seed=5, selection="mean", **{**SMALL, "n_baselines": 6}).candidate_maps(
        enc, model, target)  # fmt: skip
    evaluator = Evaluator(model, [metric])
    for i, rec in enumerate(recs):
        values = []
        for c in range(6):
            cand = records_from_encoded(enc.select([i]), model.tokenizer, maps[i, c : c + 1, : len(rec.scores)],
                                        target[[i]], probs[[i]], model.labels, "rpi")  # fmt: skip
            values.append(evaluator.evaluate_one_by_one(cand)[metric][0])
        values = np.array(values)
        chosen = [c for c in range(6) if np.allclose(maps[i, c, : len(rec.scores)] * rec.attributable, rec.scores)]
        best = values.max() if metric == "comp" else values.min()
        assert chosen and values[chosen[0]] == pytest.approx(best, abs=1e-6)


def test_the_mean_proxy_is_the_mean_candidate_map(explained):
    model = explained("bert", "encoder")
    enc, target = _batch(model)
    method = methods.get("rpi", selection="mean", seed=2, **SMALL)
    assert method.variant == "proxy:mean R3n4"
    recs = method.attribute(list(TEXTS), model)
    maps, _ = methods.get("rpi", selection="mean", seed=2, **SMALL).candidate_maps(enc, model, target)
    for i, rec in enumerate(recs):
        np.testing.assert_allclose(rec.scores, (maps[i].mean(0)[: len(rec.scores)] * enc.attributable[i, : len(rec.scores)]).numpy(),
                                   atol=1e-7)  # fmt: skip


# ----------------------------------------------------------------------------------------------- the job
def test_rpi_runs_from_explain_py_evaluate_with_oracle_and_proxy_aliases(tmp_path, monkeypatch):
    from amlx.jobs.evaluate import evaluate

    tok = tiny_tokenizer("bert")
    tiny_model("bert", "encoder", tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": i % 2}) for i, t in enumerate(list(TEXTS) * 6)) + "\n")
    monkeypatch.chdir(tmp_path)
    res = evaluate(model=str(tmp_path / "model"), dataset=str(data), split="test", n=3, chunk_size=2, progress=False,
                   methods=["rpi", "rpi_mean=rpi"], method_options={"rpi": SMALL, "rpi_mean": {**SMALL, "selection": "mean"}},
                   metrics=["comp", "suff"], data={"test_size": 6, "val_size": 3}, out_dir=str(tmp_path / "run"))  # fmt: skip
    variants = {r["variant"] for r in res["rows"]}
    assert variants == {"oracle-selected:comp R3n4", "proxy:mean R3n4 [rpi_mean]"}  # aliased runs keep their alias


def test_the_eval_config_names_valid_rpi_options():
    cfg = yaml.safe_load((ROOT / "configs" / "eval" / "rpi_minilm_movies.yaml").read_text())
    for item in cfg["methods"]:
        alias, _, name = item.partition("=") if "=" in item else (item, "", item)
        methods.get(name, **cfg.get("method_options", {}).get(alias, {}))
