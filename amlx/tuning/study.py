"""One Optuna study per metric: its direction comes from the metric registry, its TPE is seeded per trial.

``TrialSeededTPE(seed)`` samples trial n with ``TPESampler(seed=seed + n)``: TPE keeps no state beyond the
study's trials, so a trial's parameters depend only on the seed, its number and the finished trials before it
— the same in one worker or many, and never the same random draws in two workers that share a study.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from amlx import metrics as metric_registry


def direction(metric: str) -> str:
    """``"maximize"`` or ``"minimize"``: the Optuna direction of a registered metric."""
    d = metric_registry.direction(metric)
    if d is None:
        raise ValueError(f"unknown metric {metric!r}; registered metrics: {', '.join(metric_registry.names())}")
    return "maximize" if d == "higher" else "minimize"


class TrialSeededTPE(BaseSampler):
    """``TPESampler`` seeded with ``seed + trial.number`` for each trial; ``options`` go to ``TPESampler``."""

    def __init__(self, seed: int = 0, **options) -> None:
        self.seed = seed
        self.options = options
        self._samplers: dict[int, TPESampler] = {}

    def _tpe(self, trial: FrozenTrial) -> TPESampler:
        if trial.number not in self._samplers:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._samplers[trial.number] = TPESampler(seed=self.seed + trial.number, **self.options)
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._tpe(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        return self._tpe(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, dist: BaseDistribution):
        return self._tpe(trial).sample_independent(study, trial, name, dist)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._tpe(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values) -> None:
        sampler = self._samplers.pop(trial.number, None)
        if sampler is not None:
            sampler.after_trial(study, trial, state, values)


def open_study(
    name: str,
    storage,
    metric: str,
    sampler: BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    enqueue: list[dict] | None = None,
) -> optuna.Study:
    """Create the study ``name`` for ``metric``, or load it when it exists (another worker's, or a resumed one).

    Only the worker that creates the study enqueues ``enqueue`` (e.g. the default λ's), so they run once.
    A study created for another metric or direction is refused.
    """
    want = direction(metric)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=want, sampler=sampler, pruner=pruner)
        study.set_user_attr("metric", metric)
        for params in enqueue or []:
            study.enqueue_trial(params)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    have = study.direction.name.lower()
    other = study.user_attrs.get("metric", metric)
    if have != want or other != metric:
        raise ValueError(
            f"the study {name!r} exists for metric {other!r} ({have}), not {metric!r} ({want}); "
            "choose another study_name or storage"
        )
    return study
