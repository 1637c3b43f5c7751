"""``tune.py``: per-metric Optuna tuning of a ``train.py fit`` config (docs/tuning.md).

``Tuner(...).run()`` is one worker: it opens (or creates) the study, runs trials until the study has
``n_trials`` finished (complete + pruned) trials, then writes the best configuration. Start as many workers as
you like on one storage; each trial is one single-process ``train.py fit`` of the trial's config.
``Tuner(...).best()`` writes the best configuration (or any trial's) without running trials.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.trial import TrialState

from amlx.tuning import config as cfgs
from amlx.tuning.storage import is_journal, make_storage
from amlx.tuning.study import TrialSeededTPE, direction, open_study

if TYPE_CHECKING:  # Lightning is imported by the trials that fit, not by a worker that starts or waits
    from amlx.tuning.pruning import OptunaPruning

LAMBDAS = {f"model.init_args.{k}": {"low": 0.0, "high": 1.0} for k in ("lambda_p", "lambda_a", "lambda_inv")}
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(Exception):
    """A trial asked for after the study's ``n_trials`` were all finished or running (a race between workers)."""


def suggest(trial: optuna.Trial, name: str, spec: dict) -> Any:
    """Sample one parameter: ``{low, high[, log][, step]}`` (float, or int when both bounds are ints) or ``{choices}``."""
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    low, high = spec["low"], spec["high"]
    if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
        return trial.suggest_int(name, low, high, step=spec.get("step", 1), log=spec.get("log", False))
    return trial.suggest_float(name, float(low), float(high), step=spec.get("step"), log=spec.get("log", False))


