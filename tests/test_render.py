"""Terminal and HTML rendering: escaping, colours by score sign, plain fallback."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from amlx.render import segments, to_html, to_terminal
from tests.bow import bow_explained, bow_record

NASTY = 'good <script>alert(1)</script> "quotes" & bad'


@pytest.fixture(scope="module")
def record():
    model = bow_explained()
    rec = bow_record(model, NASTY, target=1)  # default scores: +w for "good", −w for "bad"
    rec.example_id = "<b>id</b>"
    return rec


def test_html_escapes_text_and_is_self_contained(record, tmp_path):
    page = to_html([record], tmp_path / "page.html")
    assert (tmp_path / "page.html").read_text(encoding="utf-8") == page
    assert "<script" not in page.lower() and "&lt;script&gt;" in page
    assert "&quot;quotes&quot; &amp;" in page and "&lt;b&gt;id&lt;/b&gt;" in page
    assert "http" not in page and "<link" not in page  # no external scripts, styles or fonts


def test_html_colours_positive_and_negative_scores_differently(record):
    page = to_html([record])
    spans = re.findall(r'background-color: (rgb\([^)]*\))" title="[^"]*">([^<]*)</span>', page)
    colours = {text: colour for colour, text in spans}
    assert colours["good"] != colours["bad"]
    assert colours["good"].startswith("rgb(214") and colours["bad"].startswith(
        "rgb(31"
    )  # red vs blue at full weight


def test_segments_cover_the_text_and_are_normalized(record):
    segs = segments(record)
    assert "".join(p for p, _ in segs) == NASTY
    weights = np.array([w for _, w in segs])
    assert np.abs(weights).max() == 1.0 and weights.min() < 0 < weights.max()


def test_terminal_uses_ansi_on_request_and_plain_text_otherwise(record, monkeypatch):
    coloured = to_terminal([record], io.StringIO(), colour=True)
    assert "\x1b[48;2;214;39;40m" in coloured and "\x1b[48;2;31;119;180m" in coloured
    plain = to_terminal([record], io.StringIO())  # a StringIO is not a TTY
    assert "\x1b[" not in plain and "good[+1.00]" in plain and "target positive" in plain


def test_no_color_disables_ansi_even_on_a_tty(record, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert "\x1b[" in to_terminal([record], Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in to_terminal([record], Tty())
