"""The README's main job on the offline default.

1. fetch the offline assets; 2. fine-tune the default classifier unless cached, print its test accuracy;
3. pretrain the pAML attributor unless cached; 4. print the faithfulness table of pAML, fAML and the
baselines on a test subset (``explain.py evaluate``, resumable); 5. write the HTML report of a few examples.
Every step is cached, so a second run only re-prints the results.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from amlx import assets
from amlx.data import TextClassificationData
from amlx.evaluation import DEFAULT_METRICS
from amlx.models import ExplainedModel

DEFAULT_METHODS = ["random", "gradient_x_input", "saliency", "paml", "faml"]


def classifier_data(classifier_config: str) -> TextClassificationData:
    """The data module a classifier config trains on (same dataset, seed and splits)."""
    cfg = yaml.safe_load(Path(classifier_config).read_text())
    return TextClassificationData(**cfg["data"].get("init_args", {}))


@torch.inference_mode()
def test_accuracy(model: ExplainedModel, dm: TextClassificationData, batch_size: int = 128) -> tuple[float, int]:
    test = dm.split("test")
    probs = model.predict(test["text"], batch_size=batch_size)
    labels = torch.tensor(test["label"])
    return float((probs.argmax(-1) == labels).float().mean()), len(labels)


def _train(config: str) -> None:
    from amlx.cli import main as cli

    cli(["fit", "--config", config])


def main(
    fetch: list[str] = ["amlx:minilm", "amlx:movies"],
    classifier_config: str = "configs/classifier/minilm_movies.yaml",
    explained_model: str = "amlx:minilm-movies",
    retrain: bool = False,
    attributor_config: str | None = "configs/aml/paml_minilm_movies.yaml",
    attributor: str = "amlx:paml-minilm-movies",
    methods: list[str] = DEFAULT_METHODS,
    method_options: dict[str, dict] | None = None,
    metrics: list[str] = list(DEFAULT_METRICS),
    n_eval: int = 100,
    n_report: int = 8,
    out_dir: str = "outputs/main",
) -> dict:
    """Fetch, fine-tune (cached), pretrain pAML (cached), print the evaluation table, write the HTML report.

    ``attributor_config: null`` stops after the classifier; ``n_eval: 0`` skips the table and report.
    """
    from amlx.attributors.aml import checkpoint_path

    t0 = time.perf_counter()
    for name in fetch:
        print(f"[amlx] asset {name}: {assets.fetch(name)}", flush=True)
    if retrain or not (assets.local_path(explained_model) / ".complete").exists():
        print(f"[amlx] fine-tuning {explained_model} with {classifier_config}", flush=True)
        _train(classifier_config)
    else:
        print(f"[amlx] using the cached classifier {assets.local_path(explained_model)}", flush=True)
    model = ExplainedModel.from_pretrained(explained_model)
    acc, n = test_accuracy(model, classifier_data(classifier_config))
    print(f"[amlx] {explained_model}: test accuracy {acc:.4f} on {n} examples", flush=True)
    out = {"explained_model": explained_model, "test_accuracy": acc, "n": n}
    if attributor_config is None or n_eval <= 0:
        return out

    ckpt = checkpoint_path(attributor)
    if retrain or not ckpt.exists():
        print(f"[amlx] pretraining pAML {attributor} with {attributor_config}", flush=True)
        _train(attributor_config)
    else:
        print(f"[amlx] using the cached pAML attributor {ckpt}", flush=True)

    from amlx.jobs.evaluate import evaluate
    from amlx.jobs.explain import explain

    options = {"paml": {"checkpoint": attributor}, "faml": {"checkpoint": attributor, "steps": 10,
               "selection": "loss"}}  # fmt: skip
    options.update(method_options or {})
    dm_args = yaml.safe_load(Path(classifier_config).read_text())["data"].get("init_args", {})
    data = {k: v for k, v in dm_args.items() if k in ("val_size", "test_size")}
    print(f"[amlx] faithfulness on the first {n_eval} test examples (resumable; {out_dir}/evaluate)", flush=True)
    table = evaluate(model=explained_model, methods=methods, method_options=options, metrics=metrics,
                     dataset=dm_args.get("dataset", "amlx:movies"), n=n_eval, seed=dm_args.get("seed", 0),
                     data=data, out_dir=f"{out_dir}/evaluate", progress=False)  # fmt: skip
    report_options = {k: v for k, v in options.items() if k in methods}
    explain(model=explained_model, methods=methods, method_options=report_options, dataset=dm_args.get("dataset"),
            n=n_report, seed=dm_args.get("seed", 0), out_dir=f"{out_dir}/report", terminal=False)  # fmt: skip
    print(f"[amlx] HTML report: {out_dir}/report ({time.perf_counter() - t0:.0f} s in all)", flush=True)
    out["table"] = table["rows"]
    return out
