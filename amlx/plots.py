"""PNG plots of a results record (``benchmarks/results/<name>.json``), drawn with matplotlib's Agg backend.

``plot_results`` draws one panel per metric with a horizontal bar per method (mean, 95% interval as an error
bar, the best mean outlined when the metric's direction is known). Leaderboards (names starting with
``leaderboard``) get the cost/quality frontier instead: per metric, seconds per example (log scale) against the
mean, a point per method. ``write_results`` calls it for every results file it writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from amlx.svg import PALETTE

LEADERBOARD_PREFIX = "leaderboard"


def _label(row: dict) -> str:
    if row.get("label"):
        return row["label"]
    method = str(row.get("method", "?"))
    return f"{method}/{row['variant']}" if row.get("variant") else method


def _short(label: str, width: int = 28) -> str:
    """``label`` cut in the middle to ``width`` characters (the figure's legend has the full names)."""
    return label if len(label) <= width else label[: width // 2 - 1] + "…" + label[-(width // 2) :]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def plot_results(
    record: dict, path: str | Path, direction: Callable[[str], str | None] | None = None
) -> Path | None:
    """Write ``path`` (PNG) for ``record``; None (nothing written) when no row has a numeric mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in record.get("rows", []) if _finite(r.get("mean")) and "metric" in r]
    if not rows:
        return None
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    labels = list(dict.fromkeys(_label(r) for r in rows))
    colour = {lb: PALETTE[i % len(PALETTE)] for i, lb in enumerate(labels)}
    frontier = str(record.get("name", "")).startswith(LEADERBOARD_PREFIX)
    n_rows, n_cols = _grid(len(metrics))
    height = 0.6 + (0.8 if frontier else 0.28) * max(len(labels), 4)
    legend = 0.18 * len(labels) if any(_short(lb) != lb for lb in labels) else 0.0
    fig = Figure(figsize=(4.6 * n_cols, height * n_rows + 0.6 + legend), layout="constrained")
    FigureCanvasAgg(fig)
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        mrows = [r for r in rows if r["metric"] == metric]
        d = direction(metric) if direction else None
        arrow = {"higher": " (↑ higher is better)", "lower": " (↓ lower is better)"}.get(d or "", "")
        ax.set_title(metric + arrow, fontsize=10)
        if frontier:
            _frontier(ax, mrows, colour)
        else:
            _bars(ax, mrows, colour, d)
    fig.suptitle(str(record.get("name", "")), fontsize=11)
    if any(_short(lb) != lb for lb in labels):  # long labels (method options) in full below the panels
        from matplotlib.patches import Patch

        handles = [Patch(color=colour[lb], label=lb) for lb in labels]
        fig.legend(handles=handles, loc="outside lower center", fontsize=7, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _bars(ax, rows: list[dict], colour: dict[str, str], direction: str | None) -> None:
    """A horizontal bar per row: mean with its 95% interval; the best mean outlined in black."""
    means = [r["mean"] for r in rows]
    best = (max(means) if direction == "higher" else min(means)) if direction and len(rows) > 1 else None
    ys = list(range(len(rows)))[::-1]
    errs = [r["ci95"] if _finite(r.get("ci95")) else 0.0 for r in rows]
    ax.barh(ys, means, xerr=errs, color=[colour[_label(r)] for r in rows], capsize=3,
            edgecolor=["black" if m == best else "none" for m in means], linewidth=1.5)  # fmt: skip
    ax.set_yticks(ys, [_short(_label(r)) for r in rows], fontsize=8)
    ax.axvline(0, color="#888", linewidth=0.8)
    ax.tick_params(axis="x", labelsize=8)


def _frontier(ax, rows: list[dict], colour: dict[str, str]) -> None:
    """Seconds per example (log scale) against the mean, one labelled point per row with its interval."""
    timed = [r for r in rows if _finite(r.get("sec_per_example")) and r["sec_per_example"] > 0]
    for r in timed:
        err = r["ci95"] if _finite(r.get("ci95")) else None
        ax.errorbar(r["sec_per_example"], r["mean"], yerr=err, fmt="o", color=colour[_label(r)], capsize=3)
        ax.annotate(_short(_label(r)), (r["sec_per_example"], r["mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
    if timed:
        ax.set_xscale("log")
    ax.set_xlabel("seconds per example", fontsize=8)
    ax.tick_params(labelsize=8)


def main(argv: list[str] | None = None) -> list[Path]:
    """``python -m amlx.plots benchmarks/results/NAME.json ...``: (re)draw the PNG next to each results file."""
    import argparse
    import json

    from amlx import metrics as metric_registry

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("files", nargs="+", type=Path, help="results JSON files (benchmarks/results/*.json)")
    written = []
    for f in ap.parse_args(argv).files:
        png = plot_results(json.loads(f.read_text()), f.with_suffix(".png"), metric_registry.direction)
        print(f"[amlx] {png or f'{f}: no numeric means, no plot'}")
        written += [png] if png else []
    return written


if __name__ == "__main__":
    main()
