"""``explain.py evaluate``: methods × metrics over N examples of a split, resumable, with a results table.

Per method, examples are processed in chunks of ``chunk_size``: attribute, score with the batched
``Evaluator``, then append the records to ``<out_dir>/attributions/<method>.jsonl`` and the per-example metric
values to ``<out_dir>/scores/<method>.jsonl`` (flushed per chunk; with each metric's curve points, e.g.
``"curves": {"aopc_comp": [[1, Comp(1)], [5, Comp(5)], ...]}``, for metrics that average a curve). A re-run with the same arguments skips the
chunks already on disk, so an interrupted run resumes without recomputing finished examples. Methods that
take a ``seed`` are seeded per chunk (``seed + first example index``), so a resumed run equals an
uninterrupted one. A chunk is committed by its score rows (each names its chunk; records are appended first, the
scores in one write): after a kill at any instant, ``_recover`` drops a torn line, a chunk's score rows cut short and
records without committed scores, so a resumed run neither loses a committed example nor duplicates a line.
The table (mean, 95% CI, seconds per example) is written as ``<out_dir>/table.{json,md}``
and, with ``results_name``, to ``benchmarks/results/<results_name>.{json,md}``.

Ensembles (``ensemble`` method) run after the other methods. A member that the run also evaluates with the same name
and options is not recomputed: its records are read back from that method's attributions file. Other members are
computed per chunk exactly as if they were evaluated (same seeding), so both ways give the same maps.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from amlx import methods as method_registry
from amlx import metrics as metric_registry
from amlx.data import data_from_options
from amlx.data.rationales import rationale_tokens
from amlx.errors import UserError
from amlx.evaluation import DEFAULT_METRICS, Evaluator
from amlx.methods.ensemble import Ensemble
from amlx.models import ExplainedModel, resolve_device
from amlx.models.explained import check_model_options
from amlx.pairs import inputs_of
from amlx.progress import Progress
from amlx.records import Attribution, load_jsonl, save_jsonl
from amlx.results import write_results

log = logging.getLogger(__name__)


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


def checkpoint_digest(opts: dict) -> str | None:
    """SHA-256 of the file a method's ``checkpoint`` option names (path or ``amlx:`` name), or None without one.

    A retrained attributor exported under the same name has the same options, so the options alone cannot tell
    its rows from the old checkpoint's: the digest, stored in every score row, can.
    """
    name = opts.get("checkpoint")
    if not isinstance(name, str) or not name:
        return None
    from amlx.attributors.aml import checkpoint_path

    path = checkpoint_path(name)
    if not path.is_file():
        return None  # the method itself reports the missing checkpoint, with how to make it
    stat = path.stat()
    return _file_digest(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:  # size, mtime_ns: a rewritten file is hashed anew
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _complete_lines(path: Path) -> list[bytes]:
    """The file's whole lines; a torn last line (a write killed midway) is not one."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    return raw[: raw.rfind(b"\n") + 1].splitlines(keepends=True)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    """Replace ``path`` by ``lines`` atomically: a temporary file in the same folder, fsynced, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _recover(scores_path: Path, records_path: Path) -> None:
    """Make one method's two files agree after a kill at any instant, before resuming.

    A chunk is committed when all its score rows are on disk: each row names its chunk ``[start, stop)``, and the
    records are appended before the scores. So a torn last line, the score rows of a chunk cut short, and records
    without committed scores (a kill between the two appends) are all dropped here, each file rewritten atomically;
    the resumed run recomputes exactly those chunks. Nothing committed is lost, and no line is duplicated.
    """
    lines = _complete_lines(scores_path)
    rows = [json.loads(line) for line in lines]
    per_chunk = collections.Counter(tuple(r["chunk"]) for r in rows if "chunk" in r)
    kept, seen = [], set()
    for line, r in zip(lines, rows):
        whole = "chunk" not in r or per_chunk[tuple(r["chunk"])] == r["chunk"][1] - r["chunk"][0]
        if whole and r["index"] not in seen:
            seen.add(r["index"])
            kept.append((line, r))
    if scores_path.exists() and (len(kept) < len(lines) or scores_path.stat().st_size != sum(map(len, lines))):
        log.warning("%s: dropped %d uncommitted rows left by an interrupted run", scores_path, len(lines) - len(kept))
        _rewrite(scores_path, [line for line, _ in kept])
    committed = {r["example_id"] for _, r in kept}
    rec_lines = _complete_lines(records_path)
    rec_kept, rec_seen = [], set()
    for line in rec_lines:
        eid = json.loads(line).get("example_id")
        if eid in committed and eid not in rec_seen:
            rec_seen.add(eid)
            rec_kept.append(line)
    if records_path.exists() and (len(rec_kept) < len(rec_lines) or records_path.stat().st_size != sum(map(len, rec_lines))):
        log.warning("%s: dropped %d records without committed scores", records_path, len(rec_lines) - len(rec_kept))
        _rewrite(records_path, rec_kept)


