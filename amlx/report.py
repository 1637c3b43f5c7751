"""``explain.py report``: one self-contained HTML page comparing the methods of a finished ``explain.py evaluate`` run.

It reads only the run's files (``table.json``, ``attributions/<label>.jsonl``, ``scores/<label>.jsonl``), so any
finished run renders without recomputing. The page holds: the summary table (mean ± 95% interval of every metric,
its direction, the best method per column in bold); the mean curves of the curve metrics (AOPC comp / suff
against k, activation / inverse activation where the run computed them), a line per method; and per example
the sentence once with every method's map beneath it (word | token toggle), each method's metric values,
target and probability, and the example's own curves. Filters: by method, and by how much the methods disagree
(1 − the mean pairwise Spearman correlation of their word scores). All text from the run is HTML-escaped; the
only script is the page's own, which toggles and reorders elements and never writes text as HTML.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from amlx import metrics as metric_registry
from amlx.jobs.run_files import rank_files, run_labels
from amlx.records import Attribution, load_jsonl
from amlx.render import prediction, rgb
from amlx.svg import PALETTE, Series, line_chart

CURVE_GRID = np.linspace(0, 100, 21)  # % axis onto which curves of different lengths are averaged


@dataclass
class Run:
    """A finished evaluate run: its table and, per method label, records and score rows by example id."""

    path: Path
    table: dict  # table.json: setup, rows (method, variant, metric, mean, ci95, n, sec_per_example, label)
    labels: list[str]  # method labels in the table's order (the stems of the run's JSONL files)
    records: dict[str, dict[str, Attribution]]
    scores: dict[str, dict[str, dict]]

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(r["metric"] for r in self.table["rows"]))

    def row_label(self, row: dict) -> str:
        """The method label of a table row (``label`` since amlx wrote it; older runs: matched by method/variant)."""
        if row.get("label"):
            return row["label"]
        variant = row.get("variant", "")
        for label in self.labels:
            first = next(iter(self.records[label].values()), None)
            # the evaluate job appends " [alias]" to the variant of a method run under an alias
            if first is not None and first.method == row["method"] and variant in (
                first.variant, f"{first.variant} [{label}]".strip()
            ):
                return label
        return f"{row['method']}/{row['variant']}" if row.get("variant") else row["method"]

    def example_ids(self) -> list[str]:
        """Example ids in the run's order (the ``index`` of the score rows)."""
        order: dict[str, int] = {}
        for rows in self.scores.values():
            for eid, row in rows.items():
                order.setdefault(eid, row.get("index", len(order)))
        return sorted(order, key=order.get)


def load_run(run_dir: str | Path) -> Run:
    """Read an evaluate run's folder; raises with the command to run when the folder holds no finished run."""
    path = Path(run_dir)
    if not (path / "table.json").exists():
        raise FileNotFoundError(
            f"{path / 'table.json'} not found: give --run the out_dir of a finished `python explain.py evaluate` run"
        )
    table = json.loads((path / "table.json").read_text())
    stems = run_labels(path / "scores")  # a distributed run's rank files count under their label
    records, scores = {}, {}
    for label in stems:
        scores[label] = {}
        for file in rank_files(path / "scores", label):
            for line in file.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    scores[label][str(row["example_id"])] = row
        records[label] = {str(r.example_id): r for file in rank_files(path / "attributions", label)
                          for r in load_jsonl(file)}  # fmt: skip
    run = Run(path, table, stems, records, scores)
    ordered = list(dict.fromkeys(run.row_label(r) for r in table["rows"]))
    run.labels = [lb for lb in ordered if lb in scores] + [lb for lb in stems if lb not in ordered]
    return run


def mean_rank_correlation(records: list[Attribution]) -> float:
    """Mean pairwise Spearman correlation of the records' word scores (words scored by both); NaN if undefined."""
    words = [r.word_scores() for r in records]
    rhos = []
    for a, b in itertools.combinations(words, 2):
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() >= 2 and np.ptp(a[ok]) > 0 and np.ptp(b[ok]) > 0:
            rhos.append(float(spearmanr(a[ok], b[ok]).statistic))
    return float(np.mean(rhos)) if rhos else float("nan")


