"""Explain, evaluate and render: ``python explain.py <subcommand> --config configs/....yaml``.

Subcommands: ``main`` (the README's main job).
"""

from jsonargparse import CLI

from amlx.main_job import main

if __name__ == "__main__":
    CLI({"main": main}, as_positional=False)
