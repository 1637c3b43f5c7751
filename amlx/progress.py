"""Progress of long steps: a redrawn tqdm bar on a terminal, one plain line every ``every`` % elsewhere.

Non-interactive means the stream is not a TTY or ``CI`` is set (logs, CI, ``sbatch``): a redrawn bar would
fill the log with carriage returns, so a line such as ``[amlx] gradient_x_input: 30/100 (30%) 12 s, ~28 s left``
is printed each time another ``every`` % is done. A bar opened while another is open (a method's own bar
inside the evaluate job's) is drawn below it on a terminal and prints nothing elsewhere, so logs get one line
per step of the outermost loop only.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm.auto import tqdm

_OPEN = contextvars.ContextVar("amlx_open_bars", default=0)  # bars open in this context (nesting depth)
_QUIET = contextvars.ContextVar("amlx_quiet", default=False)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Bars opened inside show nothing (ranks > 0 of a distributed job: rank 0 reports the progress)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def interactive(stream: TextIO) -> bool:
    """True on a terminal outside CI (``CI`` unset or empty)."""
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("CI")


class Progress:
    """``total`` steps of ``desc``; ``update(n)`` after each; a context manager (``close`` on exit).

    ``enabled=False`` shows nothing; ``initial`` steps are already done (a resumed run); ``stream`` is stderr.
    """

    def __init__(
        self, total: int, desc: str, enabled: bool = True, every: int = 10, initial: int = 0,
        stream: TextIO | None = None,
    ) -> None:  # fmt: skip
        if not 0 < every <= 100:
            raise ValueError(f"every must be a percentage in (0, 100], got {every}")
        self.total, self.desc, self.every, self.done = int(total), desc, every, int(initial)
        self._initial = self.done
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.total > 0 and not _QUIET.get()
        self._depth = _OPEN.get()
        self._token = _OPEN.set(self._depth + 1) if self.enabled else None
        self._bar = None
        self._start = time.perf_counter()
        self._next = self._next_percent()
        if not self.enabled:
            return
        if interactive(self.stream):
            self._bar = tqdm(total=self.total, desc=desc, initial=self.done, file=self.stream,
                             position=self._depth, leave=self._depth == 0)  # fmt: skip
        elif self._depth == 0 and self.done:
            self._line(f"resumed at {self.done}/{self.total}")

    def _next_percent(self) -> int:
        """The next multiple of ``every`` above the percentage done so far."""
        return (100 * self.done // self.total // self.every + 1) * self.every if self.total else 100

    def _line(self, text: str) -> None:
        self.stream.write(f"[amlx] {self.desc}: {text}\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        self.done = min(self.done + n, self.total)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        percent = 100 * self.done / self.total
        if self._depth > 0 or percent < self._next:
            return
        elapsed = time.perf_counter() - self._start
        rate = elapsed / max(self.done - self._initial, 1)  # seconds per step in this run (not the resumed part)
        left = f", ~{rate * (self.total - self.done):.0f} s left" if self.done < self.total else ""
        self._line(f"{self.done}/{self.total} ({percent:.0f}%) {elapsed:.0f} s{left}")
        self._next = self._next_percent()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._token is not None:
            _OPEN.reset(self._token)
            self._token = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
