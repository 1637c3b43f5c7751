"""Per-epoch validation metrics of a ``train.py fit`` run (its CSVLogger ``metrics.csv``) as a results file.

    .venv/bin/python benchmarks/val_curve.py runs/NAME/version_N/metrics.csv --name NAME --config CONFIG

Rows: ``method`` = the run, ``variant`` = ``epoch E``, ``metric`` = each logged ``val/<metric>`` (the metric
registry's names), ``mean`` = its value on the validation texts of ``MetricValidation``. This is the evidence a
recipe's epoch (and the recipe itself) was chosen on: validation, never test.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amlx import metrics as metric_registry  # noqa: E402
from amlx.results import write_results  # noqa: E402


def epoch_rows(path: Path, run: str) -> list[dict]:
    """One row per (epoch, val/<registered metric>) that the CSV holds a value for."""
    known = set(metric_registry.names())
    rows = []
    with path.open() as f:
        for rec in csv.DictReader(f):
            for key, value in rec.items():
                if not key.startswith("val/") or not value or key[4:] not in known:
                    continue
                rows.append({"method": run, "variant": f"epoch {rec['epoch']}", "metric": key[4:],
                             "mean": float(value), "n": None})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics_csv")
    ap.add_argument("--name", required=True, help="results name (benchmarks/results/<name>.json)")
    ap.add_argument("--config", required=True, help="the train.py config of the run")
    ap.add_argument("--run", default=None, help="the run's label in the table (default: --name)")
    ap.add_argument("--note", default="", help="what else a reader must know about the run (appended to the notes)")
    args = ap.parse_args(argv)
    rows = epoch_rows(Path(args.metrics_csv), args.run or args.name)
    return write_results(
        args.name, rows, {"config": args.config, "split": "val", "source": args.metrics_csv},
        command="python benchmarks/val_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        notes="Validation metrics after each epoch, as MetricValidation logged them during training."
        + (f" {args.note}" if args.note else ""),
        direction=metric_registry.direction,
    )  # fmt: skip


if __name__ == "__main__":
    print(main())
