"""``OptunaPruning``: report ``val/<metric>`` to an Optuna trial after every validation and prune bad trials."""

from __future__ import annotations

import lightning as L
import optuna

from amlx.callbacks import monitor


class OptunaPruning(L.Callback):
    """Report the metric that ``MetricValidation(metric)`` logs to ``trial`` (step = validation index, from 0).

    Raises ``optuna.TrialPruned`` when the study's pruner says so — except during the last epoch, when the
    training is over and there is nothing left to save. ``best`` is the best reported value in the metric's
    direction (what ``MetricCheckpoint`` would select): the trial's objective. Single-process trials only
    (amlx tunes with one process per trial and several workers; see docs/tuning.md).
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.key, self.mode = monitor(metric)
        self.values: list[float] = []

    @property
    def best(self) -> float | None:
        if not self.values:
            return None
        return max(self.values) if self.mode == "max" else min(self.values)

    @property
    def best_step(self) -> int | None:
        return self.values.index(self.best) if self.values else None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.key not in trainer.callback_metrics:
            raise ValueError(
                f"OptunaPruning reads {self.key}, which only MetricValidation(metric={self.metric!r}) logs; "
                "add it to trainer.callbacks of the fit config"
            )
        value = float(trainer.callback_metrics[self.key])
        self.trial.report(value, len(self.values))
        self.values.append(value)
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
        if not last_epoch and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.key} = {value:.4g} at validation {len(self.values) - 1}")
