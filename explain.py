"""Explain, evaluate and render: ``python explain.py <subcommand> --config configs/....yaml``.

Subcommands: ``main`` (the README's main job), ``evaluate`` (methods × metrics table, resumable),
``explain`` (attributions for texts, a file or a dataset split → terminal, HTML, JSONL), ``report`` (the HTML
page comparing the methods of a finished evaluate run: ``explain.py report --run OUT_DIR --out report.html``),
``robustness`` (the top-k explanation attack per method and objective, resumable).
"""

from jsonargparse import CLI

from amlx.jobs.evaluate import evaluate
from amlx.jobs.explain import explain
from amlx.jobs.robustness import robustness
from amlx.main_job import main
from amlx.report import report

COMMANDS = {"main": main, "evaluate": evaluate, "explain": explain, "report": report, "robustness": robustness}

if __name__ == "__main__":
    CLI(COMMANDS, as_positional=False)