# ------------------------------------------------------------------------------------------------ maps
def _colour(weight: float) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb(weight))


def _unit(text: str, weight: float, title: str) -> str:
    style = f' style="background:{_colour(weight)}"' if abs(weight) >= 0.005 else ""
    return f'<span class="u"{style} title="{html.escape(title)}">{html.escape(text)}</span>'


def _spans_html(text: str, spans: list[tuple[int, int, float, str]]) -> str:
    """``text`` with each (start, end, normalized weight, title) span as a unit; the rest as plain text."""
    out, at = [], 0
    for s, e, w, title in spans:
        out.append(html.escape(text[at:s]))
        out.append(_unit(text[s:e], w, title))
        at = e
    out.append(html.escape(text[at:]))
    return "".join(out)


def _normalized(values: np.ndarray) -> np.ndarray:
    top = np.nanmax(np.abs(values), initial=0.0) if len(values) else 0.0
    return np.nan_to_num(values / top if top > 0 else values * 0)


def word_map(record: Attribution) -> str:
    """The record's text with one unit per word, coloured by its (max-aggregated) word score."""
    raw = record.word_scores()
    weights = _normalized(raw)
    spans = [(s, e, w, f"{record.text[s:e]}: {r:+.3g}" if math.isfinite(r) else f"{record.text[s:e]}: no token")
             for (s, e), w, r in zip(record.word_spans, weights, raw)]  # fmt: skip
    return _spans_html(record.text, spans)


def token_map(record: Attribution) -> str:
    """The record's text with one unit per attributable token (overlapping byte pieces merged, strongest kept)."""
    idx = [i for i in np.flatnonzero(record.attributable) if record.offsets[i, 1] > record.offsets[i, 0]]
    idx.sort(key=lambda i: (record.offsets[i, 0], i))
    merged: list[list] = []  # [start, end, score, token strings]
    for i in idx:
        s, e = (int(v) for v in record.offsets[i])
        score = float(record.scores[i])
        if merged and s < merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], e)
            last[2] = score if abs(score) > abs(last[2]) else last[2]
            last[3].append(record.tokens[i])
        else:
            merged.append([s, e, score, [record.tokens[i]]])
    weights = _normalized(np.array([m[2] for m in merged], dtype=np.float64))
    spans = [(s, e, w, f"{' '.join(toks)}: {score:+.3g}") for (s, e, score, toks), w in zip(merged, weights)]
    return _spans_html(record.text, spans)


# ---------------------------------------------------------------------------------------------- curves
def _curve_metrics(run: Run) -> list[str]:
    """Metrics of the run whose score rows carry curve points (runs before curves were recorded have none)."""
    found = dict.fromkeys(m for rows in run.scores.values() for row in rows.values() for m in row.get("curves", {}))
    return [m for m in run.metrics if m in found]


def _axes(metric: str, unit: str | None) -> tuple[str, str]:
    """Axis titles of a curve metric as the run configured it (``unit``: the run's override, if any)."""
    try:
        return metric_registry.get(metric, **({"unit": unit} if unit in ("token", "word") else {})).curve_axes()
    except (KeyError, AttributeError, TypeError):
        return "%", metric


