"""``explain.py robustness``: the top-k explanation attack (``amlx.attack``) on N examples, per method and objective.

For every method × objective, examples are attacked ``batch_size`` at a time (one batch, one δ per example) and
their results appended to ``<out_dir>/examples/<method>.<objective>.jsonl`` (flushed per batch; a re-run with the
same arguments skips the batches on disk). The table (``<out_dir>/table.{json,md}``, and with ``results_name``
``benchmarks/results/<results_name>.{json,md}``) reports, over the examples whose prediction held (a changed
prediction is flagged and excluded, as in the thesis): ``adv_rank_change``, ``adv_topk_changed``,
``adv_topk_sum_change``, ``adv_prob_change`` (mean |Δp|), and over all examples ``adv_success``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from amlx import methods as method_registry
from amlx.attack import OBJECTIVES, TopKAttack
from amlx.data import data_from_options
from amlx.jobs.evaluate import _done_indices, summarize
from amlx.methods.base import differentiable_names, method_label
from amlx.models import ExplainedModel, resolve_device
from amlx.models.explained import check_model_options
from amlx.pairs import inputs_of
from amlx.results import write_results

# table metric → (per-example field, over which examples, direction for a robust method)
TABLE_METRICS = {
    "adv_rank_change": ("rank_change", "held", "lower"),
    "adv_topk_changed": ("topk_changed", "held", "lower"),
    "adv_topk_sum_change": ("topk_sum_change", "held", "lower"),
    "adv_prob_change": ("abs_prob_change", "held", None),  # the attack's cost, not a property of the method
    "adv_success": ("attacked", "all", "lower"),
}


def direction(metric: str) -> str | None:
    """'lower' (more robust) for the attack's figures of the explanation; None for Δp."""
    return TABLE_METRICS[metric][2] if metric in TABLE_METRICS else None


def aggregate(results: list[dict]) -> dict[str, tuple[float, float, int]]:
    """Per table metric: (mean, 95% CI half-width, n). Examples whose prediction changed count only in adv_success."""
    out = {}
    for metric, (field, over, _) in TABLE_METRICS.items():
        rows = [r for r in results if over == "all" or r["prediction_held"]]
        values = [abs(r["prob_change"]) if field == "abs_prob_change" else float(r[field]) for r in rows]
        out[metric] = (*summarize(values), len(values))
    return out


