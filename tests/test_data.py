"""The data layer: sources, binarization, seeded splits, the planted-token variant, bad labels and texts."""

from __future__ import annotations

import json

import datasets
import pytest

from amlx import assets
from amlx.data import (
    DatasetLabelError,
    TextClassificationData,
    data_from_options,
    datamodule,
    load_table,
    plant,
)
from amlx.words import word_spans


@pytest.fixture
def movie_cache(tmp_path, monkeypatch):
    """A fake ``amlx:movies`` in a temporary cache: 60 rated sentences, 4 of them neutral."""
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path))
    folder = assets.local_path("amlx:movies")
    folder.mkdir(parents=True)
    rows = []
    for i in range(60):
        score = 0.0 if i % 15 == 0 else (1.5 if i % 2 else -2.0)
        rows.append({"id": str(i), "score": score, "text": f"sentence number {i} is {'good' if score > 0 else 'bad'}"})
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / ".complete").touch()
    return rows


def test_amlx_dataset_is_binarized_by_score_sign_and_neutral_rows_dropped(movie_cache):
    table = load_table("amlx:movies")
    assert len(table) == 56  # 4 neutral rows (i = 0, 15, 30, 45) dropped
    for r in table:
        src = movie_cache[int(r["id"])]
        assert r["label"] == int(src["score"] > 0)
        assert src["score"] != 0


def test_splits_are_disjoint_seeded_and_sized(movie_cache):
    dm = TextClassificationData(test_size=10, val_size=6, seed=3)
    ids = {s: set(dm.split(s)["id"]) for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [40, 6, 10]
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"]) and not (ids["val"] & ids["test"])
    again = TextClassificationData(test_size=10, val_size=6, seed=3)
    assert set(again.split("test")["id"]) == ids["test"]
    other = TextClassificationData(test_size=10, val_size=6, seed=4)
    assert set(other.split("test")["id"]) != ids["test"]


def hub_table(splits: dict[str, int]) -> datasets.DatasetDict:
    """A hub-style dataset with its own splits: ``{name: rows}``, row ids "<name>-<i>"."""
    return datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"text": [f"{name} sentence {i}" for i in range(n)], "label": [i % 2 for i in range(n)],
                                          "id": [f"{name}-{i}" for i in range(n)]})
        for name, n in splits.items()
    })  # fmt: skip


@pytest.fixture
def hub(monkeypatch):
    """``hub({"train": 40, "test": 8})``: the data module loads that table as if from the hub."""

    def use(splits: dict[str, int]) -> datasets.DatasetDict:
        table = hub_table(splits)
        monkeypatch.setattr(datamodule, "load_table", lambda *a, **k: table)
        return table

    return use


def test_hub_validation_split_is_seeded(hub):
    hub({"train": 40, "test": 8})
    val = lambda seed: list(TextClassificationData("hub/x", val_size=6, seed=seed).split("val")["id"])  # noqa: E731
    assert val(3) == val(3)
    assert set(val(3)) != set(val(4))


def test_hub_validation_is_disjoint_from_train_and_sized_as_configured(hub):
    table = hub({"train": 40, "test": 8})
    dm = TextClassificationData("hub/x", val_size=6, test_size=1000, seed=3)
    ids = {s: set(dm.split(s)["id"]) for s in ("train", "val", "test")}
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [34, 6, 8]
    assert not ids["train"] & ids["val"]
    assert ids["train"] | ids["val"] == set(table["train"]["id"])
    assert list(dm.split("test")["id"]) == table["test"]["id"]  # the hub's own test split, whole and in order


