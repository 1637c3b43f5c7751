"""``explain.py evaluate``: the table, the files it writes, and resuming an interrupted run exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from amlx.jobs.evaluate import evaluate, summarize
from amlx.methods.base import AttributionMethod
from amlx.records import load_jsonl
from tests.tiny import tiny_model, tiny_tokenizer

TEXTS = ["a good movie", "bad plot and bad acting", "terrible ending", "really good fun", "dull and weak",
         "a small gem", "a slow, dull and forgettable sequel", "great music, great cast"]  # fmt: skip


@pytest.fixture
def setup(tmp_path):
    tok = tiny_tokenizer("bert")
    model_dir = tmp_path / "model"
    tiny_model("bert", "encoder", tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(TEXTS * 3)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kw = dict(model=str(model_dir), dataset=str(data), split="test", n=7, chunk_size=3, seed=0, progress=False,
              metrics=["comp", "suff", "aopc_comp"], methods=["random", "gradient_x_input"], data={"test_size": 8, "val_size": 4})  # fmt: skip
    return tmp_path, kw


def _rows(result):
    return {(r["method"], r["metric"]): r for r in result["rows"]}


def test_summarize_gives_mean_and_normal_ci():
    mean, ci = summarize([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert ci == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert np.isnan(summarize([])[0])


def test_evaluate_writes_table_records_and_scores_that_agree(setup, monkeypatch):
    tmp_path, kw = setup
    monkeypatch.chdir(tmp_path)
    res = evaluate(out_dir=str(tmp_path / "run"), **kw)
    rows = _rows(res)
    assert set(rows) == {(m, k) for m in kw["methods"] for k in kw["metrics"]}
    for (method, metric), row in rows.items():
        per_example = [r[metric] for r in res["per_example"][method]]
        assert len(per_example) == 7 and row["n"] == 7
        assert row["mean"] == pytest.approx(np.mean(per_example))
        assert row["sec_per_example"] > 0
    recs = load_jsonl(tmp_path / "run" / "attributions" / "gradient_x_input.jsonl")
    assert [r.example_id for r in recs] == [str(i) for i in range(7)]
    table = json.loads((tmp_path / "run" / "table.json").read_text())
    assert table["setup"]["n_examples"] == 7 and (tmp_path / "run" / "table.md").exists()


def test_interrupted_run_resumes_without_recomputing_and_matches(setup, monkeypatch):
    tmp_path, kw = setup
    full = evaluate(out_dir=str(tmp_path / "full"), **kw)

    # simulate an interruption after the first chunk of each method: keep 3 of 7 lines
    part = tmp_path / "part"
    evaluate(out_dir=str(part), **kw)
    for sub in ("scores", "attributions"):
        for f in (part / sub).iterdir():
            f.write_text("".join(f.read_text().splitlines(keepends=True)[:3]))

    calls = []
    original = AttributionMethod.attribute

    def counting(self, inputs, model, target=None):
        calls.append(len(inputs))
        return original(self, inputs, model, target)

    monkeypatch.setattr(AttributionMethod, "attribute", counting)
    resumed = evaluate(out_dir=str(part), **kw)
    assert calls == [3, 1, 3, 1]  # per method: chunks [3,6) and [6,7) only
    for key, row in _rows(full).items():
        assert _rows(resumed)[key]["mean"] == pytest.approx(row["mean"], abs=1e-9)
    assert len(load_jsonl(part / "attributions" / "random.jsonl")) == 7


def test_resuming_with_a_different_configuration_is_refused(setup):
    tmp_path, kw = setup
    evaluate(out_dir=str(tmp_path / "run"), **kw)
    with pytest.raises(ValueError, match="different evaluation configuration"):
        evaluate(out_dir=str(tmp_path / "run"), **{**kw, "seed": 1})


def test_one_method_twice_with_different_options_through_an_alias(setup):
    tmp_path, kw = setup
    res = evaluate(out_dir=str(tmp_path / "alias"), **{**kw, "methods": ["random", "random_b=random"],
                                                        "method_options": {"random_b": {"seed": 5}}})  # fmt: skip
    comp = [r for r in res["rows"] if r["metric"] == "comp"]
    assert [(r["method"], r["variant"]) for r in comp] == [("random", "seed0"), ("random", "seed5 [random_b]")]
    assert set(res["per_example"]) == {"random", "random_b"}
    assert (tmp_path / "alias" / "scores" / "random_b.jsonl").exists()
    first = [r["aopc_comp"] for r in res["per_example"]["random"]]
    second = [r["aopc_comp"] for r in res["per_example"]["random_b"]]
    assert first != second  # a different seed ranks differently


def test_model_options_reach_the_explained_model_and_the_resume_key(setup):
    """``model_options: {mask: pad}`` changes what log-odds masks with (the [PAD] vs the [MASK] embedding)."""
    tmp_path, kw = setup
    kw = {**kw, "metrics": ["log_odds"], "methods": ["gradient_x_input"]}
    default = evaluate(out_dir=str(tmp_path / "mask"), **kw)
    padded = evaluate(out_dir=str(tmp_path / "pad"), **kw, model_options={"mask": "pad"})
    a = [r["log_odds"] for r in default["per_example"]["gradient_x_input"]]
    b = [r["log_odds"] for r in padded["per_example"]["gradient_x_input"]]
    assert a != b
    with pytest.raises(ValueError, match="different evaluation configuration"):
        evaluate(out_dir=str(tmp_path / "mask"), **kw, model_options={"mask": "pad"})


def test_planted_data_gives_records_the_planted_word_as_ground_truth(setup):
    tmp_path, kw = setup
    kw = {**kw, "metrics": ["gt_overlap", "mean_rank_pct"], "methods": ["random"],
          "data": {**kw["data"], "planted": True}}  # fmt: skip
    res = evaluate(out_dir=str(tmp_path / "planted"), **kw)
    recs = load_jsonl(tmp_path / "planted" / "attributions" / "random.jsonl")
    for rec, scores in zip(recs, res["per_example"]["random"]):
        planted = [t for t, g in zip(rec.tokens, rec.ground_truth) if g]
        assert planted and "".join(planted).strip("Ġ▁#") in ("positive", "negative")  # the class word, appended
        if len(planted) == 1:  # gt_overlap = is the top-ranked token the planted one?
            top = int(np.argmax(np.where(rec.attributable, rec.scores, -np.inf)))
            assert scores["gt_overlap"] == float(rec.ground_truth[top])


def test_non_interactive_progress_prints_a_line_per_chunk_crossing_ten_percent(setup, capsys):
    """Under pytest stderr is no TTY: each method prints plain lines, never a redrawn bar."""
    tmp_path, kw = setup
    evaluate(out_dir=str(tmp_path / "progress"), **{**kw, "progress": True})
    err = capsys.readouterr().err  # (transformers' own weight-loading bar is in there too)
    lines = [line for line in err.split("\n") if line.startswith("[amlx] ")]
    assert lines and not any("\r" in line for line in lines)  # whole lines, never redrawn
    for method in kw["methods"]:  # 7 examples in chunks of 3: 3/7, 6/7, 7/7
        done = [re.match(rf"\[amlx\] {method}: (\d+)/7 \((\d+)%\)", line) for line in lines]
        assert [(m[1], m[2]) for m in done if m] == [("3", "43"), ("6", "86"), ("7", "100")]


def test_a_results_name_writes_the_table_with_its_png_plot(setup, monkeypatch):
    from PIL import Image

    from amlx import results

    tmp_path, kw = setup
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    evaluate(out_dir=str(tmp_path / "named"), results_name="tiny-eval", **kw)
    for stem in (tmp_path / "results" / "tiny-eval", tmp_path / "named" / "table"):
        assert stem.with_suffix(".json").exists()
        with Image.open(stem.with_suffix(".png")) as im:
            im.load()
            assert im.size[0] > 300


def test_a_seeded_method_is_seeded_per_chunk_with_seed_plus_the_chunks_first_index(setup):
    from amlx.methods import get
    from amlx.models import ExplainedModel

    tmp_path, kw = setup
    evaluate(out_dir=str(tmp_path / "run"), **{**kw, "methods": ["random"], "seed": 2})
    recs = load_jsonl(tmp_path / "run" / "attributions" / "random.jsonl")
    model = ExplainedModel.from_pretrained(kw["model"])
    for start in (0, 3, 6):  # chunk_size 3 over 7 examples
        chunk = recs[start : start + 3]
        again = get("random", seed=2 + start).attribute([r.text for r in chunk], model)
        for a, b in zip(chunk, again):
            np.testing.assert_array_equal(a.scores, b.scores)


class _FileWeighted(AttributionMethod):
    """Scores = the float stored in ``checkpoint`` × the token position: a method whose output depends on its file."""

    name = "file_weighted"

    def __init__(self, checkpoint: str = "", internal_batch_size: int = 16) -> None:
        super().__init__(internal_batch_size)
        self.weight = float(open(checkpoint).read())

    def scores(self, enc, model, target):
        import torch

        return self.weight * torch.arange(enc.input_ids.shape[1], dtype=torch.float32).expand(enc.input_ids.shape)


@pytest.fixture
def file_weighted():
    from amlx.methods import base

    base._REGISTRY["file_weighted"] = _FileWeighted
    yield
    del base._REGISTRY["file_weighted"]


def test_rows_of_a_replaced_checkpoint_are_refused_on_resume_not_reused(setup, file_weighted):
    """Same options, new file contents (a retrained attributor exported under its old name): refused, not reused."""
    from amlx.jobs.evaluate import checkpoint_digest

    tmp_path, kw = setup
    ckpt = tmp_path / "weights.ckpt"
    ckpt.write_text("1.0")
    kw = {**kw, "methods": ["fw=file_weighted"], "method_options": {"fw": {"checkpoint": str(ckpt)}}}
    first = evaluate(out_dir=str(tmp_path / "run"), **kw)
    rows = [json.loads(line) for line in (tmp_path / "run" / "scores" / "fw.jsonl").read_text().splitlines()]
    assert {r["checkpoint_sha256"] for r in rows} == {checkpoint_digest({"checkpoint": str(ckpt)})}
    again = evaluate(out_dir=str(tmp_path / "run"), **kw)  # the same file: resumed, identical
    assert [r["comp"] for r in again["per_example"]["fw"]] == [r["comp"] for r in first["per_example"]["fw"]]
    ckpt.write_text("-1.0")  # reversed ranking: every comp changes
    with pytest.raises(ValueError, match="another version of the method's checkpoint"):
        evaluate(out_dir=str(tmp_path / "run"), **kw)
    fresh = evaluate(out_dir=str(tmp_path / "fresh"), **kw)
    assert [r["comp"] for r in fresh["per_example"]["fw"]] != [r["comp"] for r in first["per_example"]["fw"]]


def _cut(path, keep_lines: int, extra: bytes = b"") -> None:
    """Keep the first ``keep_lines`` lines of ``path``, then ``extra`` (e.g. half of the next line: a torn write)."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep_lines]) + extra)