def robustness(
    model: str = "amlx:minilm-movies",
    methods: list[str] = ["saliency", "gradient_x_input", "integrated_gradients"],  # noqa: B006
    method_options: dict[str, dict] | None = None,
    objectives: list[str] = list(OBJECTIVES),  # noqa: B006
    attack: dict | None = None,
    dataset: str = "amlx:movies",
    split: str = "test",
    n: int = 200,
    seed: int = 0,
    batch_size: int = 16,
    kind: str = "auto",
    model_options: dict | None = None,
    data: dict | None = None,
    out_dir: str = "outputs/robustness",
    results_name: str | None = None,
    progress: bool = True,
    device: str = "auto",
) -> dict:
    """Attack the explanations of the first ``n`` examples of ``split`` by every method, with every objective.

    ``methods`` must implement ``scores_from_embeds`` (``amlx.methods.base.differentiable_names()``);
    ``method_options`` as in ``evaluate`` (aliases ``name=method`` included). ``attack``: ``TopKAttack`` options
    other than ``objective`` (defaults: the thesis's, docs/evaluation.md "Adversarial examples").
    ``batch_size``: examples attacked together (one δ each). Other arguments as in ``explain.py evaluate``.
    """
    method_options = method_options or {}
    attack = dict(attack or {})
    if "objective" in attack:
        raise ValueError("set the objectives with objectives=[...], not attack: {objective: ...}")
    for obj in objectives:
        TopKAttack(objective=obj, **attack)  # validates the options before any model is loaded
    out = Path(out_dir)
    check_model_options(model_options)
    explained = ExplainedModel.from_pretrained(model, kind=kind, **(model_options or {})).to(resolve_device(device))
    table = data_from_options(dataset, seed, data, labels=explained.labels).split(split)
    n = min(n, len(table))
    table = table.select(range(n))
    texts, ids = inputs_of(table), [str(i) for i in table["index"]]  # texts: str, or TextPair for sentence pairs
    settings = {"model": model, "dataset": dataset, "split": split, "seed": seed, "batch_size": batch_size,
                "data": data or {}, **({"model_options": model_options} if model_options else {})}  # fmt: skip

    rows, per_run = [], {}
    for item in methods:
        alias, _, name = item.partition("=") if "=" in item else (item, "", item)
        opts = dict(method_options.get(alias, {}))
        label = alias if alias != name else method_label(name, opts)
        method = method_registry.get(name, **opts)
        if not method.differentiable():
            raise ValueError(
                f"{name} has no differentiable map, so its explanations cannot be attacked by gradient descent; "
                f"use one of {differentiable_names()}"
            )
        for objective in objectives:
            spec = TopKAttack(objective=objective, **attack)
            config_key = json.dumps({**settings, "method": name, "options": opts, "attack": vars(spec)}, sort_keys=True)
            path = out / "examples" / f"{label}.{objective}.jsonl"
            done = _done_indices(path, config_key)
            bar = tqdm(total=n, desc=f"{label} {objective}", disable=not progress, initial=sum(i in done for i in range(n)))
            for start in range(0, n, batch_size):
                idx = list(range(start, min(start + batch_size, n)))
                if all(i in done for i in idx):
                    continue
                torch.manual_seed(seed + start)
                enc = explained.encode([texts[i] for i in idx])
                t0 = time.perf_counter()
                results = spec.run(method, explained, enc)
                seconds = (time.perf_counter() - t0) / len(idx)
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    for j, (i, res) in enumerate(zip(idx, results)):
                        tokens = explained.tokenizer.convert_ids_to_tokens(enc.input_ids[j].tolist())
                        row = {"index": i, "example_id": ids[i], "config": config_key, "method": name,
                               "objective": objective, "seconds": seconds, **res,
                               "topk_tokens": [tokens[p] for p in res["topk"]]}  # fmt: skip
                        f.write(json.dumps(row) + "\n")
                        done[i] = row
                bar.update(len(idx))
            bar.close()
            kept = [done[i] for i in range(n)]
            per_run[f"{label}.{objective}"] = kept
            variant = ",".join(v for v in (method.variant, objective) if v)
            sec = sum(r["seconds"] for r in kept) / n
            flagged = sum(not r["prediction_held"] for r in kept)
            for metric, (mean, ci, count) in aggregate(kept).items():
                rows.append({"method": name, "variant": variant, "metric": metric, "mean": mean, "ci95": ci,
                             "n": count, "n_flagged": flagged, "sec_per_example": sec})  # fmt: skip

    setup = {"explained_model": model, "dataset": dataset, "split": split, "n_examples": n, "seed": seed,
             "attack": vars(TopKAttack(**attack)) | {"objective": objectives}}  # fmt: skip
    notes = ("Top-k attack (docs/evaluation.md 'Adversarial examples'). adv_rank_change: mean |rank change| of the "
             "original top-k tokens; adv_topk_changed: share of the k top positions holding another token (the "
             "thesis's Rank Change); adv_topk_sum_change: drop of the normalized map's mass on the original top-k; "
             "adv_prob_change: mean |p_c(x+δ) − p_c(x)|; these over the examples whose prediction held (n; "
             "n_flagged changed prediction and are excluded). adv_success: share of all examples whose prediction "
             "held and whose top-k changed. sec_per_example: the attack's time.")  # fmt: skip
    result_path = write_results("table", rows, setup, notes=notes, directory=out, direction=direction)
    if results_name:
        write_results(results_name, rows, setup, notes=notes, direction=direction)
    print(result_path.with_suffix(".md").read_text(), flush=True)
    return {"rows": rows, "per_example": per_run, "out_dir": str(out)}
