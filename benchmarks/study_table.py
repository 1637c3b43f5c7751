"""Record an Optuna study of `tune.py` (every finished trial's validation objective and parameters) as results.

    .venv/bin/python benchmarks/study_table.py --config configs/tune/aml_smollm2_log_odds.yaml --name NAME

Rows: one per complete trial (``variant`` = ``trial_N``; the enqueued default is trial 0), ``mean`` = the trial's
objective (its best ``val/<metric>`` on the trial's validation examples), ``n`` = that validation size, the sampled
parameters as columns. These are *validation* figures used to choose the λ's — held-out numbers come from
``explain.py evaluate`` on the test split. Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amlx import metrics as metric_registry  # noqa: E402
from amlx.results import write_results  # noqa: E402
from amlx.tuning.config import get_path, load_yaml  # noqa: E402
from amlx.tuning.storage import make_storage  # noqa: E402


def study_rows(study: optuna.Study, metric: str, n_val: int | None) -> list[dict]:
    """One results row per complete trial, in trial order."""
    rows = []
    for t in study.trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        params = {k: round(v, 6) if isinstance(v, float) else v for k, v in t.params.items()}
        rows.append({"method": "paml", "variant": f"trial_{t.number}", "metric": metric, "mean": t.value,
                     "n": n_val, **params})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the tune.py YAML of the study")
    ap.add_argument("--name", required=True, help="results name (benchmarks/results/<name>.json)")
    args = ap.parse_args(argv)
    cfg = load_yaml(args.config)
    fit = load_yaml(ROOT / cfg["fit_config"])
    overrides = cfg.get("trial_overrides", {})
    n_val = overrides.get("trainer.callbacks.MetricValidation.init_args.n_examples")
    if n_val is None:
        n_val = get_path(fit, "trainer.callbacks.MetricValidation.init_args.n_examples")
    storage = make_storage(cfg["storage"])
    study = optuna.load_study(study_name=cfg["study_name"], storage=storage)
    rows = study_rows(study, cfg["metric"], n_val)
    if not rows:
        raise ValueError(f"study {cfg['study_name']!r} has no complete trial yet")
    best = study.best_trial
    setup = {"fit_config": cfg["fit_config"], "split": "val", "study": cfg["study_name"], "storage": cfg["storage"],
             "trial_budget": overrides, "sampler_seed": cfg.get("seed", 0)}  # fmt: skip
    notes = (f"Validation objective of each trial (val/{cfg['metric']} on {n_val} validation sentences, the trial's "
             f"best epoch); best: trial_{best.number}. Choosing among trials on these figures favours a lucky "
             "trial: the held-out test figures of the chosen configuration are in the evaluation's own results.")  # fmt: skip
    return write_results(args.name, rows, setup, command="python benchmarks/study_table.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]), notes=notes,
                         direction=metric_registry.direction)  # fmt: skip


if __name__ == "__main__":
    print(main())