def _done_indices(scores_path: Path, config_key: str, digest: str | None = None) -> dict[int, dict]:
    """Per-example metric rows already on disk for this configuration (other configurations are refused).

    ``digest``: the checkpoint the method loads now; rows written from another checkpoint file are refused.
    """
    if not scores_path.exists():
        return {}
    done, unverified = {}, 0
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
            old = row.get("checkpoint_sha256")
            if digest is not None and old is not None and old != digest:
                raise ResumeMismatchError(
                    f"{scores_path} was written with another version of the method's checkpoint (sha256 "
                    f"{old[:12]}…, now {digest[:12]}…): the checkpoint was retrained or replaced. Delete {scores_path} "
                    "and its attributions file to evaluate the new one, or give it its own alias or out_dir"
                )
            unverified += digest is not None and old is None
            done[row["index"]] = row
    if unverified:
        log.warning("%s: %d rows predate checkpoint digests; their checkpoint version cannot be checked",
                    scores_path, unverified)  # fmt: skip
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
    agreement_unit: str | None = None,
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
    an ensemble: ``methods: [lime, kernel_shap, ens=ensemble]``, ``method_options: {ens: {members: [lime,
    kernel_shap]}}`` (members evaluated in the same run with the same options are reused, not recomputed);
    ``perturbation`` / ``unit`` / ``rounding`` override every perturbation metric's default (see docs/evaluation.md);
    ``agreement_unit`` (token | word) that of the agreement metrics (``word``: scored by word, as for human rationales).
    ``model_options`` go to ``ExplainedModel.from_pretrained`` (e.g. ``{mask: "id:4563"}``: the token that
    replaces masked units, for the methods and the metrics alike). ``data`` holds further ``TextClassificationData`` options (split sizes, columns); the defaults reproduce the
    splits the default classifier was trained on. ``device``: ``auto`` (a CUDA GPU when one is visible, else the
    CPU), ``cpu``, ``cuda`` or ``cuda:N``: the explained model, the methods and the metrics' forward passes run there.
    """
    specs = method_registry.parse_methods(methods, method_options)  # before the model loads: a typo fails fast
    check_model_options(model_options)
    metric_registry.check_names(metrics)
    out = Path(out_dir)
    explained = ExplainedModel.from_pretrained(model, kind=kind, **(model_options or {})).to(resolve_device(device))
    dm = data_from_options(dataset, seed, data, labels=explained.labels)
    table = dm.split(split)
    n = min(n, len(table))
    table = table.select(range(n))
    texts, ids = inputs_of(table), [str(i) for i in table["index"]]  # texts: str, or TextPair for sentence pairs
    # planted-token data (data: {planted: true}): the planted word is each record's ground truth (gt_overlap, ...)
    planted = list(zip(table["planted_start"], table["planted_end"])) if "planted_start" in table.column_names else None
    # human rationales (amlx.data.rationales): the highlighted words are the ground truth (token_f1, iou_f1, auprc)
    rationales = list(table["rationale"]) if "rationale" in table.column_names else None
    evaluator = Evaluator(explained, metrics, max_tokens=max_tokens, perturbation=perturbation, unit=unit,
                          rounding=rounding, agreement_unit=agreement_unit)  # fmt: skip
    metric_names = [m.name for m in evaluator.metrics]
    settings = {"model": model, "dataset": dataset, "split": split, "seed": seed, "metrics": metric_names,
                "perturbation": perturbation, "unit": unit, "rounding": rounding, "chunk_size": chunk_size,
                "data": data or {}, **({"model_options": model_options} if model_options else {}),
                **({"agreement_unit": agreement_unit} if agreement_unit else {})}  # fmt: skip

    seeded: dict[str, bool] = {}  # method name → whether it takes a seed

    def attribute_chunk(name: str, opts: dict, start: int, idx: list[int]) -> list[Attribution]:
        """The method's records of examples ``idx`` (the chunk at ``start``), seeded per chunk."""
        if name not in seeded:
            seeded[name] = "seed" in inspect.signature(type(method_registry.get(name, **opts))).parameters
        kw = dict(opts)
        if seeded[name]:
            kw["seed"] = opts.get("seed", seed) + start
        torch.manual_seed(seed + start)
        return method_registry.get(name, **kw).attribute([texts[i] for i in idx], explained)

    items = [(s.alias, s.name, s.options, s.label) for s in specs]  # in the order of ``methods``
    evaluated = {(name, json.dumps(opts, sort_keys=True)): label for _, name, opts, label in items if name != "ensemble"}
    member_cache: dict[str, dict[str, Attribution]] = {}  # label → example id → record, read once per run

    def ensemble_chunk(ens: Ensemble, start: int, idx: list[int]) -> list[Attribution]:
        member_recs = []
        for name, opts in ens.members:
            source = evaluated.get((name, json.dumps(opts, sort_keys=True)))
            if source is None:
                member_recs.append(attribute_chunk(name, opts, start, idx))
                continue
            if source not in member_cache:
                member_cache[source] = {r.example_id: r for r in load_jsonl(out / "attributions" / f"{source}.jsonl")}
            member_recs.append([member_cache[source][ids[i]] for i in idx])
        reused = [(name, json.dumps(opts, sort_keys=True)) in evaluated for name, opts in ens.members]
        recs = ens.combine(member_recs)
        for r in recs:
            r.meta["reused"] = reused
        return recs

    rows_of, per_method = {}, {}
    # ensembles last, so that the members they share with the run are on disk
    for alias, name, opts, label in sorted(items, key=lambda it: it[1] == "ensemble"):
        config_key = json.dumps({**settings, "method": name, "options": opts}, sort_keys=True)
        scores_path = out / "scores" / f"{label}.jsonl"
        records_path = out / "attributions" / f"{label}.jsonl"
        digest = checkpoint_digest(opts)
        _recover(scores_path, records_path)
        done = _done_indices(scores_path, config_key, digest)
        probe = method_registry.get(name, **opts)
        variant = getattr(probe, "variant", "") or ""
        if alias != name:  # two runs of one method must stay distinguishable in the table
            variant = f"{variant} [{alias}]".strip()
        with Progress(n, label, enabled=progress, initial=sum(1 for i in done if i < n)) as bar:
            for start in range(0, n, chunk_size):
                idx = list(range(start, min(start + chunk_size, n)))
                if all(i in done for i in idx):
                    continue
                if isinstance(probe, Ensemble):
                    recs = ensemble_chunk(probe, start, idx)
                else:
                    recs = attribute_chunk(name, opts, start, idx)
                for i, r in zip(idx, recs):
                    r.example_id = ids[i]
                    if planted:
                        r.ground_truth = r.spans_to_tokens([planted[i]])
                    elif rationales is not None:
                        r.ground_truth = rationale_tokens(r, rationales[i])
                t0 = time.perf_counter()
                values = evaluator.evaluate(recs)
                eval_sec = (time.perf_counter() - t0) / len(recs)
                save_jsonl(recs, records_path, append=True)  # records first: the score rows commit the chunk
                scores_path.parent.mkdir(parents=True, exist_ok=True)
                lines = []
                for j, (i, r) in enumerate(zip(idx, recs)):
                    row = {"index": i, "example_id": ids[i], "chunk": [idx[0], idx[-1] + 1], "config": config_key,
                               **({"checkpoint_sha256": digest} if digest else {}), "seconds": r.seconds,
                               "eval_seconds": eval_sec, **{m: float(values[m][j]) for m in metric_names},
                           "curves": {m: points[j] for m, points in evaluator.curves.items()}}  # fmt: skip
                    lines.append(json.dumps(row) + "\n")
                    done[i] = row
                with scores_path.open("a") as f:
                    f.write("".join(lines))  # one write; a kill midway leaves a short chunk, dropped on resume
                bar.update(len(idx))
        kept = [done[i] for i in range(n)]
        per_method[label] = kept
        sec = float(np.mean([r["seconds"] for r in kept]))
        rows_of[label] = []
        for m in metric_names:
            mean, ci = summarize([r[m] for r in kept])
            rows_of[label].append({"method": name, "variant": variant, "metric": m, "mean": mean, "ci95": ci, "n": n,
                                   "sec_per_example": sec, "label": label})  # fmt: skip
    rows = [row for *_, label in items for row in rows_of[label]]
    per_method = {label: per_method[label] for *_, label in items}

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
    return {"rows": rows, "per_example": per_method, "out_dir": str(out)}
