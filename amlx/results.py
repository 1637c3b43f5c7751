"""Write benchmark results as ``benchmarks/results/<name>.json`` plus a rendered ``<name>.md`` (results-schema.md)
and a ``<name>.png`` plot (``amlx.plots``: bars with intervals; the cost/quality frontier for leaderboards)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def machine_info() -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = {"cpu_count": os.cpu_count(), "device": device, "torch": torch.__version__}
    if hasattr(os, "getloadavg"):  # other processes' load when the figures were written: context for timings
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS_DIR.parent.parent
        )
        return out.stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def command_line() -> str:
    return " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "python"


def write_results(
    name: str,
    rows: list[dict],
    setup: dict,
    command: str | None = None,
    notes: str = "",
    directory: str | Path | None = None,
    direction: Callable[[str], str | None] | None = None,
) -> Path:
    """Write the JSON record, its markdown rendering and its PNG plot; ``direction(metric)`` → 'higher' | 'lower' | None."""
    directory = Path(directory) if directory else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "command": command or command_line(),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "setup": setup,
        "rows": rows,
        "notes": notes,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    (directory / f"{name}.md").write_text(render_markdown(record, direction))
    from amlx.plots import plot_results  # matplotlib loads only when results are written

    plot_results(record, directory / f"{name}.png", direction)
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def render_markdown(record: dict, direction: Callable[[str], str | None] | None = None) -> str:
    """A table per metric (rows = method/variant); the best mean per metric is bold when its direction is known."""
    lines = [f"# {record['name']}", "", f"Command: `{record['command']}`", ""]
    lines.append(f"Created {record['created']} at commit `{record['git_commit']}` on {json.dumps(record['machine'])}.")
    lines += ["", "Setup: " + ", ".join(f"{k}={v}" for k, v in record["setup"].items()), ""]
    rows = record["rows"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    lead = ["model"] if any("model" in r for r in rows) else []  # a comparison across explained models (compare)
    extra = [k for k in dict.fromkeys(k for r in rows for k in r)
             if k not in ("model", "method", "variant", "metric", "mean", "label")]  # fmt: skip
    for metric in metrics:
        mrows = [r for r in rows if r["metric"] == metric]
        d = direction(metric) if direction else None
        best, group = {}, (lambda r: r.get("model"))  # the best mean per model (per table without a model column)
        for g in dict.fromkeys(map(group, mrows)):
            vals = [r["mean"] for r in mrows if group(r) == g and isinstance(r.get("mean"), (int, float))]
            if d and len(vals) > 1:
                best[g] = max(vals) if d == "higher" else min(vals)
        arrow = {"higher": " (higher is better)", "lower": " (lower is better)"}.get(d, "")
        lines += [f"## {metric}{arrow}", "", "| " + "".join(f"{k} | " for k in lead) + "method | variant | mean | "
                  + " | ".join(extra) + " |"]  # fmt: skip
        lines.append("|" + "---|" * (len(lead) + 3 + len(extra)))
        for r in mrows:
            mean = _fmt(r.get("mean"))
            if group(r) in best and r.get("mean") == best[group(r)]:
                mean = f"**{mean}**"
            cells = [*(_fmt(r.get(k)) for k in lead), r["method"], r.get("variant", ""), mean, *(_fmt(r.get(k)) for k in extra)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if record.get("notes"):
        lines += ["## Notes", "", record["notes"], ""]
    return "\n".join(lines)
