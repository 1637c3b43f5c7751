"""User errors, and how the command-line entry points report them: one line, exit status 2, no traceback.

A ``UserError`` is a mistake in what the user gave (a flag, a config, a text, an asset name), never a bug; its
message says what to do. Each concrete error also derives from the builtin it refines (``ValueError``,
``FileNotFoundError``), so library callers can catch either. ``run_cli`` is what ``explain.py`` calls: it prints
``error: <message>`` on stderr and returns 2; with ``--debug`` it lets the traceback through.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

USAGE_STATUS = 2  # argparse's status for usage errors; jsonargparse's own parse errors exit with it too
DEBUG_FLAG = "--debug"


class UserError(Exception):
    """A mistake in the user's input; the CLI prints only its message (which says what to do) and exits 2."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (a ``KeyError``'s message without the quotes ``str`` adds)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def run_cli(entry: Callable[[list[str]], Any], argv: list[str]) -> int:
    """Run ``entry(argv)`` (``--debug`` removed); a ``UserError`` → ``error: <message>`` on stderr and status 2."""
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        entry(argv)
    except UserError as e:
        if debug:
            raise
        print(f"error: {one_line(e)} (--debug shows the traceback)", file=sys.stderr, flush=True)
        return USAGE_STATUS
    return 0
