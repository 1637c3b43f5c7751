"""``explain.py`` as a person types it: plain list values, and user errors as one line with exit status 2.

Every test runs the command line in-process (``amlx.jobs.cli.main(argv)``, what ``explain.py`` calls) on a tiny
model saved to disk. Spec errors (unknown method, bad option) must be reported before any model is loaded:
those tests replace ``ExplainedModel.from_pretrained`` with a recorder that fails the test when called.
"""

from __future__ import annotations

import json

import pytest

from amlx.jobs.cli import join_list_values, main
from amlx.methods.specs import MethodSpecError
from amlx.models.explained import ExplainedModel
from amlx.records import load_jsonl
from tests.tiny import tiny_explained


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "model"
    tiny_explained("bert", "encoder").save_pretrained(path)
    return str(path)


@pytest.fixture
def no_model_load(monkeypatch) -> list:
    """Record (and refuse) every ``ExplainedModel.from_pretrained`` call."""
    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded before the spec error was reported")

    monkeypatch.setattr(ExplainedModel, "from_pretrained", refuse)
    return calls


def explain_argv(model: str, out, *more: str) -> list[str]:
    return ["explain", "--model", model, "--out_dir", str(out), "--html", "false", "--terminal", "false", *more]


def error_line(capsys) -> str:
    """The error: stderr's last line, the only one about the error (progress bars of model loading may precede it)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert [line for line in lines if "rror" in line] == lines[-1:], err
    return lines[-1]


def test_texts_take_one_plain_value_or_several(model_dir, tmp_path):
    assert main(explain_argv(model_dir, tmp_path / "one", "--texts", "A great film")) == 0
    assert [r.text for r in load_jsonl(tmp_path / "one" / "attributions.jsonl")] == ["A great film"]
    assert main(explain_argv(model_dir, tmp_path / "two", "--texts", "a good movie", "a bad plot")) == 0
    assert [r.text for r in load_jsonl(tmp_path / "two" / "attributions.jsonl")] == ["a good movie", "a bad plot"]


def test_list_values_are_joined_but_jsonargparse_list_syntax_is_kept():
    flags = {"--texts", "--methods"}
    assert join_list_values(["--texts", "a", "b", "--n", "3"], flags) == ["--texts", '["a", "b"]', "--n", "3"]
    assert join_list_values(["--methods=lime"], flags) == ["--methods", '["lime"]']
    assert join_list_values(["--texts", '["a", "b"]'], flags) == ["--texts", '["a", "b"]']
    assert join_list_values(["--texts", "[spoiler] good"], flags) == ["--texts", '["[spoiler] good"]']
    assert join_list_values(["--texts+", "a", "--seed", "1"], flags) == ["--texts+", "a", "--seed", "1"]


@pytest.mark.parametrize("text", ["", "   \t "])
def test_empty_or_whitespace_text_is_one_line_and_status_2(model_dir, tmp_path, capsys, text):
    assert main(explain_argv(model_dir, tmp_path, "--texts", "a good movie", text)) == 2
    assert "text 1 of texts is empty or whitespace only" in error_line(capsys)


def test_unknown_method_is_reported_before_any_model_loads(no_model_load, tmp_path, capsys):
    argv = explain_argv("amlx:no-such-model", tmp_path, "--methods", "gradient_x_input", "limee", "--texts", "a")
    assert main(argv) == 2
    line = error_line(capsys)
    assert "unknown attribution method 'limee'" in line and "did you mean 'lime'?" in line
    assert "registered methods:" in line and "occlusion" in line  # the valid names
    assert no_model_load == []


def test_bad_method_option_is_reported_before_any_model_loads_with_the_valid_options(no_model_load, tmp_path,
                                                                                     capsys):  # fmt: skip
    argv = explain_argv("amlx:no-such-model", tmp_path, "--methods", "lime", "--texts", "a",
                        "--method_options", "{lime: {n_sample: 5}}")  # fmt: skip
    assert main(argv) == 2
    line = error_line(capsys)
    assert "method 'lime' has no option 'n_sample' (method_options.lime) (did you mean 'n_samples'?)" in line
    assert "its options are: budget_per_unit, internal_batch_size, n_samples, output" in line
    assert no_model_load == []


def test_wrongly_typed_method_option_is_a_spec_error(no_model_load, tmp_path, capsys):
    argv = explain_argv("m", tmp_path, "--methods", "lime", "--texts", "a", "--method_options", "{lime: {n_samples: many}}")
    assert main(argv) == 2
    assert "option 'n_samples' of method 'lime' (method_options.lime) must be int, got 'many'" in error_line(capsys)
    assert no_model_load == []


def test_debug_shows_the_traceback(no_model_load, tmp_path):
    with pytest.raises(MethodSpecError, match="unknown attribution method"):
        main(explain_argv("m", tmp_path, "--methods", "nope", "--texts", "a", "--debug"))


def test_missing_asset_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path / "cache"))
    assert main(explain_argv("amlx:no-such-classifier", tmp_path, "--texts", "a good movie")) == 2
    line = error_line(capsys)
    assert "offline asset 'amlx:no-such-classifier' is not in the cache" in line and "train.py" in line


def test_target_outside_the_label_set(model_dir, tmp_path, capsys):
    assert main(explain_argv(model_dir, tmp_path, "--texts", "a good movie", "--target", "neutral")) == 2
    assert "label 'neutral' is not in this model's label set ['negative', 'positive']" in error_line(capsys)


def evaluate_argv(model: str, data, out, *more: str) -> list[str]:
    return ["evaluate", "--model", model, "--dataset", str(data), "--n", "2", "--chunk_size", "2",
            "--methods", "random", "--metrics", "comp", "--data", '{"test_size": 2, "val_size": 2}',
            "--progress", "false", "--out_dir", str(out), *more]  # fmt: skip


def write_data(path, labels: list[int]):
    texts = ["a good movie", "a bad plot", "really good fun", "dull and weak", "a small gem", "terrible ending"]
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    return path


def test_dataset_label_outside_the_label_set(model_dir, tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl", [0, 1, 2, 0, 1, 0])
    assert main(evaluate_argv(model_dir, data, tmp_path / "run")) == 2
    assert "labels [2] are outside the label set ['negative', 'positive']" in error_line(capsys)


def test_changed_configuration_on_resume_names_what_changed(model_dir, tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl", [0, 1, 0, 1, 0, 1])
    assert main(evaluate_argv(model_dir, data, tmp_path / "run")) == 0
    capsys.readouterr()
    assert main(evaluate_argv(model_dir, data, tmp_path / "run", "--seed", "1")) == 2
    line = error_line(capsys)
    assert "was written by a different evaluation configuration (changed: seed)" in line and "out_dir" in line


def test_a_misspelt_model_option_is_one_line_before_any_model_loads(no_model_load, tmp_path, capsys):
    argv = explain_argv("amlx:no-such-model", tmp_path, "--methods", "lime", "--texts", "a",
                        "--model_options", "{dtpye: bfloat16}")  # fmt: skip
    assert main(argv) == 2
    line = error_line(capsys)
    assert "model_options has no option 'dtpye' (did you mean 'dtype'?)" in line
    assert "gradient_checkpointing" in line and "mask" in line  # the valid options are listed
    assert no_model_load == []
    argv = ["evaluate", "--model", "amlx:no-such-model", "--out_dir", str(tmp_path / "ev"), "--methods", "random",
            "--model_options", "{maks: pad}"]  # fmt: skip
    assert main(argv) == 2
    assert "did you mean 'mask'?" in error_line(capsys) and no_model_load == []


@pytest.mark.parametrize("options,message", [
    ("{marc: {kernel: gauss}}", "MaRC kernel must be one of ('sigma', 'sigma_sq'), got 'gauss'"),
    ("{marc: {lr_scheduler: {init_args: {factor: 0.5}}}}", "lr_scheduler needs class_path"),
])  # fmt: skip
def test_an_option_value_the_method_refuses_is_one_line_and_status_2(model_dir, tmp_path, capsys, options, message):
    argv = explain_argv(model_dir, tmp_path, "--methods", "marc", "--texts", "a good movie", "--method_options", options)
    assert main(argv) == 2
    line = error_line(capsys)
    assert "method 'marc' (method_options.marc):" in line and message in line
    assert not (tmp_path / "attributions.jsonl").exists()
