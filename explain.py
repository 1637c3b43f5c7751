"""Explain, evaluate and render: ``python explain.py <subcommand> --config configs/....yaml``.

Subcommands: ``main`` (the README's main job), ``evaluate`` (methods × metrics table, resumable),
``explain`` (attributions for texts, a file or a dataset split → terminal, HTML, JSONL), ``report`` (the HTML
page comparing the methods of a finished evaluate run: ``explain.py report --run OUT_DIR --out report.html``),
``robustness`` (the top-k explanation attack per method and objective, resumable), ``compare`` (one evaluation over
a list of explained models, one table with a model column). User errors print one line and
exit with status 2 (``--debug`` shows the traceback); see ``amlx/jobs/cli.py``.
"""

import sys

from amlx.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
