"""Explain, evaluate and render: ``python explain.py <subcommand> --config configs/....yaml``.

Subcommands: ``main`` (the README's main job), ``evaluate`` (methods × metrics table, resumable),
``explain`` (attributions for texts, a file or a dataset split → terminal, HTML, JSONL). User errors print one
line and exit with status 2 (``--debug`` shows the traceback); see ``amlx/jobs/cli.py``.
"""

import sys

from amlx.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
