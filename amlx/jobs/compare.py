"""``explain.py compare``: one evaluation over a list of explained models, one table with a model column.

The thesis's comparison across model sizes and architectures (seed 003, §3.6). Every model is evaluated by
``explain.py evaluate`` with the same methods, metrics, examples and seeds, in its own folder
``<out_dir>/<model alias>`` (so each model's run resumes on its own, with evaluate's kill-safe commit protocol);
then the rows of all models are written as one table, ``<out_dir>/table.{json,md}`` and, with ``results_name``,
``benchmarks/results/<results_name>.{json,md}``, each row carrying its ``model``.

Models are names (``amlx:minilm-movies``, a path, a hub name) or ``alias=name`` for one checkpoint read two ways
(``prompted_smollm2=amlx:smollm2-135m`` with ``model_options: {prompted_smollm2: {kind: prompted}}``).
``model_options`` maps an alias to that model's ``ExplainedModel.from_pretrained`` options, ``kind`` included.
Everything is checked before the first model loads: an unknown method or option, a bad model option, a repeated
alias, an ``amlx:`` model missing from the cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from amlx import assets
from amlx import methods as method_registry
from amlx import metrics as metric_registry
from amlx.errors import UserError
from amlx.evaluation import DEFAULT_METRICS
from amlx.jobs.engine import TrainerOptions, trainer_options
from amlx.jobs.evaluate import evaluate
from amlx.models.explained import check_model_options
from amlx.results import write_results


class ModelListError(UserError, ValueError):
    """The ``models`` of a comparison are empty, repeated, or have options under a name that is not among them."""


def parse_models(models: list[str], model_options: dict[str, dict] | None) -> list[tuple[str, str, dict]]:
    """``[(alias, name, options)]`` from ``name`` or ``alias=name`` items; ``kind`` stays among the options."""
    if not models:
        raise ModelListError("compare needs at least one model: models: [amlx:minilm-movies, amlx:smollm2-movies]")
    out, seen = [], set()
    for item in models:
        alias, eq, name = item.partition("=")
        alias, name = (alias.strip(), name.strip()) if eq else (item.strip(), item.strip())
        if not alias or not name:
            raise ModelListError(f"models: {item!r} is empty on one side; write a name or alias=name")
        if alias in seen:
            raise ModelListError(f"models: {alias!r} appears twice; give the second one its own alias (alias=name)")
        seen.add(alias)
        out.append((alias, name, dict((model_options or {}).get(alias) or {})))
    unknown = sorted(set(model_options or {}) - seen)
    if unknown:
        raise ModelListError(f"model_options for {unknown} name no model of the list {sorted(seen)}; key them by alias")
    for _, _, opts in out:
        check_model_options({k: v for k, v in opts.items() if k != "kind"})
    return out


def folder_of(alias: str) -> str:
    """A file-system-safe folder name for a model alias (``amlx:minilm-movies`` → ``amlx-minilm-movies``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", alias).strip("-") or "model"


def compare(
    models: list[str] = ["amlx:minilm-movies", "amlx:smollm2-movies"],
    model_options: dict[str, dict] | None = None,
    methods: list[str] = ["random", "gradient_x_input"],
    method_options: dict[str, dict] | None = None,
    metrics: list[str] = list(DEFAULT_METRICS),
    dataset: str = "amlx:movies",
    split: str = "test",
    n: int = 100,
    seed: int = 0,
    chunk_size: int = 20,
    data: dict | None = None,
    out_dir: str = "outputs/compare",
    results_name: str | None = None,
    progress: bool = True,
    device: str = "auto",
    trainer: TrainerOptions | None = None,
) -> dict:
    """Evaluate ``methods`` × ``metrics`` on the first ``n`` examples of ``split`` for every model of ``models``.

    ``trainer``: Lightning Trainer settings for every model's run, as in ``explain.py evaluate``
    (``--trainer.devices 2 --trainer.strategy ddp``); an unknown key is reported before the first model loads.

    Returns ``{"rows": [...], "per_model": {alias: evaluate's result}, "out_dir": ...}``; every row is an evaluate
    row with ``model`` (the alias) added, ``label`` prefixed by it.
    """
    parsed = parse_models(models, model_options)
    method_registry.parse_methods(methods, method_options)  # before any model loads: a typo fails fast
    metric_registry.check_names(metrics)
    trainer = trainer_options(trainer)
    for _, name, _ in parsed:
        assets.resolve(name)  # an offline model missing from the cache is reported before the first model runs
    out = Path(out_dir)
    rows, per_model, setups = [], {}, {}
    for alias, name, opts in parsed:
        opts = dict(opts)
        kind = opts.pop("kind", "auto")
        res = evaluate(model=name, kind=kind, model_options=opts or None, methods=methods,
                       method_options=method_options, metrics=metrics, dataset=dataset, split=split, n=n, seed=seed,
                       chunk_size=chunk_size, data=data, out_dir=str(out / folder_of(alias)), results_name=None,
                       progress=progress, device=device, trainer=trainer)  # fmt: skip
        per_model[alias] = res
        setups[alias] = {"name": name, "kind": kind, "n_examples": res["rows"][0]["n"] if res["rows"] else 0}
        rows += [{"model": alias, **r, "label": f"{alias} · {r.get('label') or r['method']}"} for r in res["rows"]]
    setup = {"models": setups, "dataset": dataset, "split": split, "n_examples": n, "seed": seed,
             "unit": "metric default", "perturbation": "metric default"}  # fmt: skip
    notes = ("One explain.py evaluate run per model (its own folder under out_dir, resumable), the same examples, "
             "methods, options and seeds; raw metric values (probability differences), so models can be compared "
             "on one scale. sec_per_example is the method's time per example on that model. Metric defaults: "
             "docs/evaluation.md.")  # fmt: skip
    write_results("table", rows, setup, notes=notes, directory=out, direction=metric_registry.direction)
    if results_name:
        write_results(results_name, rows, setup, notes=notes, direction=metric_registry.direction)
    return {"rows": rows, "per_model": per_model, "out_dir": str(out)}
