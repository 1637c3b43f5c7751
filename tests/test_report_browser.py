"""The comparison report of a small finished evaluate run, opened in headless Chromium.

Needs Debian's ``chromium`` (``bash scripts/install_chromium.sh`` installs it; ``scripts/test.sh`` runs that
first). Without it the test is skipped locally and fails under ``CI=true``. A probe script appended to a copy of
the page reads the rendered DOM after the page's own script ran and writes what it saw into a ``<pre>``, which
``--dump-dom`` returns. The screenshot goes to ``outputs/test-artifacts/report.png``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from amlx.jobs.evaluate import evaluate
from amlx.records import load_jsonl
from amlx.report import load_run, report
from tests.tiny import tiny_model, tiny_tokenizer

ARTIFACTS = Path(__file__).resolve().parent.parent / "outputs" / "test-artifacts"
PAYLOAD = ('<script>window.amlxPwned = 1; document.body.setAttribute("data-pwned", "1")</script>'
           '<img src="x" onerror="window.amlxPwned = 2">')  # fmt: skip
TEXTS = ["a good movie", "bad plot and bad acting", "terrible ending", "really good fun", "dull and weak",
         "a small gem", "a slow, dull and forgettable sequel", "great music, great cast"]  # fmt: skip
METHODS = ["random", "gradient_x_input", "saliency"]
METRICS = ["comp", "suff", "log_odds", "aopc_comp", "aopc_suff", "as_auc", "ias_auc"]

PROBE = """<script>
(function () {
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  function visibleUnits(row) {
    return Array.prototype.slice.call(row.querySelectorAll('.map .u'))
      .filter(function (u) { return u.offsetParent !== null; }).map(function (u) { return u.textContent; });
  }
  var out = {ready: document.body.getAttribute('data-ready'), pwned: String(window.amlxPwned),
             pwnedAttr: document.body.getAttribute('data-pwned'), scripts: all('script').length,
             images: all('img').length, charts: all('svg.chart').length, lines: all('svg.chart polyline').length};
  out.summary = all('table.summary td[data-metric]').map(function (td) {
    return {method: td.parentNode.getAttribute('data-method'), metric: td.getAttribute('data-metric'),
            mean: td.getAttribute('data-mean'), text: td.textContent};
  });
  out.examples = all('section.example').map(function (s) {
    return {id: s.getAttribute('data-example'), text: s.querySelector('tr.sentence td.text').textContent,
            methods: Array.prototype.slice.call(s.querySelectorAll('tr.method')).map(function (r) {
              return r.getAttribute('data-method'); }),
            charts: s.querySelectorAll('svg.chart').length};
  });
  var rows = all('section.example tr.method');
  out.words = rows.map(visibleUnits);
  document.getElementById('unit-token').click();
  out.unit = document.body.getAttribute('data-unit');
  out.tokens = rows.map(visibleUnits);
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def chromium() -> str:
    """The chromium executable; skips the test without one, fails it under CI (where it must be installed)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        message = "this test needs Debian's chromium: run `bash scripts/install_chromium.sh` (scripts/test.sh does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def headless(exe: str, tmp_path: Path, url: str, *args: str) -> str:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", *args, url]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished evaluate run (tiny BERT, 3 methods, 7 metrics with curves, 5 examples, one carrying PAYLOAD)."""
    root = tmp_path_factory.mktemp("report")
    tok = tiny_tokenizer("bert")
    tiny_model("bert", "encoder", tok).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rows = [{"text": (f"{t} {PAYLOAD} end" if i % 3 == 0 else t), "label": i % 2} for i, t in enumerate(TEXTS * 3)]
    (root / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    evaluate(model=str(root / "model"), dataset=str(root / "data.jsonl"), split="test", n=5, chunk_size=4,
             methods=METHODS, metrics=METRICS, data={"test_size": 6, "val_size": 4}, out_dir=str(root / "run"),
             progress=False)  # fmt: skip
    return root / "run"


def test_report_in_chromium_shows_the_table_every_example_once_curves_a_unit_toggle_and_inert_input(
    finished_run, tmp_path
):
    exe = chromium()
    page = Path(report(str(finished_run), str(tmp_path / "report.html")))
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = headless(exe, tmp_path, probe.as_uri(), "--dump-dom")
    seen = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert seen["ready"] == "1"  # the page's own script ran to its end

    # the summary table holds the run's table: every (method, metric) mean, shown to 4 decimals
    table = json.loads((finished_run / "table.json").read_text())
    expected = {(r["label"], r["metric"]): r["mean"] for r in table["rows"]}
    shown = {(c["method"], c["metric"]): c for c in seen["summary"]}
    assert set(shown) == set(expected) and len(seen["summary"]) == len(expected)
    for key, mean in expected.items():
        assert float(shown[key]["mean"]) == mean
        assert shown[key]["text"].startswith(f"{mean:.4f} ± ")

    # every example once, with one row per method, and its text as in the records
    records = {r.example_id: r for r in load_jsonl(finished_run / "attributions" / "random.jsonl")}
    assert sorted(e["id"] for e in seen["examples"]) == sorted(records)
    for e in seen["examples"]:
        assert e["methods"] == METHODS and e["text"] == records[e["id"]].text

    # curves: 4 curve metrics (AOPC comp / suff, AS, IAS) as summary charts and per example, a line per method
    assert seen["charts"] == 4 * (1 + len(records)) and seen["lines"] == seen["charts"] * len(METHODS)
    assert all(e["charts"] == 4 for e in seen["examples"])

    # the word | token toggle changes the rendered units (the payload's "amlxpwned" is one word, many tokens)
    assert seen["unit"] == "token"
    assert all(len(t) >= len(w) for w, t in zip(seen["words"], seen["tokens"]))
    assert sum(len(t) for t in seen["tokens"]) > sum(len(w) for w in seen["words"])
    with_payload = [k for k, e in enumerate(seen["examples"]) if PAYLOAD in e["text"]]
    assert with_payload, "the fixture's test split should hold an example with the payload"
    row = with_payload[0] * len(METHODS)  # rows are example-major, methods in the run's order
    assert "amlxPwned" in seen["words"][row] and "amlxPwned" not in seen["tokens"][row]

    # the payload is shown as text (above) and never ran: no flag, no attribute, only the page's and the probe's scripts
    assert seen["pwned"] == "undefined" and seen["pwnedAttr"] is None
    assert seen["scripts"] == 2 and seen["images"] == 0

    # a screenshot of the page itself, kept as an artifact
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    headless(exe, tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1400,2400")
    assert shot.stat().st_size > 10_000
    tokens = ARTIFACTS / "report-tokens.png"  # the token view, chosen by the page's ?unit= query
    tokens.unlink(missing_ok=True)
    headless(exe, tmp_path, page.as_uri() + "?unit=token&sort=disagreement", f"--screenshot={tokens}",
             "--window-size=1400,1600")  # fmt: skip
    assert tokens.stat().st_size > 10_000


def test_report_renders_a_run_written_before_curves_and_labels_were_recorded(finished_run, tmp_path):
    """Old runs: score rows without ``curves`` and table rows without ``label`` still render (no curves shown)."""
    old = tmp_path / "old"
    shutil.copytree(finished_run, old)
    for path in (old / "scores").glob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "curves"}) + "\n" for r in rows))
    table = json.loads((old / "table.json").read_text())
    table["rows"] = [{k: v for k, v in r.items() if k != "label"} for r in table["rows"]]
    (old / "table.json").write_text(json.dumps(table))
    run = load_run(old)
    assert run.labels == METHODS
    page = Path(report(str(old))).read_text(encoding="utf-8")
    assert "<svg" not in page and "recorded no curves" in page
    assert page.count('<tr class="method"') == 5 * len(METHODS)
