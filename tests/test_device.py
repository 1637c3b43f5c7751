"""Where the explained model runs: ``resolve_device``, and on a CUDA machine every method, the metrics, pAML/fAML and
the evaluate job give on the GPU what they give on the CPU.

The GPU cases are parametrized over the CUDA devices torch sees and skipped, with that reason, on a CPU-only
machine (CI); run ``pytest tests/test_device.py`` on a GPU machine to check the CUDA path. The CPU cases always
run.
"""

from __future__ import annotations

import copy
import os

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from amlx import methods
from amlx.evaluation import Evaluator
from amlx.models import ExplainedModel, resolve_device
from tests.tiny import CORPUS, TEXTS, tiny_explained

# AMLX_TEST_DEVICES=cpu runs the comparisons CPU against CPU: a check of these tests themselves
GPUS = os.environ.get("AMLX_TEST_DEVICES", ",".join(f"cuda:{i}" for i in range(torch.cuda.device_count())))
GPUS = [d for d in GPUS.split(",") if d]
needs_gpu = pytest.mark.skipif(not GPUS, reason="compares a CUDA GPU with the CPU: run on a GPU machine (passed on one H100)")
MODELS = [("bert", "encoder"), ("llama", "decoder"), ("gpt2", "prompted")]
# small budgets: the comparison is CPU vs GPU, not the methods' quality
OPTIONS = {
    "integrated_gradients": {"n_steps": 8},
    "gradient_shap": {"n_samples": 4},
    "kernel_shap": {"n_samples": 40},
    "lime": {"n_samples": 40},
    "shapley_sampling": {"n_samples": 3},
    "mp_pi": {"disk_cache": False, "max_n": 6},
    "rpi": {"n_baselines": 3, "n_steps": 4},
    "marc": {"steps": 6},
    "sig": {"n_steps": 4},
    "solvex": {"beam_size": 3},
}
DECODER_ONLY = {"sp_pi", "mp_pi"}
BERT_FAMILY_ONLY = {"alti", "globenc"}
# paml, faml need a checkpoint (test_aml_methods_on_the_gpu_match_the_cpu below); llm_explanation a decoder asset
SKIP = {"paml", "faml", "llm_explanation"}
# methods whose random draws are made on the model's device: the same seed gives other draws on a GPU, so only
# the records' shape and the finite scores are compared for them, not the values
DEVICE_RANDOM: set[str] = set()


def test_auto_device_is_the_gpu_when_one_is_visible_else_the_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_refused_not_run_on_the_cpu():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def _scores(records) -> list[np.ndarray]:
    return [np.asarray(r.scores, dtype=np.float64) for r in records]


@needs_gpu
@pytest.mark.parametrize("device", GPUS or ["cuda:0"])
@pytest.mark.parametrize("arch,kind", MODELS)
def test_every_method_gives_the_same_scores_and_metrics_on_the_gpu(device, arch, kind):
    cpu = tiny_explained(arch, kind)
    gpu = copy.deepcopy(cpu).to(device)
    texts = TEXTS[:3]
    failures = []
    for name in methods.names():
        if name in SKIP or (kind == "encoder" and name in DECODER_ONLY) or (kind != "encoder" and name in BERT_FAMILY_ONLY):
            continue
        opts = OPTIONS.get(name, {})
        torch.manual_seed(0)
        ref = methods.get(name, **opts).attribute(texts, cpu)
        torch.manual_seed(0)
        got = methods.get(name, **opts).attribute(texts, gpu)
        assert [r.tokens for r in got] == [r.tokens for r in ref], name
        assert all(np.isfinite(s).all() for s in _scores(got)), name
        np.testing.assert_allclose([r.probs for r in got], [r.probs for r in ref], atol=1e-5, err_msg=name)
        if name in DEVICE_RANDOM:
            continue
        for a, b in zip(_scores(got), _scores(ref)):
            if not np.allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(b).max())):
                failures.append((name, np.abs(a - b).max()))
                break
    assert not failures, failures
    # the metrics: the same records scored on the GPU model and on the CPU model
    records = methods.get("gradient_x_input").attribute(texts, cpu)
    metrics = ["suff", "comp", "log_odds", "aopc_suff", "aopc_comp"]
    on_cpu, on_gpu = Evaluator(cpu, metrics).evaluate(records), Evaluator(gpu, metrics).evaluate(records)
    for m in metrics:
        np.testing.assert_allclose(on_gpu[m], on_cpu[m], atol=1e-5, err_msg=m)


@needs_gpu
@pytest.mark.parametrize("device", GPUS or ["cuda:0"])
def test_aml_methods_on_the_gpu_match_the_cpu(device, tmp_path):
    from amlx.attributors import AMLAttributor
    from amlx.data.datamodule import collate
    from tests.test_aml_training import save_tiny_assets

    paths = save_tiny_assets(tmp_path)
    torch.manual_seed(0)
    att = AMLAttributor(explained=paths["explained"], backbone=paths["backbone"], lr=3e-3)
    batches = DataLoader([{"text": t} for t in CORPUS[:8]], batch_size=4, collate_fn=collate)
    dev = torch.device(device)
    accel = {"accelerator": "gpu", "devices": [dev.index or 0]} if dev.type == "cuda" else {"accelerator": "cpu"}
    trainer = L.Trainer(max_steps=2, **accel, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(att, train_dataloaders=batches)  # pAML training steps on the GPU
    path = str(tmp_path / "paml.ckpt")
    trainer.save_checkpoint(path)
    cpu = ExplainedModel.from_pretrained(paths["explained"])
    gpu = copy.deepcopy(cpu).to(device)
    for name, opts in [("paml", {}), ("faml", {"steps": 3, "params": "all", "selection": "loss"})]:
        ref = methods.get(name, checkpoint=path, **opts).attribute(TEXTS[:3], cpu)
        got = methods.get(name, checkpoint=path, **opts).attribute(TEXTS[:3], gpu)
        for a, b in zip(_scores(got), _scores(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=name)


@needs_gpu
@pytest.mark.parametrize("device", GPUS or ["cuda:0"])
def test_the_evaluate_job_on_the_gpu_writes_the_cpu_table(device, tmp_path):
    import json

    from amlx.jobs.evaluate import evaluate
    from tests.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("bert")
    tiny_model("bert", "encoder", tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(CORPUS[:24])]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(model=str(tmp_path / "model"), dataset=str(tmp_path / "data.jsonl"), split="test", n=6, chunk_size=3,
              progress=False, metrics=["comp", "suff"], methods=["random", "gradient_x_input", "occlusion"],
              data={"test_size": 8, "val_size": 4})  # fmt: skip
    on_cpu = evaluate(out_dir=str(tmp_path / "cpu"), device="cpu", **kw)
    on_gpu = evaluate(out_dir=str(tmp_path / "gpu"), device=device, **kw)
    for a, b in zip(on_gpu["rows"], on_cpu["rows"]):
        assert (a["method"], a["metric"], a["n"]) == (b["method"], b["metric"], b["n"])
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-5)
