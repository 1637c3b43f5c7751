"""A tuning worker whose trial is a cheap function instead of a fit: ``python -m tests.tune_fake --config T.yaml run``.

``FakeFitTuner`` is ``amlx.tuning.Tuner`` (the same study, storage, heartbeat, budget and stale-trial handling)
with ``_fit`` replaced: it appends ``<trial number> <params as JSON>`` to ``<out_dir>/<study>/fits.log``, sleeps
``AMLX_TEST_FIT_S`` seconds (default 0.3) and returns λ_p + λ_a + λ_inv. With ``AMLX_TEST_HANG=<file>`` set it writes
the trial number to the file and hangs, so a test can SIGKILL the worker mid-trial.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from amlx.tuning import Tuner


class FakeFitTuner(Tuner):
    """``Tuner`` with a fit that takes a fraction of a second (see module docstring)."""

    def _fit(self, trial, params, pruning) -> float:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / "fits.log").open("a") as f:
            f.write(f"{trial.number} {json.dumps(params, sort_keys=True)}\n")
        marker = os.environ.get("AMLX_TEST_HANG")
        if marker:
            Path(marker).write_text(str(trial.number))
            time.sleep(600)
        time.sleep(float(os.environ.get("AMLX_TEST_FIT_S", "0.3")))
        return float(sum(params.values()))


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(FakeFitTuner, as_positional=False)
