"""Small-budget per-metric tuning of pAML's λ's on the default classifier, then tuned vs default λ's on held-out data.

Steps (each resumes: studies load from their storage, trained checkpoints and evaluated chunks are kept):
1. ``tune.py run`` for each metric (configs/tune/aml_<metric>.yaml) with a small budget: ``--n_trials`` trials ×
   ``--epochs`` epoch(s) on ``--train`` train / ``--val`` validation sentences; trial 0 = the default λ's.
2. ``train.py fit`` of each study's best configuration and of the default λ's (the study's trial 0), same budget.
3. ``explain.py evaluate``: ``paml`` with each checkpoint on the first ``--n`` movie-test sentences, all metrics.
4. ``benchmarks/results/tune-aml-minilm-movies.{json,md}``: best λ's per metric and the held-out comparison.

OMP_NUM_THREADS=1 python benchmarks/tune_aml.py --metrics '[suff, comp]' --n_trials 8
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
from jsonargparse import CLI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amlx import metrics as metric_registry  # noqa: E402
from amlx.assets import cache_dir  # noqa: E402
from amlx.results import write_results  # noqa: E402
from amlx.tuning.config import load_yaml  # noqa: E402
from amlx.tuning.storage import make_storage  # noqa: E402

PY = sys.executable
LAMBDAS = ("lambda_p", "lambda_a", "lambda_inv")


def sh(args: list[str], log: Path) -> None:
    print("$", " ".join(args), f"> {log}", flush=True)
    with log.open("a") as f:
        subprocess.run(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)


def main(
    metrics: list[str] = ["suff", "comp"],
    n_trials: int = 8,
    n_startup_trials: int = 4,
    epochs: int = 1,
    train: int = 300,
    val: int = 100,
    n: int = 200,
    storage: str = "sqlite:///runs/tune/bench/paml-minilm-movies.db",
    work_dir: str = "runs/tune/bench",
    results_name: str = "tune-aml-minilm-movies",
) -> None:
    os.chdir(ROOT)  # relative paths (storage, work_dir) are the repository's
    work = ROOT / work_dir
    work.mkdir(parents=True, exist_ok=True)
    budget = {"trainer.max_epochs": epochs, "data.init_args.max_train_examples": train,
              "trainer.callbacks.MetricValidation.init_args.n_examples": val,
              "trainer.limit_val_batches": max(1, val // 50), "trainer.enable_progress_bar": False}  # fmt: skip
    fit_budget = [f"--trainer.max_epochs={epochs}", f"--data.init_args.max_train_examples={train}",
                  f"--trainer.limit_val_batches={max(1, val // 50)}", "--trainer.enable_progress_bar=false"]  # fmt: skip
    configs, names = {}, {}
    for m in metrics:
        study = f"bench-paml-minilm-movies-{m}"
        best_cfg = work / f"best_{m}.yaml"
        common = [PY, "tune.py", "--config", f"configs/tune/aml_{m}.yaml", "--study_name", study,
                  "--storage", storage, "--n_trials", str(n_trials), "--trial_overrides", json.dumps(budget),
                  "--sampler_options", json.dumps({"n_startup_trials": n_startup_trials}),
                  "--out_dir", str(work), "--best_config", str(best_cfg)]  # fmt: skip
        sh([*common, "run"], work / f"tune_{m}.log")
        configs[m] = (study, best_cfg)
        names[f"paml_tuned_{m}"] = f"bench-paml-tuned-{m}"
        # trial 0 is the default λ's (enqueued); its config, exported under its own name, is the baseline
        if m == metrics[0]:
            names["paml_default"] = "bench-paml-default"
            sh([*common, "best", "--trial", "0", "--out", str(work / "default.yaml"), "--overrides", json.dumps(_names("bench-paml-default"))],
               work / "default.log")  # fmt: skip
        sh([*common, "best", "--overrides", json.dumps(_names(names[f"paml_tuned_{m}"]))], work / f"best_{m}.log")
    fits = {"paml_default": work / "default.yaml", **{f"paml_tuned_{m}": configs[m][1] for m in metrics}}
    for alias, cfg in fits.items():
        if not (cache_dir() / "attributors" / f"{names[alias]}.ckpt").is_file():
            sh([PY, "train.py", "fit", "--config", str(cfg), *fit_budget], work / f"fit_{alias}.log")
    out_dir = ROOT / "outputs" / "evaluate" / results_name
    sh([PY, "explain.py", "evaluate", "--config", "configs/eval/aml_minilm_movies.yaml",
        "--methods", json.dumps([f"{a}=paml" for a in fits]),
        "--method_options", json.dumps({a: {"checkpoint": f"amlx:{names[a]}"} for a in fits}),
        "--n", str(n), "--out_dir", str(out_dir), "--results_name", "null", "--progress", "false"],
       work / "evaluate.log")  # fmt: skip
    report(metrics, configs, fits, out_dir, storage, results_name, dict(
        n_trials=n_trials, n_startup_trials=n_startup_trials, epochs=epochs, train=train, val=val, n=n))


def _names(name: str) -> dict:
    return {"trainer.logger.CSVLogger.init_args.name": name, "trainer.logger.WandbLogger.init_args.name": name,
            "trainer.callbacks.MetricCheckpoint.init_args.export_to": f"amlx:{name}"}  # fmt: skip


def report(metrics, configs, fits, out_dir: Path, storage: str, results_name: str, budget: dict) -> None:
    """Rows from the per-example score files of ``explain.py evaluate`` (one file per alias), plus paired deltas."""
    import numpy as np

    from amlx.jobs.evaluate import summarize

    scores = {a: [json.loads(line) for line in (out_dir / "scores" / f"{a}.jsonl").read_text().splitlines()]
              for a in fits}  # fmt: skip
    all_metrics = [k for k in scores["paml_default"][0] if metric_registry.direction(k)]
    rows = []
    for alias, cfg in fits.items():
        lam = {k: load_yaml(cfg)["model"]["init_args"][k] for k in LAMBDAS}
        kept = sorted(scores[alias], key=lambda r: r["index"])[: budget["n"]]
        for m in all_metrics:
            mean, ci = summarize([r[m] for r in kept])
            rows.append({"method": "paml", "variant": alias.removeprefix("paml_"), "metric": m, "mean": mean,
                         "ci95": ci, "n": len(kept), **lam})  # fmt: skip
    st = make_storage(storage, heartbeat_interval=None)
    studies, held = {}, {}
    for m in metrics:
        study = optuna.load_study(study_name=configs[m][0], storage=st)
        studies[m] = {"study": configs[m][0], "direction": study.direction.name.lower(),
                      "trials": {s.name.lower(): len(study.get_trials(states=(s,))) for s in optuna.trial.TrialState},
                      "best_trial": study.best_trial.number, "best_params": study.best_params,
                      "best_val": study.best_value, "default_val (trial 0)": study.trials[0].value,
                      "val_by_trial": {t.number: t.value for t in study.trials}}  # fmt: skip
        by = {a: {r["index"]: r[m] for r in scores[a]} for a in ("paml_default", f"paml_tuned_{m}")}
        common = sorted(set(by["paml_default"]) & set(by[f"paml_tuned_{m}"]))[: budget["n"]]
        diff = np.array([by[f"paml_tuned_{m}"][i] - by["paml_default"][i] for i in common])
        better = "higher" if metric_registry.direction(m) == "higher" else "lower"
        mean, ci = summarize(diff.tolist())
        held[m] = {"tuned_minus_default": mean, "ci95": ci, "n": len(common), "better_is": better,
                   "tuned_beats_default": bool(mean > 0 if better == "higher" else mean < 0),
                   "significant_at_95": bool(abs(mean) > ci)}  # fmt: skip
    notes = ("Small-budget per-metric tuning of pAML's λ's (not the seed code's 30 trials × 2 epochs), then the "
             "best configuration of each study and the default λ's (1, 1, 1; trial 0 of each study) trained with the "
             "same budget and evaluated by explain.py evaluate on the same held-out test sentences; rows carry each "
             "checkpoint's λ's. Studies and held-out paired differences (tuned − default, per example):\n\n"
             + json.dumps({"studies": studies, "held_out": held}, indent=1))  # fmt: skip
    setup = {"explained_model": "amlx:minilm-movies", "attributor": "pAML (configs/aml/paml_minilm_movies.yaml)",
             "dataset": "amlx:movies", "split": "test", "n_examples": budget["n"], "tuning": budget,
             "storage": storage, "seed": 0, "threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    write_results(results_name, rows, setup, notes=notes, direction=metric_registry.direction)


if __name__ == "__main__":
    CLI(main, as_positional=False)
