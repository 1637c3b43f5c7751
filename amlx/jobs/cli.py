"""``explain.py``'s command line: ``main``, ``evaluate``, ``explain``, ``report``, ``robustness``, ``compare`` as a person
types them.

A list option takes one or more plain values (``--texts "A great film"``, ``--texts "a" "b"``,
``--methods lime occlusion``) as well as jsonargparse's forms (``--texts '["a", "b"]'``, ``--texts+ a``).
A user error (``amlx.errors.UserError``: an unknown method or option, an empty text, a missing asset, a label
outside the label set, a changed configuration on resume) prints one line and exits with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Callable

import yaml
from jsonargparse import CLI

from amlx.errors import run_cli
from amlx.jobs.compare import compare
from amlx.jobs.evaluate import evaluate
from amlx.jobs.explain import explain
from amlx.jobs.main import main as main_job
from amlx.jobs.robustness import robustness
from amlx.report import report

COMMANDS: dict[str, Callable] = {"main": main_job, "evaluate": evaluate, "explain": explain, "report": report,
                                 "robustness": robustness, "compare": compare}  # fmt: skip


def _is_str_list(hint) -> bool:
    if typing.get_origin(hint) is list:
        return typing.get_args(hint) == (str,)
    return any(_is_str_list(a) for a in typing.get_args(hint)) if typing.get_origin(hint) else False


def list_flags(fn: Callable) -> set[str]:
    """``--name`` of every parameter of ``fn`` typed ``list[str]`` (optionally ``| None``)."""
    return {f"--{name}" for name, hint in typing.get_type_hints(fn).items() if _is_str_list(hint)}


def _is_list_literal(value: str) -> bool:
    """Whether ``value`` is a YAML/JSON list (``'["a", "b"]'``) rather than one text that starts with ``[``."""
    if not value.lstrip().startswith("["):
        return False
    try:
        return isinstance(yaml.safe_load(value), list)
    except yaml.YAMLError:
        return False


def join_list_values(argv: list[str], flags: set[str]) -> list[str]:
    """``--flag a b c`` → ``--flag '["a", "b", "c"]'`` for the list ``flags``; other arguments are kept as they are.

    The values of a flag run up to the next argument starting with ``--``. A single value that already is a list
    (``'["a", "b"]'``) is kept, so jsonargparse's own list syntax still works.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag not in flags:
            out.append(arg)
            i += 1
            continue
        if eq:
            values, i = [inline], i + 1
        else:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            values, i = argv[i + 1 : j], j
        if not values:  # let jsonargparse report the missing value
            out.append(arg)
        elif len(values) == 1 and _is_list_literal(values[0]):
            out += [flag, values[0]]
        else:
            out += [flag, json.dumps(values)]
    return out


def parse_and_run(argv: list[str]):
    """Run the subcommand ``argv`` names (jsonargparse ``CLI``), list values joined first."""
    command = next((a for a in argv if a in COMMANDS), None)
    if command is not None:
        k = argv.index(command)
        argv = argv[: k + 1] + join_list_values(argv[k + 1 :], list_flags(COMMANDS[command]))
    return CLI(COMMANDS, as_positional=False, args=argv)


def main(argv: list[str] | None = None) -> int:
    """``explain.py``: exit status 0, or 2 with one line on stderr for a user error (``--debug``: the traceback)."""
    return run_cli(parse_and_run, list(sys.argv[1:] if argv is None else argv))