def mean_curve(curves: list[list[list[float]]]) -> list[tuple[float, float]]:
    """Pointwise mean of curves sharing their x values, else of the curves interpolated on 0, 5, …, 100 %."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    xs = {tuple(x for x, _ in c) for c in curves}
    if len(xs) == 1:
        ys = np.array([[y for _, y in c] for c in curves])
        return list(zip(next(iter(xs)), ys.mean(0).tolist()))
    ys = np.array([np.interp(CURVE_GRID, [x for x, _ in c], [y for _, y in c]) for c in curves])
    return list(zip(CURVE_GRID.tolist(), ys.mean(0).tolist()))


# ----------------------------------------------------------------------------------------------- page
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #e4e4e4; padding: .3em .6em; text-align: left; vertical-align: top; }
table.summary td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #f2f7e8; }
.meta, .ci { color: #666; font-size: .85em; }
.controls { position: sticky; top: 0; background: #fafafa; border: 1px solid #ddd; padding: .5em .8em; z-index: 2; }
.controls label { margin-right: 1em; white-space: nowrap; }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: middle; }
section.example { border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; margin: 1em 0; }
table.maps { width: 100%; table-layout: fixed; }
table.maps th.m { width: 11em; font-weight: normal; }
table.maps td.text { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 14px; line-height: 1.9;
  white-space: pre-wrap; overflow-wrap: anywhere; }
table.maps tr.sentence td.text { color: #000; }
table.maps th.v, table.maps td.v { width: 4.8em; font-size: .8em; text-align: right; padding: .3em .2em;
  font-variant-numeric: tabular-nums; }
table.maps th.v { font-weight: normal; color: #666; overflow-wrap: anywhere; }
.wide { overflow-x: auto; } table.summary { font-size: .92em; } table.summary th[data-method] { white-space: nowrap; }
span.u { border-radius: 2px; }
.token span.u { box-shadow: inset -1px 0 0 #777, inset 1px 0 0 #777; }
.curves { display: flex; flex-wrap: wrap; gap: .5em; }
svg.chart text { font-size: 10px; fill: #333; } svg.chart .chart-title { font-size: 12px; font-weight: bold; }
svg.chart .grid { stroke: #eee; } svg.chart .axis { stroke: #888; }
"""

SCRIPT = """
(function () {
  var query = new URLSearchParams(location.search || location.hash.replace(/^#/, ''));
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  function setUnit(unit) {
    all('.map').forEach(function (m) { m.hidden = !m.classList.contains(unit); });
    all('input[name=unit]').forEach(function (i) { i.checked = i.value === unit; });
    document.body.setAttribute('data-unit', unit);
  }
  function applyMethods() {
    var on = {};
    all('input.method').forEach(function (i) { on[i.value] = i.checked; });
    all('[data-method]').forEach(function (e) {
      e.style.display = on[e.getAttribute('data-method')] === false ? 'none' : '';
    });
  }
  function applyOrder() {
    var by = document.getElementById('order').value;
    var top = parseInt(document.getElementById('top').value, 10) || 0;
    var box = document.getElementById('examples');
    var items = all('section.example');
    items.sort(function (a, b) {
      if (by === 'disagreement') {
        var x = parseFloat(a.getAttribute('data-rho')), y = parseFloat(b.getAttribute('data-rho'));
        x = isNaN(x) ? 2 : x; y = isNaN(y) ? 2 : y;
        if (x !== y) { return x - y; }
      }
      return parseInt(a.getAttribute('data-order'), 10) - parseInt(b.getAttribute('data-order'), 10);
    });
    items.forEach(function (e, k) { box.appendChild(e); e.hidden = top > 0 && k >= top; });
  }
  all('input[name=unit]').forEach(function (i) { i.addEventListener('change', function () { setUnit(i.value); }); });
  all('input.method').forEach(function (i) { i.addEventListener('change', applyMethods); });
  document.getElementById('order').addEventListener('change', applyOrder);
  document.getElementById('top').addEventListener('input', applyOrder);
  if (query.get('methods')) {
    var keep = query.get('methods').split(',');
    all('input.method').forEach(function (i) { i.checked = keep.indexOf(i.value) >= 0; });
  }
  if (query.get('sort')) { document.getElementById('order').value = query.get('sort'); }
  if (query.get('top')) { document.getElementById('top').value = query.get('top'); }
  setUnit(query.get('unit') === 'token' ? 'token' : 'word');
  applyMethods();
  applyOrder();
  document.body.setAttribute('data-ready', '1');
})();
"""


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def _direction(metric: str) -> str | None:
    return metric_registry.direction(metric)


def _arrow(metric: str) -> str:
    return {"higher": "↑ higher is better", "lower": "↓ lower is better"}.get(_direction(metric) or "", "")


