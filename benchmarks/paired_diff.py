"""Paired differences of every method against a reference method, per metric, from one evaluation's scores.

    .venv/bin/python benchmarks/paired_diff.py outputs/evaluate/aml-minilm-smollm2-log-odds --name NAME

``explain.py evaluate`` scores every method on the same examples, so "does A beat B" is best read on the
per-example differences A − B: their mean and a 95% normal interval (1.96 · sd / √n) are much tighter than the two
methods' own intervals. Rows: ``method`` = the evaluation's label of A, ``variant`` = ``minus <reference>``,
``mean`` = mean of A − B, ``ci95``, ``n`` (examples scored by both), ``verdict`` = ``better`` / ``worse`` when the
interval lies wholly on that side of 0 for the metric's direction (higher for comp/AOPC-C, lower for
suff/log-odds/AOPC-S), ``undecided`` when it contains 0.
Only the methods of the folder's table count (``table_scores``): a score file of a method still being computed in
the same folder (fewer examples) is left out. With ``--reference best`` the reference is the best *baseline*: never a
learned attributor (``--learned`` prefixes), nor a row that selects or searches on the test metric itself (variant
"oracle-selected:…" or Solvex's "searched for …"), which are upper-bound references, not competitors.
Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amlx import metrics as metric_registry  # noqa: E402
from amlx.jobs.evaluate import summarize  # noqa: E402
from amlx.jobs.run_files import rank_files  # noqa: E402
from amlx.results import write_results  # noqa: E402


def load_scores(*paths: Path) -> dict[int, dict]:
    """Per-example metric values of one method: example index → row, from its files (every rank's of a distributed
    run; within a file the last row wins, as the job's resume does)."""
    rows = {}
    for path in paths:
        for line in path.open():
            row = json.loads(line)
            rows[row["index"]] = row
    return rows


def paired(a: dict[int, dict], b: dict[int, dict], metric: str) -> tuple[float, float, int]:
    """(mean of a − b, 95% interval half-width, n) over the examples both score on ``metric``."""
    common = sorted(i for i in a.keys() & b.keys() if metric in a[i] and metric in b[i])
    d = [float(a[i][metric] - b[i][metric]) for i in common]
    mean, ci = summarize(d)  # the evaluation job's own mean and interval, over the finite differences
    return mean, ci, int(np.isfinite(d).sum())


def verdict(mean: float, ci: float, direction: str | None) -> str:
    """``better`` / ``worse`` when the interval lies wholly on that side of 0, ``undecided`` when it contains 0."""
    if direction is None or not np.isfinite(ci):
        return "undecided"
    lo, hi = mean - ci, mean + ci
    if lo > 0 or hi < 0:
        return "better" if (lo > 0) == (direction == "higher") else "worse"
    return "undecided"


REFERENCE_ONLY = ("oracle-selected", "searched for")  # variants that choose on the test metric: never "best baseline"


def table_scores(out: Path) -> tuple[dict, dict[str, dict[int, dict]], set[str]]:
    """(table.json, scores of the table's labels, the labels whose variant marks an upper-bound reference).

    Labels come from the table's rows (``label``, else ``method``), each read from every rank's file (a distributed
    evaluate writes ``<label>.rank<r>.jsonl`` beside rank 0's); score files of other labels in ``scores/`` — a method
    still running in the same folder, or one a later table left out — are not read.
    """
    table = json.loads((out / "table.json").read_text())
    variants = {r.get("label", r["method"]): r.get("variant") or "" for r in table["rows"]}
    scores = {label: load_scores(*rank_files(out / "scores", label)) for label in variants}
    references = {label for label, v in variants.items() if any(tag in v for tag in REFERENCE_ONLY)}
    return table, scores, references


def best_baseline(scores: dict[str, dict[int, dict]], metric: str, learned: tuple[str, ...],
                  exclude: set[str] = frozenset()) -> str:  # fmt: skip
    """The label whose mean ``metric`` is best in the metric's direction, among labels not starting with ``learned``
    and not in ``exclude``."""
    higher = metric_registry.direction(metric) == "higher"
    means = {}
    for label, rows in scores.items():
        if label.startswith(learned) or label in exclude:
            continue
        vals = [r[metric] for r in rows.values() if metric in r]
        if vals:
            means[label] = summarize(vals)[0]
    if not means:
        raise ValueError(f"no baseline (a label not starting with {learned}) has scores for {metric}")
    return (max if higher else min)(means, key=means.get)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="an `explain.py evaluate` output folder")
    ap.add_argument("--name", required=True, help="results name (benchmarks/results/<name>.json)")
    ap.add_argument("--reference", default="random",
                    help="the label (scores/<label>.jsonl) to subtract, or 'best': per metric, the baseline with the "
                         "best mean (labels not starting with a --learned prefix)")  # fmt: skip
    ap.add_argument("--learned", default="paml,faml",
                    help="comma-separated label prefixes of learned attributors, never a 'best' reference")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    table, scores, references = table_scores(out)
    metrics = list(dict.fromkeys(r["metric"] for r in table["rows"]))
    learned = tuple(x for x in args.learned.split(",") if x)
    rows, refs = [], {}
    for metric in metrics:
        ref_label = args.reference
        if args.reference == "best":
            ref_label = best_baseline(scores, metric, learned, references)
            refs[metric] = ref_label
        elif ref_label not in scores:
            raise FileNotFoundError(f"no scores for the reference {args.reference!r} in {out}/scores")
        for label, sc in scores.items():
            if label == ref_label:
                continue
            mean, ci, n = paired(sc, scores[ref_label], metric)
            better = verdict(mean, ci, metric_registry.direction(metric))
            rows.append({"method": label, "variant": f"minus {ref_label}", "metric": metric, "mean": mean,
                         "ci95": ci, "n": n, "verdict": better})  # fmt: skip
    setup = {**table["setup"], "reference": args.reference, **({"best_baseline": refs} if refs else {})}
    return write_results(
        args.name, rows, setup,
        command="python benchmarks/paired_diff.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        notes=(f"Per-example differences (method − {args.reference}) on the same examples of `{table['command']}`. "
               "verdict: better / worse when the 95% interval lies wholly on that side of 0 (the metric's "
               "direction), undecided when it contains 0. Bold marks the largest/smallest difference, not a test."),
    )  # fmt: skip


if __name__ == "__main__":
    print(main())
