"""Inline SVG line charts (one polyline per series) for self-contained HTML pages: no scripts, no external files."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

# matplotlib's tab10: distinguishable, and the same colours as the PNG plots of amlx.plots
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # fmt: skip


@dataclass
class Series:
    """One line: ``points`` (x, y) in order of x; ``key`` goes to the polyline's ``data-method`` (filters)."""

    label: str
    points: list[tuple[float, float]]
    colour: str
    key: str = ""


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


def line_chart(series: list[Series], x_title: str, y_title: str, title: str = "", width: int = 420,
               height: int = 260) -> str:  # fmt: skip
    """An ``<svg>`` element: axes with round ticks, a polyline (and dots) per series, hover titles on points."""
    pts = [p for s in series for p in s.points if math.isfinite(p[0]) and math.isfinite(p[1])]
    left, right, top, bottom = 52, 12, 24 if title else 10, 40
    esc = html.escape
    head = (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title or y_title)}">')  # fmt: skip
    parts = [head]
    if title:
        parts.append(f'<text x="{width / 2:.1f}" y="15" text-anchor="middle" class="chart-title">{esc(title)}</text>')
    if not pts:
        parts.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle">no points</text></svg>')
        return "".join(parts)
    xt = nice_ticks(min(p[0] for p in pts), max(p[0] for p in pts))
    yt = nice_ticks(min(p[1] for p in pts), max(p[1] for p in pts))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / ((y1 - y0) or 1) * ph

    parts.append('<g class="axes">')
    for t in yt:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{sy(t) + 3:.1f}" text-anchor="end">{_fmt(t)}</text>')  # fmt: skip
    for t in xt:
        parts.append(f'<text x="{sx(t):.1f}" y="{top + ph + 13}" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>'
                 f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="axis"/>'
                 f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{esc(x_title)}</text>'
                 f'<text transform="translate(12 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                 f"{esc(y_title)}</text></g>")  # fmt: skip
    for s in series:
        good = [(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)]
        if not good:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2"><title>{esc(s.label)}: '
                       f"({_fmt(x)}, {y:.4f})</title></circle>" for x, y in good)  # fmt: skip
        parts.append(f'<g class="series" data-method="{esc(s.key or s.label)}" stroke="{s.colour}" fill="{s.colour}">'
                     f'<polyline points="{coords}" fill="none" stroke-width="1.6"/>{dots}</g>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)