def _best(values: list, direction: str | None) -> float | None:
    """The best of the finite ``values`` by ``direction``; None for an unknown direction or fewer than two."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if direction not in ("higher", "lower") or len(finite) < 2:
        return None
    return max(finite) if direction == "higher" else min(finite)


def _summary(run: Run, colours: dict[str, str]) -> str:
    esc = html.escape
    metrics = run.metrics
    cells: dict[tuple[str, str], dict] = {(run.row_label(r), r["metric"]): r for r in run.table["rows"]}
    labels = list(dict.fromkeys(run.row_label(r) for r in run.table["rows"]))
    best = {m: _best([cells[lb, m]["mean"] for lb in labels if (lb, m) in cells], _direction(m)) for m in metrics}
    head = "".join(f'<th data-metric="{esc(m)}">{esc(m)}<br><span class="meta">{esc(_arrow(m))}</span></th>'
                   for m in metrics)  # fmt: skip
    rows = []
    for lb in labels:
        any_row = next(cells[lb, m] for m in metrics if (lb, m) in cells)
        about = " ".join(x for x in (any_row["method"], any_row.get("variant", "")) if x and x != lb)
        tds = []
        for m in metrics:
            r = cells.get((lb, m))
            if r is None:
                tds.append("<td></td>")
                continue
            mark = " best" if best[m] is not None and r["mean"] == best[m] else ""
            tds.append(f'<td class="num{mark}" data-metric="{esc(m)}" data-mean="{r["mean"]!r}" '
                       f'data-ci95="{r.get("ci95")!r}">{_num(r["mean"])} <span class="ci">± {_num(r.get("ci95"))}'
                       "</span></td>")  # fmt: skip
        sec = any_row.get("sec_per_example")
        rows.append(f'<tr data-method="{esc(lb)}"><th data-method="{esc(lb)}"><span class="swatch" style="background:'
                    f'{colours[lb]}"></span> {esc(lb)} <span class="meta">{esc(about)}</span></th>{"".join(tds)}'
                    f'<td class="num">{_num(sec)}</td><td class="num">{esc(str(any_row.get("n", "")))}</td></tr>')  # fmt: skip
    return (f'<div class="wide"><table class="summary"><tr><th>method</th>{head}<th>s / example</th><th>n</th></tr>'
            + "".join(rows) + "</table></div>")  # fmt: skip


def _curves(run: Run, colours: dict[str, str], eid: str | None, width: int, height: int) -> str:
    """The curve charts of the run's curve metrics: means over examples (``eid`` None) or of one example."""
    charts = []
    for m in _curve_metrics(run):
        series = []
        for lb in run.labels:
            rows = run.scores[lb]
            if eid is None:
                points = mean_curve([r.get("curves", {}).get(m, []) for r in rows.values()])
            else:
                points = [tuple(p) for p in rows.get(eid, {}).get("curves", {}).get(m, [])]
            if points:
                series.append(Series(lb, points, colours[lb], key=lb))
        x, y = _axes(m, run.table.get("setup", {}).get("unit"))
        title = f"{m} curve" + (" (mean over examples)" if eid is None else "")
        charts.append(line_chart(series, x, y, title=title, width=width, height=height))
    return f'<div class="curves">{"".join(charts)}</div>' if charts else ""


def _example(run: Run, eid: str, order: int, colours: dict[str, str]) -> str:
    esc = html.escape
    present = [lb for lb in run.labels if eid in run.records[lb]]
    if not present:  # scores without records: nothing to draw
        return ""
    recs = [run.records[lb][eid] for lb in present]
    first = recs[0]
    rho = mean_rank_correlation(recs) if len(recs) > 1 else float("nan")
    pred, p_pred = prediction(first)
    metrics = run.metrics
    head = (f"<h3>example {esc(eid)} <span class=meta>· target <b>{esc(first.target_label)}</b> "
            f"p={first.probs[first.target]:.3f} · prediction {esc(pred)} p={p_pred:.3f} · "
            f"mean rank correlation between methods ρ̄ = {_num(rho)}</span></h3>")  # fmt: skip
    value_head = "".join(f'<th class="v" title="{esc(_arrow(m))}">{esc(m)} {_arrow(m)[:1]}</th>' for m in metrics)
    rows = [f'<tr class="sentence"><th class="m">text</th><td class="text">{esc(first.text)}</td>{value_head}</tr>']
    values = {lb: run.scores[lb].get(eid, {}) for lb in present}
    best = {m: _best([values[lb].get(m) for lb in present], _direction(m)) for m in metrics}
    for lb, rec in zip(present, recs):
        cells = "".join(f'<td class="v{" best" if best[m] is not None and values[lb].get(m) == best[m] else ""}" '
                        f'data-metric="{esc(m)}">{_num(values[lb].get(m))}</td>' for m in metrics)  # fmt: skip
        other = "" if rec.target == first.target else f'<br><span class="meta">target {esc(rec.target_label)}</span>'
        rows.append(f'<tr class="method" data-method="{esc(lb)}"><th class="m"><span class="swatch" '
                    f'style="background:{colours[lb]}"></span> {esc(lb)}{other}</th><td class="text">'
                    f'<span class="map word">{word_map(rec)}</span><span class="map token" hidden>{token_map(rec)}'
                    f"</span></td>{cells}</tr>")  # fmt: skip
    curves = _curves(run, colours, eid, 280, 170)
    return (f'<section class="example" id="example-{order}" data-order="{order}" data-example="{esc(eid)}" '
            f'data-rho="{rho!r}">{head}<table class="maps">{"".join(rows)}</table>{curves}</section>')  # fmt: skip


