"""Per-metric Optuna tuning of ``train.py fit`` configs (docs/tuning.md): ``python tune.py --config ... run``."""

from amlx.tuning.job import Tuner
from amlx.tuning.storage import make_storage
from amlx.tuning.study import TrialSeededTPE, direction, open_study
from amlx.tuning.wandb_runs import offline_runs, read_run

__all__ = ["Tuner", "OptunaPruning", "make_storage", "TrialSeededTPE", "direction", "open_study", "offline_runs",
           "read_run"]


def __getattr__(name: str):
    if name == "OptunaPruning":  # imported on first use: it brings in Lightning, which a waiting worker never needs
        from amlx.tuning.pruning import OptunaPruning

        return OptunaPruning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
