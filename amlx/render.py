"""Show attribution records: coloured text in the terminal (ANSI) or one self-contained offline HTML page.

Each character of an example's text takes the score of the attributable token covering it; scores are
normalized per example by the largest |score|, positive (supports the target) in red, negative in blue.
"""

from __future__ import annotations

import html
import os
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from amlx.records import Attribution

POSITIVE = (214, 39, 40)  # red
NEGATIVE = (31, 119, 180)  # blue


def segments(record: Attribution) -> list[tuple[str, float]]:
    """The text cut into (piece, normalized score in [-1, 1]) runs; 0 where no attributable token covers it."""
    text = record.text
    char = np.zeros(len(text))
    for (s, e), score, attributable in zip(record.offsets, record.scores, record.attributable):
        if attributable and e > s:
            # overlapping tokens (byte-level pieces of one character) keep the strongest score
            stronger = np.abs(char[s:e]) < abs(score)
            char[s:e] = np.where(stronger, score, char[s:e])
    top = np.abs(char).max(initial=0.0)
    if top > 0:
        char = char / top
    out: list[tuple[str, float]] = []
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or char[i] != char[start]:
            out.append((text[start:i], float(char[start])))
            start = i
    return out


def rgb(weight: float) -> tuple[int, int, int]:
    """White blended toward red (weight > 0) or blue (weight < 0) by |weight| ∈ [0, 1]."""
    base = POSITIVE if weight > 0 else NEGATIVE
    a = min(abs(weight), 1.0)
    return tuple(round(255 + (c - 255) * a) for c in base)


def prediction(record: Attribution) -> tuple[str, float]:
    """The predicted class (its label when it is the target; records carry only the target's label) and p."""
    pred = int(np.argmax(record.probs))
    return (record.target_label if pred == record.target else f"class {pred}"), float(record.probs[pred])


def _method(record: Attribution) -> str:
    return f"{record.method}/{record.variant}" if record.variant else record.method


def _summary(record: Attribution) -> str:
    label, p = prediction(record)
    return f"{_method(record)} | target {record.target_label} (p={record.probs[record.target]:.3f}) | prediction {label} (p={p:.3f})"


def use_colour(stream: TextIO) -> bool:
    """ANSI colours only on a terminal and when ``NO_COLOR`` is unset (https://no-color.org)."""
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


def to_terminal(records: list[Attribution], stream: TextIO | None = None, colour: bool | None = None) -> str:
    """Write the records to ``stream`` (stdout) with 24-bit background colours, or plain ``piece[+0.52]`` markers."""
    stream = stream or sys.stdout
    colour = use_colour(stream) if colour is None else colour
    lines = []
    for r in records:
        parts = []
        for piece, w in segments(r):
            if w == 0:
                parts.append(piece)
            elif colour:
                red, green, blue = rgb(w)
                parts.append(f"\x1b[48;2;{red};{green};{blue}m\x1b[38;2;0;0;0m{piece}\x1b[0m")
            else:
                parts.append(f"{piece}[{w:+.2f}]")
        lines += [_summary(r), "  " + "".join(parts)]
    out = "\n".join(lines) + "\n"
    stream.write(out)
    return out


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
td, th { border-bottom: 1px solid #ddd; padding: .4em .6em; text-align: left; vertical-align: top; }
td.text { line-height: 1.9; white-space: pre-wrap; }
span.s { border-radius: 3px; padding: .1em 0; }
.meta { color: #666; font-size: .85em; }
"""


def to_html(
    records: list[Attribution], path: str | Path | None = None, title: str = "amlx attributions"
) -> str:
    """One offline HTML page (inline CSS, no scripts): a row per example and method; written to ``path`` if given."""
    rows = []
    for i, r in enumerate(records):
        spans = []
        for piece, w in segments(r):
            if w == 0:
                spans.append(html.escape(piece))
            else:
                red, green, blue = rgb(w)
                spans.append(
                    f'<span class="s" style="background-color: rgb({red}, {green}, {blue})" '
                    f'title="{w:+.3f}">{html.escape(piece)}</span>'
                )
        label, p = prediction(r)
        example = r.example_id if r.example_id is not None else str(i)
        rows.append(
            "<tr>"
            f"<td>{html.escape(str(example))}</td><td>{html.escape(_method(r))}</td>"
            f"<td>{html.escape(r.target_label)} <span class=meta>p={r.probs[r.target]:.3f}</span></td>"
            f"<td>{html.escape(label)} <span class=meta>p={p:.3f}</span></td>"
            f'<td class="text">{"".join(spans)}</td>'
            "</tr>"
        )
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        '<p class="meta">Scores normalized per row by the largest |score|: red supports the target class, blue '
        "opposes it; hover a highlighted span for its score.</p>"
        "<table><tr><th>example</th><th>method</th><th>target</th><th>prediction</th><th>text</th></tr>"
        + "\n".join(rows)
        + "</table></body></html>\n"
    )
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(page, encoding="utf-8")
    return page
