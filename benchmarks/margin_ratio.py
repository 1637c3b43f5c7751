"""Each learned attributor's share of the best baseline's margin over random, and its speed-up, from one evaluation.

    .venv/bin/python benchmarks/margin_ratio.py outputs/evaluate/leaderboard-minilm-movies --name NAME

Per metric, with B the baseline (a label of the folder's table not starting with a ``--learned`` prefix, and not an
upper-bound reference that selects or searches on the test metric: ``paired_diff.table_scores``) whose mean is best
in the metric's direction and R the ``--random`` label: ``ratio`` = (mean(learned) − mean(R)) / (mean(B) − mean(R)), so 1
means level with the best baseline and ≥ 0.9 is the amortization target of issue 13; ``speedup`` = B's mean seconds
per example / the learned attributor's (both from the same run's score files). Rows: ``method`` = learned label,
``variant`` = ``vs <B>``, ``mean`` = ratio, plus ``best_baseline``, ``speedup``.
Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paired_diff import best_baseline, table_scores  # noqa: E402

from amlx.results import write_results  # noqa: E402


def mean_of(rows: dict[int, dict], key: str) -> float:
    vals = [float(r[key]) for r in rows.values() if key in r and r[key] is not None and np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def margin_ratio(learned: float, best: float, random: float) -> float:
    """(learned − random) / (best − random); NaN when the best baseline does not beat random at all."""
    gap = best - random
    return float((learned - random) / gap) if gap != 0 else float("nan")


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="an `explain.py evaluate` output folder")
    ap.add_argument("--name", required=True, help="results name (benchmarks/results/<name>.json)")
    ap.add_argument("--random", default="random", help="the label of the random baseline")
    ap.add_argument("--learned", default="paml,faml", help="comma-separated label prefixes of learned attributors")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    table, scores, references = table_scores(out)
    metrics = list(dict.fromkeys(r["metric"] for r in table["rows"]))
    if args.random not in scores:
        raise FileNotFoundError(f"no scores for the random baseline {args.random!r} in {out}/scores")
    learned = tuple(x for x in args.learned.split(",") if x)
    rows = []
    for metric in metrics:
        best = best_baseline(scores, metric, learned + (args.random,), references)
        r, b = mean_of(scores[args.random], metric), mean_of(scores[best], metric)
        for label, sc in scores.items():
            if not label.startswith(learned):
                continue
            rows.append({"method": label, "variant": f"vs {best}", "metric": metric,
                         "mean": margin_ratio(mean_of(sc, metric), b, r), "n": len(sc), "best_baseline": best,
                         "speedup": mean_of(scores[best], "seconds") / mean_of(sc, "seconds")})  # fmt: skip
    return write_results(
        args.name, rows, {**table["setup"], "random": args.random},
        command="python benchmarks/margin_ratio.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        notes=("mean = (learned − random) / (best baseline − random) per metric, means over the same examples of "
               f"`{table['command']}`; 1 = level with the best baseline (best_baseline, chosen per metric among "
               "the non-learned labels), ≥ 0.9 is issue 13's target. speedup = the best baseline's seconds per "
               "example / the learned attributor's, from the same run."),
    )  # fmt: skip


if __name__ == "__main__":
    print(main())