def test_hub_train_only_is_cut_into_disjoint_seeded_test_val_and_train(hub):
    table = hub({"train": 40})
    dm = TextClassificationData("hub/x", val_size=6, test_size=10, seed=3)
    ids = {s: set(dm.split(s)["id"]) for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [24, 6, 10]
    assert set().union(*ids.values()) == set(table["train"]["id"])
    again = TextClassificationData("hub/x", val_size=6, test_size=10, seed=3)
    assert [list(again.split(s)["id"]) for s in ("val", "test")] == [list(dm.split(s)["id"]) for s in ("val", "test")]


def test_hub_train_too_small_for_the_validation_split_raises_naming_the_option(hub):
    hub({"train": 5, "test": 8})
    with pytest.raises(ValueError, match="val_size=6"):
        TextClassificationData("hub/x", val_size=6).setup()


def test_validation_alias_and_job_data_options(movie_cache):
    dm = data_from_options("amlx:movies", 3, {"test_size": 10, "val_size": 6})
    assert list(dm.split("validation")["id"]) == list(dm.split("val")["id"]) == list(dm.split("dev")["id"])
    same = TextClassificationData(test_size=10, val_size=6, seed=3)
    assert list(same.split("val")["id"]) == list(dm.split("val")["id"])  # the top-level seed is the one used
    assert list(data_from_options("amlx:movies", 3, {"seed": 3, "val_size": 6, "test_size": 10}).split("val")["id"]) == list(
        dm.split("val")["id"]
    )  # repeating the same value is fine
    with pytest.raises(ValueError, match=r"seed: 0 \(top level\) vs 1 \(data\)"):
        data_from_options("amlx:movies", 0, {"seed": 1})
    with pytest.raises(ValueError, match="split must be one of"):
        dm.split("holdout")


def test_too_small_dataset_for_the_requested_splits_raises(movie_cache):
    with pytest.raises(ValueError, match="too few"):
        TextClassificationData(test_size=50, val_size=10).setup()


def test_batches_carry_raw_text_labels_and_index(movie_cache):
    dm = TextClassificationData(test_size=10, val_size=6, eval_batch_size=4)
    batch = next(iter(dm.test_dataloader()))
    test = dm.split("test")
    assert batch["text"] == test["text"][:4]
    assert batch["label"].tolist() == test["label"][:4]
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_planted_token_at_end_records_its_span_and_sets_the_label(movie_cache):
    table = load_table("amlx:movies")
    planted = plant(table, ["negative", "positive"], position="end", seed=0)
    labels = planted["label"]
    assert 0 < sum(labels) < len(labels)  # labels randomized, both classes present
    for r, orig in zip(planted, table):
        word = r["text"][r["planted_start"] : r["planted_end"]]
        assert word == ["negative", "positive"][r["label"]]
        assert r["text"] == orig["text"] + " " + word


def test_planted_token_at_random_position_keeps_the_original_words(movie_cache):
    table = load_table("amlx:movies")
    planted = plant(table, ["negative", "positive"], position="random", seed=1)
    positions = set()
    for r, orig in zip(planted, table):
        s, e = r["planted_start"], r["planted_end"]
        assert r["text"][s:e] == ["negative", "positive"][r["label"]]
        rest = (r["text"][:s] + r["text"][e:]).split()
        assert rest == orig["text"].split()
        positions.add(s == len(r["text"]) - (e - s))
    assert positions == {True, False}  # some at the end, some inside


PUNCTUATED = (
    "Two hours of my life, reaching happiness.",
    "The verdict: Two bodies were found...",
    "Wait... what?! (Really.)",
    '"Quoted" and [bracketed]; semi;colons',
    "It's well-made, isn't it?",
    "a -b c- d—e 100% fun, 10/10!",
    "Line one.\nLine two:\tTabbed!",
    "  leading and trailing spaces .  ",
    "naïve café, crème brûlée.",
)


def words_of(text: str) -> list[str]:
    return [text[s:e] for s, e in word_spans(text)]


def test_planted_token_at_random_position_is_always_a_word_of_its_own():
    table = datasets.Dataset.from_dict({"text": list(PUNCTUATED) * 4, "label": [0] * len(PUNCTUATED) * 4})
    class_words = ["negative", "positive"]
    for seed in range(25):
        for r, orig in zip(plant(table, class_words, position="random", seed=seed), table):
            s, e = r["planted_start"], r["planted_end"]
            assert r["text"][s:e] == class_words[r["label"]]
            assert (s, e) in word_spans(r["text"]), (seed, r["text"])
            assert words_of(r["text"][:s] + r["text"][e:]) == words_of(orig["text"])  # the original words stay


def test_local_csv_with_label_names_and_empty_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nfine film,positive\n   ,negative\nawful,negative\n")
    with pytest.warns(UserWarning, match="dropped 1 rows with empty"):
        table = load_table(str(path))
    assert table["text"] == ["fine film", "awful"]
    assert table["label"] == [1, 0]


def test_local_jsonl_with_unknown_label_raises_naming_it(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": 0}\n{"text": "meh", "label": 2}\n')
    with pytest.raises(DatasetLabelError, match=r"\[2\].*label set"):
        load_table(str(path))
    path.write_text('{"text": "ok", "label": "neutral"}\n')
    with pytest.raises(DatasetLabelError):
        load_table(str(path))


def test_missing_local_file_and_missing_offline_dataset_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_table(str(tmp_path / "nope.csv"))
    monkeypatch.setenv("AMLX_CACHE", str(tmp_path))
    with pytest.raises(assets.AssetMissingError, match="python -m amlx.assets fetch amlx:tweets"):
        load_table("amlx:tweets")
