"""``explain.py evaluate``: methods × metrics over N examples of a split, resumable, with a results table.

Per method, examples are processed in chunks of ``chunk_size``: attribute, score with the batched
``Evaluator``, then append the records to ``<out_dir>/attributions/<method>.jsonl`` and the per-example metric
values to ``<out_dir>/scores/<method>.jsonl`` (flushed per chunk). A re-run with the same arguments skips the
chunks already on disk, so an interrupted run resumes without recomputing finished examples. Methods that
take a ``seed`` are seeded per chunk (``seed + first example index``), so a resumed run equals an
uninterrupted one. The table (mean, 95% CI, seconds per example) is written as ``<out_dir>/table.{json,md}``
and, with ``results_name``, to ``benchmarks/results/<results_name>.{json,md}``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from amlx import methods as method_registry
from amlx import metrics as metric_registry
from amlx.data import data_from_options
from amlx.errors import UserError
from amlx.evaluation import DEFAULT_METRICS, Evaluator
from amlx.models import ExplainedModel, resolve_device
from amlx.records import save_jsonl
from amlx.results import write_results


class ResumeMismatchError(UserError, ValueError):
    """``out_dir`` holds scores of a different evaluation configuration than the one asked for."""


def _changed_settings(old_key: str | None, new_key: str) -> str:
    """The settings that differ between two configuration keys (JSON), for the message."""
    try:
        old, new = json.loads(old_key or "{}"), json.loads(new_key)
    except json.JSONDecodeError:
        return "its configuration"
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(changed) or "its configuration"


def _done_indices(scores_path: Path, config_key: str) -> dict[int, dict]:
    """Per-example metric rows already on disk for this configuration (other configurations are refused)."""
    if not scores_path.exists():
        return {}
    done = {}
    with scores_path.open() as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("config") != config_key:
                raise ResumeMismatchError(
                    f"{scores_path} was written by a different evaluation configuration (changed: "
                    f"{_changed_settings(row.get('config'), config_key)}); resume with the same configuration, "
                    "use another out_dir, or delete it to start over"
                )
            done[row["index"]] = row
    return done


def summarize(values: list[float]) -> tuple[float, float]:
    """Mean and 95% normal-approximation confidence half-width (1.96·sd/√n) of finite values."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(arr) == 0:
        return float("nan"), float("nan")
    ci = 1.96 * arr.std(ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return float(arr.mean()), float(ci)


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
    kind: str = "auto",
    model_options: dict | None = None,
    data: dict | None = None,
    out_dir: str = "outputs/evaluate",
    results_name: str | None = None,
    progress: bool = True,
    device: str = "auto",
) -> dict:
    """Attribute the first ``n`` examples of ``split`` with every method and score them with every metric.

    ``method_options`` maps a method name to its constructor options (e.g. ``{random: {seed: 1}}``); one method
    twice with different options: ``methods: [faml, faml_oracle=faml]`` with options keyed by the alias;
    ``perturbation`` / ``unit`` / ``rounding`` override every metric's default (see docs/evaluation.md).
    ``model_options`` go to ``ExplainedModel.from_pretrained`` (e.g. ``{mask: "id:4563"}``: the token that
    replaces masked units, for the methods and the metrics alike). ``data`` holds further ``TextClassificationData`` options (split sizes, columns); the defaults reproduce the
    splits the default classifier was trained on. ``device``: ``auto`` (a CUDA GPU when one is visible, else the
    CPU), ``cpu``, ``cuda`` or ``cuda:N``: the explained model, the methods and the metrics' forward passes run there.
    """
    specs = method_registry.parse_methods(methods, method_options)  # before the model loads: a typo fails fast
    metric_registry.check_names(metrics)
    out = Path(out_dir)
    explained = ExplainedModel.from_pretrained(model, kind=kind, **(model_options or {})).to(resolve_device(device))
    dm = data_from_options(dataset, seed, data, labels=explained.labels)
    table = dm.split(split)
    n = min(n, len(table))
    texts, ids = table["text"][:n], [str(i) for i in table["index"][:n]]
    # planted-token data (data: {planted: true}): the planted word is each record's ground truth (gt_overlap, ...)
    planted = list(zip(table["planted_start"][:n], table["planted_end"][:n])) if "planted_start" in table.column_names else None
    evaluator = Evaluator(explained, metrics, max_tokens=max_tokens, perturbation=perturbation, unit=unit,
                          rounding=rounding)  # fmt: skip
    metric_names = [m.name for m in evaluator.metrics]
    settings = {"model": model, "dataset": dataset, "split": split, "seed": seed, "metrics": metric_names,
                "perturbation": perturbation, "unit": unit, "rounding": rounding, "chunk_size": chunk_size,
                "data": data or {}, **({"model_options": model_options} if model_options else {})}  # fmt: skip

    rows, per_method = [], {}
    for spec in specs:
        alias, name, opts, label = spec.alias, spec.name, spec.options, spec.label
        config_key = json.dumps({**settings, "method": name, "options": opts}, sort_keys=True)
        scores_path = out / "scores" / f"{label}.jsonl"
        records_path = out / "attributions" / f"{label}.jsonl"
        done = _done_indices(scores_path, config_key)
        probe = spec.build()
        seeded = spec.accepts("seed")
        variant = getattr(probe, "variant", "") or ""
        if alias != name:  # two runs of one method must stay distinguishable in the table
            variant = f"{variant} [{alias}]".strip()
        bar = tqdm(total=n, desc=label, disable=not progress, initial=sum(1 for i in done if i < n))
        for start in range(0, n, chunk_size):
            idx = list(range(start, min(start + chunk_size, n)))
            if all(i in done for i in idx):
                continue
            torch.manual_seed(seed + start)
            method = spec.build(**({"seed": opts.get("seed", seed) + start} if seeded else {}))
            recs = method.attribute([texts[i] for i in idx], explained)
            for i, r in zip(idx, recs):
                r.example_id = ids[i]
                if planted:
                    r.ground_truth = r.spans_to_tokens([planted[i]])
            t0 = time.perf_counter()
            values = evaluator.evaluate(recs)
            eval_sec = (time.perf_counter() - t0) / len(recs)
            save_jsonl(recs, records_path, append=True)
            scores_path.parent.mkdir(parents=True, exist_ok=True)
            with scores_path.open("a") as f:
                for j, (i, r) in enumerate(zip(idx, recs)):
                    row = {"index": i, "example_id": ids[i], "config": config_key, "seconds": r.seconds,
                           "eval_seconds": eval_sec, **{m: float(values[m][j]) for m in metric_names}}  # fmt: skip
                    f.write(json.dumps(row) + "\n")
                    done[i] = row
            bar.update(len(idx))
        bar.close()
        kept = [done[i] for i in range(n)]
        per_method[label] = kept
        sec = float(np.mean([r["seconds"] for r in kept]))
        for m in metric_names:
            mean, ci = summarize([r[m] for r in kept])
            rows.append({"method": name, "variant": variant, "metric": m, "mean": mean, "ci95": ci, "n": n, "sec_per_example": sec})  # fmt: skip

    setup = {"explained_model": model, "dataset": dataset, "split": split, "n_examples": n,
             "unit": unit or "metric default", "perturbation": perturbation or "metric default",
             "rounding": rounding or "metric default", "seed": seed}  # fmt: skip
    notes = ("sec_per_example is the attribution method's time per example (the evaluation's own time is in "
             "the per-example score files). Metric defaults: docs/evaluation.md.")  # fmt: skip
    path = write_results("table", rows, setup, notes=notes, directory=out, direction=metric_registry.direction)
    if results_name:
        write_results(results_name, rows, setup, notes=notes, direction=metric_registry.direction)
    md = path.with_suffix(".md").read_text()
    print(md, flush=True)
    return {"rows": rows, "per_example": per_method, "out_dir": str(out)}
