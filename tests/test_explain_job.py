"""The explain job end to end on a tiny model saved to disk: JSONL reloads, HTML escapes the texts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from amlx.jobs.explain import explain, load_texts
from amlx.records import load_jsonl
from tests.tiny import tiny_explained

TEXTS = ["A good movie.", 'I didn\'t like it: <b>bad</b> & "dull"']


def test_explain_job_writes_jsonl_html_and_terminal_view(tmp_path, capsys):
    tiny_explained("bert", "encoder").save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    records = explain(
        str(tmp_path / "model"),
        methods=["gradient_x_input", "occlusion"],
        texts=TEXTS,
        method_options={"occlusion": {"output": "logit"}},
        out_dir=str(out),
    )
    assert [(r.method, r.text) for r in records] == [
        (m, t) for m in ("gradient_x_input", "occlusion") for t in TEXTS
    ]
    reloaded = load_jsonl(out / "attributions.jsonl")
    assert [r.example_id for r in reloaded] == ["0", "1", "0", "1"]
    for a, b in zip(records, reloaded):
        np.testing.assert_allclose(a.scores, b.scores)
    page = (out / "attributions.html").read_text(encoding="utf-8")
    text_only = re.sub(r"<[^>]+>", "", page)  # drop the markup, keep the (escaped) text content
    assert "&lt;b&gt;bad&lt;/b&gt; &amp; &quot;dull&quot;" in text_only and "<b>bad" not in page
    assert "occlusion/logit" in page and "gradient_x_input" in capsys.readouterr().out


def test_texts_come_from_exactly_one_source(tmp_path):
    f = tmp_path / "texts.txt"
    f.write_text("first text\n\nsecond text\n", encoding="utf-8")
    assert load_texts(None, str(f), None, "test", 10, 0)[:2] == (
        ["first text", "second text"],
        [f"{f}:1", f"{f}:3"],
    )
    with pytest.raises(ValueError, match="exactly one source"):
        load_texts(["a"], str(f), None, "test", 10, 0)
    with pytest.raises(ValueError, match="exactly one source"):
        load_texts(None, None, None, "test", 10, 0)
