"""The README's main job on the offline default.

1. fetch the offline assets; 2. fine-tune the default classifier unless cached, print its test accuracy;
3. pretrain the pAML attributor unless cached; 4. print the faithfulness table of pAML, fAML and the
baselines on a test subset (``explain.py evaluate``, resumable); 5. write the comparison report of the
evaluation (``explain.py report``: summary, curves and the first ``n_report`` examples). Every step is cached, so
a second run only re-prints the results. Each stage ends with a ``[amlx] stage i/5 done`` line. The explained
model is loaded once: the test accuracy and the evaluation (the explain engine, ``amlx.jobs.engine``) share it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from amlx import assets
from amlx import methods as method_registry
from amlx import metrics as metric_registry
from amlx.data import TextClassificationData
from amlx.evaluation import DEFAULT_METRICS
from amlx.models import ExplainedModel, resolve_device
from amlx.pairs import inputs_of

DEFAULT_METHODS = ["random", "gradient_x_input", "saliency", "paml", "faml"]


def classifier_data(classifier_config: str) -> TextClassificationData:
    """The data module a classifier config trains on (same dataset, seed and splits)."""
    cfg = yaml.safe_load(Path(classifier_config).read_text())
    return TextClassificationData(**cfg["data"].get("init_args", {}))


@torch.inference_mode()
def test_accuracy(model: ExplainedModel, dm: TextClassificationData, batch_size: int = 128) -> tuple[float, int]:
    test = dm.split("test")
    probs = model.predict(inputs_of(test), batch_size=batch_size)
    labels = torch.tensor(test["label"])
    return float((probs.argmax(-1) == labels).float().mean()), len(labels)


def _train(config: str, *more: str) -> None:
    from amlx.cli import main as cli

    cli(["fit", "--config", config, *more])


def _train_or_reuse(train: bool, doing: str, config: str, cached: str, *more: str) -> None:
    """``train.py fit --config config [more]`` (printing ``doing``), or say that the cached ``cached`` is used."""
    if train:
        print(f"[amlx] {doing} with {config}", flush=True)
        _train(config, *more)
    else:
        print(f"[amlx] using the cached {cached}", flush=True)


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
    timing_results: str | None = None,
) -> dict:
    """Fetch, fine-tune (cached), pretrain pAML (cached), print the evaluation table, write the comparison report.

    ``attributor_config: null`` stops after the classifier; ``n_eval: 0`` skips the table and report.
    ``timing_results``: also write the wall time of every stage to ``benchmarks/results/<timing_results>``
    (run with an empty ``$AMLX_CACHE`` to time the whole job from scratch).
    """
    from amlx.attributors.aml import checkpoint_path

    defaults = {"paml": {"checkpoint": attributor}, "faml": {"checkpoint": attributor, "steps": 10,
                "selection": "loss"}}  # fmt: skip
    aliases = {m.partition("=")[0] for m in methods}
    options = {**{k: v for k, v in defaults.items() if k in aliases}, **(method_options or {})}
    method_registry.parse_methods(methods, options)  # a typo fails now, not after fine-tuning
    metric_registry.check_names(metrics)
    t0 = time.perf_counter()
    stages: dict[str, float] = {}  # stage → wall seconds
    lap = [t0]

    n_stages = 2 if attributor_config is None or n_eval <= 0 else 5

    def done(stage: str) -> None:
        now = time.perf_counter()
        stages[stage] = now - lap[0]
        lap[0] = now
        print(f"[amlx] stage {len(stages)}/{n_stages} done: {stage} ({stages[stage]:.0f} s)", flush=True)

    cached = {name: assets.local_path(name).exists() for name in fetch}
    for name in fetch:
        print(f"[amlx] asset {name}: {assets.fetch(name)}", flush=True)
    done("fetch")
    trained_classifier = retrain or not (assets.local_path(explained_model) / ".complete").exists()
    _train_or_reuse(trained_classifier, f"fine-tuning {explained_model}", classifier_config,
                    f"classifier {assets.local_path(explained_model)}",
                    *(["--model.overwrite_export", "true"] if retrain else []))  # fmt: skip
    done("fine-tune classifier" if trained_classifier else "classifier (cached)")
    model = ExplainedModel.from_pretrained(explained_model).to(resolve_device("auto"))  # a GPU when one is visible
    acc, n = test_accuracy(model, classifier_data(classifier_config))
    print(f"[amlx] {explained_model}: test accuracy {acc:.4f} on {n} examples", flush=True)
    out = {"explained_model": explained_model, "test_accuracy": acc, "n": n}
    if attributor_config is None or n_eval <= 0:
        return out

    ckpt = checkpoint_path(attributor)
    trained_attributor = retrain or not ckpt.exists()
    _train_or_reuse(trained_attributor, f"pretraining pAML {attributor}", attributor_config, f"pAML attributor {ckpt}")
    done("test accuracy + pretrain pAML" if trained_attributor else "test accuracy + pAML (cached)")

    from amlx.jobs.evaluate import evaluate_model
    from amlx.report import report

    dm_args = yaml.safe_load(Path(classifier_config).read_text())["data"].get("init_args", {})
    data = {k: v for k, v in dm_args.items() if k in ("val_size", "test_size")}
    print(f"[amlx] faithfulness on the first {n_eval} test examples (resumable; {out_dir}/evaluate)", flush=True)
    table = evaluate_model(model, model=explained_model, specs=method_registry.parse_methods(methods, options),
                           metrics=metrics, dataset=dm_args.get("dataset", "amlx:movies"), split="test", n=n_eval,
                           seed=dm_args.get("seed", 0), data=data, out_dir=f"{out_dir}/evaluate")  # fmt: skip
    done(f"evaluate {n_eval} examples")
    page = report(run=f"{out_dir}/evaluate", out=f"{out_dir}/report/report.html", examples=n_report)
    done(f"HTML report of {n_report} examples")
    total = time.perf_counter() - t0
    print(f"[amlx] HTML report: {page} ({total:.0f} s in all)", flush=True)
    out["table"] = table["rows"]
    if timing_results:
        from amlx.results import write_results

        rows = [{"method": "main_job", "variant": stage, "metric": "seconds", "mean": sec, "n": 1}
                for stage, sec in [*stages.items(), ("total", total)]]  # fmt: skip
        setup = {"config": "configs/main.yaml", "assets_cached_at_start": cached,
                 "classifier_trained": trained_classifier, "attributor_trained": trained_attributor,
                 "n_eval": n_eval, "n_report": n_report, "torch_threads": torch.get_num_threads()}  # fmt: skip
        notes = ("Wall seconds of each stage of the README's main job in one process (the venv already set up). "
                 "From scratch when assets_cached_at_start are all false and both trained flags are true.")
        write_results(timing_results, rows, setup, notes=notes)
    return out
