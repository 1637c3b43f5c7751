"""Fine-tune explained classifiers and pretrain attributors: ``python train.py fit --config configs/....yaml``.

A user error (e.g. a fit that would replace a completed classifier export) is one line on stderr and exit status 2
(``--debug`` shows the traceback).
"""

import sys

from amlx.cli import main
from amlx.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