def _safe_url(url: str) -> str:
    if is_journal(url):
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class Tuner:
    """One study per metric over ``search_space`` (dotted paths of the fit config); see docs/tuning.md.

    Args:
        metric: the metric of interest (registered; the study's direction follows ``amlx.metrics.direction``).
        fit_config: the ``train.py fit`` YAML that every trial edits; its callbacks' ``metric`` become ``metric``.
        study_name: the study's name in the storage (default ``<fit_config stem>-<metric>``).
        storage: ``sqlite:///file.db``, a database URL or ``journal:<file>`` (``amlx.tuning.storage``).
        n_trials: the study's budget: finished (complete + pruned) trials over all workers.
        search_space: dotted path → ``{low, high[, log][, step]}`` or ``{choices: [...]}``; the parameter's name
            is the path's last segment (``lambda_p``). Default: λ_p, λ_a, λ_inv ~ U[0, 1] (seed code).
        enqueue: parameter sets that run first (by name), e.g. the defaults, so the study compares with them.
        trial_overrides: dotted path → value for every trial (its budget: epochs, examples, validation size).
        best_overrides: dotted path → value for the written best configuration (its names, export target).
        best_config: where the best configuration is written (default ``<out_dir>/<study_name>/best.yaml``).
        seed: TPE seed (trial n samples with seed + n); the fit's own ``seed_everything`` is the fit config's.
        sampler_options: more ``optuna.samplers.TPESampler`` arguments (``n_startup_trials``, ...).
        pruner: prunes on the per-validation metric; ``optuna.pruners.NopPruner()`` turns pruning off.
        heartbeat_interval: seconds between a running trial's heartbeats (None: no heartbeat, no stale trials).
        grace_period: seconds without a heartbeat after which a running trial is stale → FAIL (default 2 × interval).
        retry_stale: how many times a stale trial's parameters are enqueued again.
        out_dir: trials log under ``<out_dir>/<study_name>/trial_NNNN`` (CSV, the trial's ``config.yaml``, W&B).
        wandb: ``auto`` (offline unless a W&B API key is configured), ``offline``, ``online`` or ``off``.
        wandb_project: the W&B project; every trial is a run in the group ``study_name``.
    """

    def __init__(
        self,
        metric: str,
        fit_config: str,
        study_name: str | None = None,
        storage: str = "sqlite:///runs/tune/amlx.db",
        n_trials: int = 30,
        search_space: dict[str, dict[str, Any]] | None = None,
        enqueue: list[dict[str, Any]] | None = None,
        trial_overrides: dict[str, Any] | None = None,
        best_overrides: dict[str, Any] | None = None,
        best_config: str | None = None,
        seed: int = 0,
        sampler_options: dict[str, Any] | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
        heartbeat_interval: int | None = 60,
        grace_period: int | None = None,
        retry_stale: int = 0,
        out_dir: str = "runs/tune",
        wandb: Literal["auto", "offline", "online", "off"] = "auto",
        wandb_project: str = "amlx",
    ) -> None:
        direction(metric)  # an unknown metric fails here, before any storage is touched
        self.metric = metric
        self.fit_config = fit_config
        self.study_name = study_name or f"{Path(fit_config).stem}-{metric}"
        self.storage_url = storage
        self.n_trials = n_trials
        self.search_space = dict(search_space or LAMBDAS)
        self.names = {path: path.rsplit(".", 1)[-1] for path in self.search_space}
        if len(set(self.names.values())) != len(self.names):
            raise ValueError(f"two search_space paths end in the same name: {sorted(self.search_space)}")
        self.enqueue = enqueue or []
        self.trial_overrides = trial_overrides or {}
        self.best_overrides = best_overrides or {}
        self.out_dir = Path(out_dir) / self.study_name
        self.best_config = Path(best_config) if best_config else self.out_dir / "best.yaml"
        self.seed = seed
        self.sampler_options = sampler_options or {}
        self.pruner = pruner if pruner is not None else optuna.pruners.MedianPruner(n_startup_trials=5)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.retry_stale = retry_stale
        self.wandb = wandb
        self.wandb_project = wandb_project

    # ------------------------------------------------------------------------------------------ study
    def _study(self) -> optuna.Study:
        """The study in its storage (created, with ``enqueue``, by the first worker)."""
        storage = make_storage(self.storage_url, self.heartbeat_interval, self.grace_period, self.retry_stale)
        sampler = TrialSeededTPE(self.seed, **self.sampler_options)
        return open_study(self.study_name, storage, self.metric, sampler, self.pruner, self.enqueue)

    def run(self) -> Path | None:
        """Run trials until the study has ``n_trials`` finished ones; write and return the best configuration.

        While the remaining budget is taken by other workers' running trials, the worker waits: those end, or
        their heartbeats stop (a killed worker), they are set to FAIL and this worker replaces them. A worker
        exits when the study has ``n_trials`` finished trials and none running, so no trial is left RUNNING.
        """
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self._study()
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            done = len(study.get_trials(deepcopy=False, states=DONE))
            running = len(study.get_trials(deepcopy=False, states=self._live()))
            if done >= self.n_trials and not running:
                break
            if done + running >= self.n_trials:  # others' trials take the budget: wait until they end or go stale
                time.sleep(min(self.heartbeat_interval or 10, 10))
                continue
            study.optimize(self._objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=True)
        return self._write_best(study)

    def _live(self) -> tuple[TrialState, ...]:
        """States of trials that take budget until they end: RUNNING, when heartbeats can tell a dead one."""
        return (TrialState.RUNNING,) if self.heartbeat_interval else ()

    def _objective(self, trial: optuna.Trial) -> float:
        """The trial's objective (``_fit``), unless the study's budget is already taken (``SurplusTrial``)."""
        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(*DONE, *self._live()))
                 if t.number < trial.number]  # fmt: skip
        if len(ahead) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise SurplusTrial(f"trial {trial.number}: the study's {self.n_trials} trials are taken")
        params = {name: suggest(trial, name, self.search_space[path]) for path, name in self.names.items()}
        from amlx.tuning.pruning import OptunaPruning

        pruning = OptunaPruning(trial, self.metric)
        state, err = TrialState.FAIL, None
        try:
            value = self._fit(trial, params, pruning)
            state = TrialState.COMPLETE
            return value
        except optuna.TrialPruned:
            state = TrialState.PRUNED
            raise
        except BaseException as e:
            err = repr(e)
            raise
        finally:
            if pruning.best_step is not None:
                trial.set_user_attr("best_step", pruning.best_step)
            self._finish_wandb(trial.number, state, pruning, err)

    def _fit(self, trial: optuna.Trial, params: dict[str, Any], pruning: OptunaPruning) -> float:
        """Fit the trial's config single-process; the objective is the best ``val/<metric>`` of the run."""
        from amlx.cli import main

        with warnings.catch_warnings():  # LightningCLI warns when sys.argv (tune.py's) and args are both given
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
            cli = main(self._trial_config(trial.number, params), run=False,
                       trainer_defaults={"callbacks": [pruning]})  # fmt: skip
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        if pruning.best is None:
            raise RuntimeError(f"trial {trial.number} ran no validation: check limit_val_batches / max_epochs")
        return pruning.best

    # ------------------------------------------------------------------------------------------ configs
    def _fit_config(self, params: dict[str, Any]) -> dict:
        """The fit config for ``metric`` with the parameters set (by name)."""
        cfg = cfgs.for_metric(cfgs.load_yaml(self.fit_config), self.metric)
        return cfgs.apply(cfg, {path: params[name] for path, name in self.names.items() if name in params})

    def _trial_config(self, number: int, params: dict[str, Any]) -> dict:
        """The config one trial fits: single process, no checkpoints, the trial's loggers, ``trial_overrides``."""
        cfg = cfgs.apply(cfgs.without_checkpoints(self._fit_config({})), self.trial_overrides)
        cfg = cfgs.apply(cfg, {path: params[name] for path, name in self.names.items()})
        trainer = cfg.setdefault("trainer", {})
        trainer.update(devices=1, num_nodes=1, strategy="auto")  # workers parallelize trials; DDP is for fits
        trainer["logger"] = self._loggers(number, params)
        cfg["test_after_fit"] = False
        return cfg

    def _loggers(self, number: int, params: dict[str, Any]) -> list[dict]:
        version = f"trial_{number:04d}"
        loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(self.out_dir), "name": "", "version": version}}]  # fmt: skip
        if self.wandb != "off":
            config = {"study": self.study_name, "metric": self.metric, "trial": number, **params}
            init = {"save_dir": str(self.out_dir), "project": self.wandb_project, "group": self.study_name,
                    "name": f"{self.study_name}-{version}", "job_type": "tune", "tags": [self.metric],
                    "config": config, "offline": self.wandb == "offline"}  # fmt: skip
            if self.wandb == "online":
                init["mode"] = "online"
            loggers.append({"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": init})
        return loggers

    def _finish_wandb(self, number: int, state: TrialState, pruning: OptunaPruning, err: str | None) -> None:
        """End the trial's W&B run with its final scores (the next trial must not reuse it)."""
        if self.wandb == "off":
            return
        import wandb

        if wandb.run is None:
            return
        summary = {"tune/trial": number, "tune/state": state.name, f"tune/best_{self.metric}": pruning.best,
                   "tune/best_step": pruning.best_step, "tune/validations": len(pruning.values)}  # fmt: skip
        if err:
            summary["tune/error"] = err[:500]
        wandb.run.summary.update(summary)
        wandb.run.finish(exit_code=1 if state == TrialState.FAIL else 0)

    def best(self, trial: int | None = None, out: str | None = None, overrides: dict[str, Any] | None = None):
        """Write the best trial's configuration (or trial number ``trial``'s) as a ``train.py fit`` YAML.

        The YAML is ``fit_config`` for this metric with the trial's parameters and ``best_overrides`` (then
        ``overrides``), written to ``best_config`` (or ``out``). Returns its path; None when no trial completed.
        """
        return self._write_best(self._study(), trial, out, overrides)

    def _write_best(self, study: optuna.Study, trial: int | None = None, out: str | None = None,
                    overrides: dict[str, Any] | None = None) -> Path | None:  # fmt: skip
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return None
        chosen = study.best_trial if trial is None else study.trials[trial]
        cfg = cfgs.apply(self._fit_config(chosen.params), {**self.best_overrides, **(overrides or {})})
        counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        value = "n/a" if chosen.value is None else f"{chosen.value:.6g}"
        which = "best trial" if trial is None else "trial"
        path = Path(out) if out else self.best_config
        header = (
            f"Tuned for {self.metric} ({direction(self.metric)}) by `python tune.py --config <tune yaml> run`:\n"
            f"study {self.study_name!r} in {_safe_url(self.storage_url)}, {which} #{chosen.number} "
            f"(val/{self.metric} = {value}); trials: "
            + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
            + f"\nparams: {chosen.params}\ntrials' budget (trial_overrides): {self.trial_overrides}"
            + f"\npython train.py fit --config {path}"
        )
        return cfgs.write_yaml(path, cfg, header)

