"""The README's main job on the offline default: fetch assets, fine-tune the default classifier once, report."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from amlx import assets
from amlx.data import TextClassificationData
from amlx.models import ExplainedModel


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


def main(
    fetch: list[str] = ["amlx:minilm", "amlx:movies"],
    classifier_config: str = "configs/classifier/minilm_movies.yaml",
    explained_model: str = "amlx:minilm-movies",
    retrain: bool = False,
) -> dict:
    """Fetch the offline assets, fine-tune the explained classifier unless cached, print its test accuracy."""
    t0 = time.perf_counter()
    for name in fetch:
        print(f"[amlx] asset {name}: {assets.fetch(name)}", flush=True)
    if retrain or not (assets.local_path(explained_model) / ".complete").exists():
        from amlx.cli import main as cli

        print(f"[amlx] fine-tuning {explained_model} with {classifier_config}", flush=True)
        cli(["fit", "--config", classifier_config])
    else:
        print(f"[amlx] using the cached classifier {assets.local_path(explained_model)}", flush=True)
    model = ExplainedModel.from_pretrained(explained_model)
    acc, n = test_accuracy(model, classifier_data(classifier_config))
    print(f"[amlx] {explained_model}: test accuracy {acc:.4f} on {n} examples ({time.perf_counter() - t0:.0f} s in all)")
    return {"explained_model": explained_model, "test_accuracy": acc, "n": n}
