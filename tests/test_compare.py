"""``explain.py compare``: one evaluation over several explained models, one table with a model column."""

from __future__ import annotations

import json

import pytest

import amlx.jobs.compare as compare_module
from amlx.assets import AssetMissingError
from amlx.jobs.cli import main as cli_main
from amlx.jobs.compare import ModelListError, compare, folder_of, parse_models
from amlx.jobs.engine import TrainerOptions, TrainerOptionsError
from amlx.jobs.evaluate import evaluate
from amlx.results import render_markdown
from tests.tiny import tiny_explained

TEXTS = ["a good movie", "bad plot and bad acting", "terrible ending", "really good fun", "dull and weak",
         "a small gem", "a slow, dull and forgettable sequel", "great music, great cast"]  # fmt: skip


@pytest.fixture
def two_models(tmp_path):
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    tiny_explained("bert", "encoder").save_pretrained(enc)
    tiny_explained("llama", "decoder").save_pretrained(dec)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(TEXTS * 3)))
    kw = dict(dataset=str(data), split="test", n=5, chunk_size=2, seed=0, progress=False, metrics=["comp", "suff"],
              methods=["random", "gradient_x_input"], data={"test_size": 8, "val_size": 4})  # fmt: skip
    return tmp_path, str(enc), str(dec), kw


def test_compare_rows_are_each_models_own_evaluate_rows_with_a_model_column(two_models, monkeypatch):
    tmp_path, enc, dec, kw = two_models
    monkeypatch.chdir(tmp_path)
    res = compare(models=[f"encoder={enc}", f"decoder={dec}"], out_dir=str(tmp_path / "cmp"), **kw)
    assert [r["model"] for r in res["rows"]] == ["encoder"] * 4 + ["decoder"] * 4
    for alias, path in (("encoder", enc), ("decoder", dec)):
        alone = evaluate(model=path, out_dir=str(tmp_path / f"alone-{alias}"), **kw)["rows"]
        mine = [r for r in res["rows"] if r["model"] == alias]
        assert [(r["method"], r["metric"]) for r in mine] == [(r["method"], r["metric"]) for r in alone]
        assert [r["mean"] for r in mine] == pytest.approx([r["mean"] for r in alone], abs=1e-9)
        assert all(r["label"].startswith(f"{alias} · ") for r in mine)
        assert (tmp_path / "cmp" / alias / "scores" / "gradient_x_input.jsonl").exists()  # its own resumable run
    table = json.loads((tmp_path / "cmp" / "table.json").read_text())
    assert table["setup"]["models"]["decoder"]["name"] == dec and len(table["rows"]) == 8
    md = (tmp_path / "cmp" / "table.md").read_text()
    assert "| model | method | variant | mean |" in md


def test_a_resumed_comparison_recomputes_nothing(two_models, monkeypatch):
    tmp_path, enc, dec, kw = two_models
    monkeypatch.chdir(tmp_path)
    first = compare(models=[enc, dec], out_dir=str(tmp_path / "cmp"), **kw)
    scores = tmp_path / "cmp" / folder_of(dec) / "scores" / "random.jsonl"
    before = scores.read_bytes()
    again = compare(models=[enc, dec], out_dir=str(tmp_path / "cmp"), **kw)
    assert scores.read_bytes() == before
    assert [r["mean"] for r in again["rows"]] == [r["mean"] for r in first["rows"]]


def test_the_best_mean_is_bold_per_model_not_across_models():
    rows = [{"model": m, "method": meth, "variant": "", "metric": "comp", "mean": v}
            for m, meth, v in (("a", "x", 0.9), ("a", "y", 0.5), ("b", "x", 0.1), ("b", "y", 0.2))]  # fmt: skip
    md = render_markdown({"name": "t", "command": "c", "created": "now", "git_commit": "g", "machine": {}, "setup": {},
                          "rows": rows}, lambda m: "higher")  # fmt: skip
    assert "| a | x |  | **0.9** |" in md and "| b | y |  | **0.2** |" in md
    assert "**0.5**" not in md and "**0.1**" not in md


@pytest.mark.parametrize(
    "models, options, message",
    [([], None, "at least one model"), (["m", "m"], None, "appears twice"), (["a=m", "=m"], None, "empty"),
     (["m"], {"n": {"kind": "prompted"}}, "name no model"), (["m"], {"m": {"dtyp": "bfloat16"}}, "dtyp")],
)  # fmt: skip
def test_bad_model_lists_are_refused_before_anything_loads(models, options, message):
    with pytest.raises(Exception, match=message) as err:
        parse_models(models, options)
    assert err.type.__name__ in ("ModelListError", "ModelOptionsError")


def test_a_model_missing_from_the_cache_stops_the_comparison_before_the_first_model_runs(two_models, monkeypatch):
    tmp_path, enc, _, kw = two_models
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssetMissingError, match="amlx:not-trained"):
        compare(models=[enc, "amlx:not-trained"], out_dir=str(tmp_path / "cmp"), **kw)
    assert not (tmp_path / "cmp").exists()


def test_the_cli_reports_a_repeated_model_in_one_line_with_status_2(capsys):
    assert cli_main(["compare", "--models", "x", "x", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "appears twice" in err[0]
    with pytest.raises(ModelListError):
        parse_models(["x", "x"], None)


def test_trainer_options_reach_every_models_run_and_a_typo_stops_before_the_first_model(two_models, monkeypatch):
    tmp_path, enc, dec, kw = two_models
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainerOptionsError, match="devics"):
        compare(models=[enc, dec], out_dir=str(tmp_path / "bad"), trainer={"devics": 2}, **kw)
    assert not (tmp_path / "bad").exists()
    seen = []
    real = compare_module.evaluate

    def spy(**args):
        seen.append(args["trainer"])
        return real(**args)

    monkeypatch.setattr(compare_module, "evaluate", spy)
    res = compare(models=[enc, dec], out_dir=str(tmp_path / "cmp"), trainer={"accelerator": "cpu", "devices": 1}, **kw)
    assert seen == [TrainerOptions(accelerator="cpu", devices=1)] * 2
    plain = compare(models=[enc, dec], out_dir=str(tmp_path / "plain"), **kw)
    assert [r["mean"] for r in res["rows"]] == pytest.approx([r["mean"] for r in plain["rows"]], abs=1e-9)
