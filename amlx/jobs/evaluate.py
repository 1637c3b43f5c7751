"""``explain.py evaluate``: methods × metrics over N examples of a split, resumable, with a results table.

A front-end of the explain engine (``amlx.jobs.engine``: Lightning's ``Trainer.predict``, one predict batch per
chunk; ``trainer: {devices: 2, strategy: ddp}`` runs it on several processes). Per method, examples are processed
in chunks of ``chunk_size``: attribute, score with the batched ``Evaluator``, then append the records to
``<out_dir>/attributions/<method>.jsonl`` and the per-example metric values to ``<out_dir>/scores/<method>.jsonl``
(rank r > 0 of a distributed run: ``<method>.rank<r>.jsonl``; with each metric's curve points, e.g.
``"curves": {"aopc_comp": [[1, Comp(1)], [5, Comp(5)], ...]}``, for metrics that average a curve). A re-run with
the same arguments skips the chunks already on disk (in any rank's file), so an interrupted run resumes without
recomputing finished examples. Each method is built once and reseeded per chunk (``seed + first example index``),
so a resumed or distributed run equals an uninterrupted one. A chunk is committed by its score rows (each names its
chunk; records are appended first, the scores in one write): after a kill at any instant, ``_recover`` drops a torn
line, a chunk's score rows cut short and records without committed scores, so a resumed run neither loses a
committed example nor duplicates a line. The table (mean, 95% CI, seconds per example) is written, by rank 0, as
``<out_dir>/table.{json,md}`` and, with ``results_name``, to ``benchmarks/results/<results_name>.{json,md}``.

Ensembles (``ensemble`` method) run after the other methods. A member that the run also evaluates with the same name
and options is not recomputed: its records are read back from that method's attributions files. Other members are
computed per chunk exactly as if they were evaluated (same seeding), so both ways give the same maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amlx import methods as method_registry
from amlx import metrics as metric_registry
from amlx.data import data_from_options
from amlx.evaluation import DEFAULT_METRICS, Evaluator
from amlx.jobs.engine import (  # noqa: F401  (the evaluate job's resume API, imported from here by tools and tests)
    Examples,
    ResumeMismatchError,
    TrainerOptions,
    _done_indices,
    _recover,
    checkpoint_digest,
    run_methods,
    summarize,
    trainer_options,
)
from amlx.models import ExplainedModel
from amlx.models.explained import check_model_options
from amlx.pairs import inputs_of
from amlx.results import write_results


def evaluate(
    model: str = "amlx:minilm-movies",
    methods: list[str] = ["random", "gradient_x_input"],
    method_options: dict[str, dict] | None = None,
    metrics: list[str] = list(DEFAULT_METRICS),
    dataset: str = "amlx:movies",
    split: str = "test",
    n: int = 500,
    seed: int = 0,
    chunk_size: int = 32,
    max_tokens: int = 8192,
    perturbation: str | None = None,
    unit: str | None = None,
    rounding: str | None = None,
    agreement_unit: str | None = None,
    kind: str = "auto",
    model_options: dict | None = None,
    data: dict | None = None,
    out_dir: str = "outputs/evaluate",
    results_name: str | None = None,
    progress: bool = True,
    device: str = "auto",
    trainer: TrainerOptions | None = None,
) -> dict:
    """Attribute the first ``n`` examples of ``split`` with every method and score them with every metric.

    ``method_options`` maps a method name to its constructor options (e.g. ``{random: {seed: 1}}``); one method
    twice with different options: ``methods: [faml, faml_oracle=faml]`` with options keyed by the alias;
    an ensemble: ``methods: [lime, kernel_shap, ens=ensemble]``, ``method_options: {ens: {members: [lime,
    kernel_shap]}}`` (members evaluated in the same run with the same options are reused, not recomputed);
    ``perturbation`` / ``unit`` / ``rounding`` override every perturbation metric's default (see docs/evaluation.md);
    ``agreement_unit`` (token | word) that of the agreement metrics (``word``: scored by word, as for human rationales).
    ``model_options`` go to ``ExplainedModel.from_pretrained`` (e.g. ``{mask: "id:4563"}``: the token that
    replaces masked units, for the methods and the metrics alike). ``data`` holds further ``TextClassificationData`` options (split sizes, columns); the defaults reproduce the
    splits the default classifier was trained on. ``device``: ``auto`` (a CUDA GPU when one is visible, else the
    CPU), ``cpu``, ``cuda`` or ``cuda:N``: the explained model, the methods and the metrics' forward passes run there.
    ``trainer``: Lightning Trainer settings (``accelerator``, ``devices``, ``num_nodes``, ``strategy``, ``precision``;
    e.g. ``--trainer.devices 4 --trainer.strategy ddp``); ``accelerator`` replaces ``device`` when given.
    """
    specs = method_registry.parse_methods(methods, method_options)  # before the model loads: a typo fails fast
    check_model_options(model_options)
    metric_registry.check_names(metrics)
    trainer = trainer_options(trainer)
    explained = ExplainedModel.from_pretrained(model, kind=kind, **(model_options or {}))
    return evaluate_model(explained, model=model, specs=specs, metrics=metrics, dataset=dataset, split=split, n=n,
                          seed=seed, chunk_size=chunk_size, max_tokens=max_tokens, perturbation=perturbation,
                          unit=unit, rounding=rounding, agreement_unit=agreement_unit, model_options=model_options,
                          data=data, out_dir=out_dir, results_name=results_name, progress=progress, device=device,
                          trainer=trainer)  # fmt: skip


def evaluate_model(
    explained: ExplainedModel, model: str, specs: list[method_registry.MethodSpec], metrics: list[str],
    dataset: str, split: str, n: int, seed: int, chunk_size: int = 32, max_tokens: int = 8192,
    perturbation: str | None = None, unit: str | None = None, rounding: str | None = None,
    agreement_unit: str | None = None, model_options: dict | None = None, data: dict | None = None,
    out_dir: str = "outputs/evaluate", results_name: str | None = None, progress: bool = True, device: str = "auto",
    trainer: TrainerOptions | dict | None = None,
) -> dict:
    """``evaluate`` with the explained model already loaded (``model``: its name, for the resume key and the table)."""
    out = Path(out_dir)
    dm = data_from_options(dataset, seed, data, labels=explained.labels)
    table = dm.split(split)
    n = min(n, len(table))
    table = table.select(range(n))
    examples = Examples(
        texts=inputs_of(table),  # str, or TextPair for sentence pairs
        ids=[str(i) for i in table["index"]],
        # planted-token data (data: {planted: true}): the planted word is each record's ground truth (gt_overlap, ...)
        planted=list(zip(table["planted_start"], table["planted_end"])) if "planted_start" in table.column_names else None,
        # human rationales (amlx.data.rationales): the highlighted words are the ground truth (token_f1, iou_f1, auprc)
        rationales=list(table["rationale"]) if "rationale" in table.column_names else None,
    )
    evaluator = Evaluator(explained, metrics, max_tokens=max_tokens, perturbation=perturbation, unit=unit,
                          rounding=rounding, agreement_unit=agreement_unit)  # fmt: skip
    metric_names = [m.name for m in evaluator.metrics]
    settings = {"model": model, "dataset": dataset, "split": split, "seed": seed, "metrics": metric_names,
                "perturbation": perturbation, "unit": unit, "rounding": rounding, "chunk_size": chunk_size,
                "data": data or {}, **({"model_options": model_options} if model_options else {}),
                **({"agreement_unit": agreement_unit} if agreement_unit else {})}  # fmt: skip
    per_method, runs, writes = run_methods(explained, examples, specs, evaluator, settings, seed, chunk_size, out,
                                           progress=progress, device=device, trainer=trainer)  # fmt: skip
    rows = []
    for run in runs:  # in the order of ``methods``
        kept = per_method[run.label]
        sec = float(np.mean([r["seconds"] for r in kept]))
        for m in metric_names:
            mean, ci = summarize([r[m] for r in kept])
            rows.append({"method": run.spec.name, "variant": run.variant, "metric": m, "mean": mean, "ci95": ci,
                         "n": n, "sec_per_example": sec, "label": run.label})  # fmt: skip
    result = {"rows": rows, "per_example": per_method, "out_dir": str(out)}
    if not writes:  # rank > 0 of a distributed run: rank 0 writes the table
        return result
    setup = {"explained_model": model, "dataset": dataset, "split": split, "n_examples": n,
             "unit": unit or "metric default", "perturbation": perturbation or "metric default",
             "rounding": rounding or "metric default", "seed": seed,
             **({"agreement_unit": agreement_unit} if agreement_unit else {})}  # fmt: skip
    notes = ("sec_per_example is the attribution method's time per example (the evaluation's own time is in "
             "the per-example score files). Metric defaults: docs/evaluation.md.")  # fmt: skip
    path = write_results("table", rows, setup, notes=notes, directory=out, direction=metric_registry.direction)
    if results_name:
        write_results(results_name, rows, setup, notes=notes, direction=metric_registry.direction)
    md = path.with_suffix(".md").read_text()
    print(md, flush=True)
    return result
