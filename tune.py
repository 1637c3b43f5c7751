"""Tune a ``train.py fit`` config per metric with Optuna: ``python tune.py --config configs/tune/aml_suff.yaml run``.

Subcommands (after the config): ``run`` (one worker: trials until the study has ``n_trials``, then the best
configuration is written) and ``best`` (write the best configuration, or ``--trial N``'s, from the storage).
Start several ``run`` workers on one storage to tune in parallel; see docs/tuning.md.
"""

from jsonargparse import CLI

from amlx.cli import wandb_offline_without_key
from amlx.tuning import Tuner

if __name__ == "__main__":
    wandb_offline_without_key()  # the trials' WandbLogger: offline unless a W&B key is configured
    CLI(Tuner, as_positional=False)