def to_html(run: Run, path: str | Path | None = None, title: str | None = None, examples: int | None = None) -> str:
    """The comparison page of ``run`` (the first ``examples`` examples; all when None); written to ``path`` if given."""
    esc = html.escape
    title = title or f"amlx report: {run.path.name}"
    colours = {lb: PALETTE[i % len(PALETTE)] for i, lb in enumerate(run.labels)}
    ids = run.example_ids()[: examples if examples is not None else None]
    setup = ", ".join(f"{k}={v}" for k, v in run.table.get("setup", {}).items())
    filters = "".join(f'<label><input type="checkbox" class="method" value="{esc(lb)}" checked> <span class="swatch" '
                      f'style="background:{colours[lb]}"></span> {esc(lb)}</label>' for lb in run.labels)  # fmt: skip
    controls = ('<div class="controls"><b>units</b> <label><input type="radio" name="unit" value="word" id="unit-word" '
                'checked> words</label><label><input type="radio" name="unit" value="token" id="unit-token"> tokens'
                f"</label> <b>methods</b> {filters} <b>examples</b> <select id=order><option value=dataset>in run order"
                '</option><option value=disagreement>methods disagree most first</option></select> <label>show the '
                'first <input id=top type=number min=0 value=0 style="width:4em"> (0 = all)</label></div>')  # fmt: skip
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
        f'<p class="meta">Run {esc(str(run.path))}: {esc(setup)}. Created {esc(run.table.get("created", "?"))} at '
        f'commit {esc(run.table.get("git_commit", "?"))}.</p>{controls}'
        "<h2>Summary</h2><p class=meta>Mean over the run's examples ± the 95% interval (1.96·sd/√n); the best "
        "mean per column is bold.</p>" + _summary(run, colours)
        + "<h2>Curves</h2>" + (_curves(run, colours, None, 440, 270) or "<p class=meta>This run recorded no curves "
                               "(runs before amlx recorded per-k values, or no curve metric).</p>")
        + f"<h2>Examples ({len(ids)} of {len(run.example_ids())})</h2><p class=meta>Per row scores are normalized "
        "by the largest |score|: red supports the target class, blue opposes it; hover a unit for its score. "
        "ρ̄ is the mean pairwise Spearman correlation of the methods' word scores.</p>"
        '<div id="examples">' + "\n".join(_example(run, eid, k, colours) for k, eid in enumerate(ids))
        + f"</div><script>{SCRIPT}</script></body></html>\n"
    )
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(page, encoding="utf-8")
    return page


def report(run: str, out: str | None = None, examples: int | None = 50, title: str | None = None) -> str:
    """Write the comparison page of the evaluate run in folder ``run`` to ``out`` (default ``<run>/report.html``).

    Args:
        run: the ``out_dir`` of a finished ``python explain.py evaluate`` run.
        out: the HTML file to write.
        examples: how many of the run's examples to show, in run order (null: all); the summary covers all.
        title: the page title.
    """
    loaded = load_run(run)
    path = Path(out) if out else loaded.path / "report.html"
    to_html(loaded, path, title=title, examples=examples)
    print(f"[amlx] report: {path}", flush=True)
    return str(path)