def _assert_clean_and_equal(out, full, kw) -> None:
    """Every line parses, each method's files hold each example once, and the table equals the uninterrupted one."""
    resumed = json.loads((out / "table.json").read_text())["rows"]
    want = {(r["method"], r["metric"]): r["mean"] for r in full["rows"]}
    assert {(r["method"], r["metric"]): r["mean"] for r in resumed} == pytest.approx(want, abs=1e-12)
    for method in kw["methods"]:
        for sub in ("scores", "attributions"):
            raw = (out / sub / f"{method}.jsonl").read_bytes()
            assert raw.endswith(b"\n")
            ids = [json.loads(line)["example_id"] for line in raw.splitlines()]  # every line is whole JSON
            assert sorted(ids, key=int) == [str(i) for i in range(kw["n"])]  # no example lost or duplicated


@pytest.mark.parametrize(
    "damage",
    ["records_without_scores", "chunk_cut_short", "torn_score_line", "torn_record_line", "torn_both"],
)
def test_a_kill_at_any_write_leaves_files_a_resume_completes_without_loss_or_duplicates(setup, damage):
    """The states a SIGKILL can leave (records appended first, then the chunk's score rows in one write)."""
    tmp_path, kw = setup
    full = evaluate(out_dir=str(tmp_path / "full"), **kw)  # chunks [0,3) [3,6) [6,7)
    out = tmp_path / damage
    evaluate(out_dir=str(out), **kw)
    for method in kw["methods"]:
        scores, recs = out / "scores" / f"{method}.jsonl", out / "attributions" / f"{method}.jsonl"
        next_score = scores.read_bytes().splitlines(keepends=True)[4]
        next_rec = recs.read_bytes().splitlines(keepends=True)[6]
        if damage == "records_without_scores":  # killed between the chunk [3,6)'s two appends
            _cut(scores, 3)
            _cut(recs, 6)
        elif damage == "chunk_cut_short":  # the chunk's score write stopped after one of its three rows
            _cut(scores, 4)
            _cut(recs, 6)
        elif damage == "torn_score_line":
            _cut(scores, 4, next_score[: len(next_score) // 2])
            _cut(recs, 6)
        elif damage == "torn_record_line":  # killed inside the records append of chunk [6,7)
            _cut(scores, 6)
            _cut(recs, 6, next_rec[:100])
        else:
            _cut(scores, 3, next_score[:7])
            _cut(recs, 4, next_rec[:50])
    evaluate(out_dir=str(out), **kw)
    _assert_clean_and_equal(out, full, kw)


def test_sigkill_at_random_instants_then_resume_ends_with_the_uninterrupted_table(setup):
    """Five SIGKILLs of a real evaluate process at random instants of its run; the last resume completes it."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    tmp_path, kw = setup
    kw = {**kw, "n": 8, "chunk_size": 1, "methods": ["random", "occlusion"]}
    full = evaluate(out_dir=str(tmp_path / "full"), **kw)
    out = tmp_path / "killed"
    code = f"from amlx.jobs.evaluate import evaluate; evaluate(out_dir={str(out)!r}, **{kw!r})"
    root = str(Path(__file__).resolve().parent.parent)  # this checkout's amlx, not an installed one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, capture_output=True)
    span = time.perf_counter() - t0  # import + the whole run: the kills fall inside it
    for sub in ("scores", "attributions"):
        for f in (out / sub).iterdir():
            f.unlink()
    rng = random.Random(0)
    killed = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.5, 1.0) * span)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 3  # most attempts were cut short (a resumed run has less left to do)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, capture_output=True)
    _assert_clean_and_equal(out, full, kw)
