"""``TextClassificationData``: a LightningDataModule with fixed, seeded train/val/test splits of raw texts.

Batches are ``{"text": list[str], "label": LongTensor[batch], "index": LongTensor[batch]}`` (plus ``text_pair``
for sentence pairs, ``rationale`` spans when the data has human rationales, planted spans when the planted-token
variant is on); the model side tokenizes (``amlx.pairs.inputs_of(batch)``), so one data module serves every
explained model and every attributor.
"""

from __future__ import annotations

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader

from amlx.data.planted import plant
from amlx.data.sources import SENTIMENT_LABELS, load_table
from amlx.pairs import display_text, inputs_of

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}  # the names other libraries use for "val"
# MultiNLI (hub ``multi_nli``) has no test split: its matched validation split is the validation split here
HUB_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "dev", "validation_matched"), "test": ("test",)}


class TextClassificationData(L.LightningDataModule):
    """Seeded splits of a labelled text table (an ``amlx:`` dataset, a CSV/JSONL file or a hub dataset).

    Sources without their own splits are shuffled with ``seed`` and cut into ``test_size`` test rows,
    ``val_size`` validation rows and the rest for training. Hub datasets keep their own splits; a missing test or
    validation split is cut the same way (seeded, disjoint) out of their train split. ``planted=True`` turns
    every split into the planted-token ground-truth variant (labels randomized, class word inserted, span recorded).
    ``teacher``: an attribution JSONL of the train split (``explain.py explain``); training then uses the rows it
    covers and each train batch carries their maps under ``"teacher"`` (``teacher_method`` picks one method of a
    mixed file). Sentence pairs (NLI): ``text_pair_column`` names the second segment (found without it for
    premise/hypothesis and sentence1/sentence2 columns); ``rationale_columns``: one column of highlighted word indices
    per segment (``amlx.data.rationales``; default ``<column>_rationale`` when present), the ground truth of the
    agreement metrics.
    """

    def __init__(
        self,
        dataset: str = "amlx:movies",
        labels: list[str] = list(SENTIMENT_LABELS),
        text_column: str | None = None,
        label_column: str = "label",
        val_size: int = 500,
        test_size: int = 2000,
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        max_train_examples: int | None = None,
        planted: bool = False,
        planted_position: str = "end",
        class_words: list[str] | None = None,
        teacher: str | None = None,
        teacher_method: str | None = None,
        text_pair_column: str | None = None,
        rationale_columns: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.labels = list(labels)
        self._splits: dict[str, datasets.Dataset] = {}
        self._teacher: dict[int, dict] = {}  # train index → teacher_row (amlx.attributors.teacher)

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        hp = self.hparams
        table = load_table(hp.dataset, self.labels, hp.text_column, hp.label_column,
                           text_pair_column=hp.text_pair_column, rationale_columns=hp.rationale_columns)  # fmt: skip
        if isinstance(table, datasets.DatasetDict):
            splits = self._named_splits(table)
        else:
            splits = self._seeded_splits(table)
        if hp.max_train_examples is not None and not hp.teacher:
            splits["train"] = splits["train"].select(range(min(hp.max_train_examples, len(splits["train"]))))
        if hp.planted:
            # the planted word is the ground truth; human rationales would point at shifted characters
            splits = {k: v.remove_columns("rationale") if "rationale" in v.column_names else v for k, v in splits.items()}
            words = hp.class_words or self.labels
            splits = {
                k: plant(v, words, hp.planted_position, seed=hp.seed + i) for i, (k, v) in enumerate(splits.items())
            }
        self._splits = {k: v.add_column("index", list(range(len(v)))) for k, v in splits.items()}
        if hp.teacher:
            self._attach_teacher()

    def _attach_teacher(self) -> None:
        """Keep the train rows that have a teacher map (then ``max_train_examples`` of them); check their texts."""
        from amlx.attributors.teacher import TeacherMismatchError, load_teacher, teacher_row

        hp = self.hparams
        records = load_teacher(hp.teacher, hp.teacher_method)
        train = self._splits["train"]
        prefix = f"{hp.dataset}/train/"
        keep, rows = [], {}
        for pos, (item, index) in enumerate(zip(inputs_of(train), train["index"])):
            text = display_text(item)  # what records store: a pair's joined text
            rec = records.get(f"{prefix}{index}")
            if rec is None:
                continue
            if not (rec.text == text or (rec.text and text.startswith(rec.text))):  # a record keeps what F kept
                raise TeacherMismatchError(
                    f"the teacher record {prefix}{index} in {hp.teacher} has text {rec.text[:60]!r} but that train "
                    f"row is {text[:60]!r}: the maps were made with other splits (dataset, seed, val_size, test_size) "
                    "than this data module's; recompute them with `explain.py explain` on this split"
                )
            keep.append(pos)
            rows[index] = teacher_row(rec)
        if not keep:
            raise TeacherMismatchError(
                f"no record in {hp.teacher} belongs to the train split of {hp.dataset} (ids {prefix}<index>); "
                "compute teacher maps with `explain.py explain --dataset ... --split train`"
            )
        if hp.max_train_examples is not None:
            keep = keep[: hp.max_train_examples]
        self._splits["train"] = train.select(keep)
        self._teacher = rows

    def _seeded_splits(self, table: datasets.Dataset) -> dict[str, datasets.Dataset]:
        hp = self.hparams
        if hp.test_size + hp.val_size >= len(table):
            raise ValueError(
                f"{hp.dataset} has {len(table)} rows: too few for test_size={hp.test_size} + val_size={hp.val_size}"
            )
        shuffled = table.shuffle(seed=hp.seed)
        n_test, n_val = hp.test_size, hp.val_size
        return {
            "test": shuffled.select(range(n_test)),
            "val": shuffled.select(range(n_test, n_test + n_val)),
            "train": shuffled.select(range(n_test + n_val, len(shuffled))),
        }

    def _named_splits(self, table: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        hp = self.hparams
        if "train" not in table:
            raise ValueError(f"{hp.dataset} has splits {list(table)} but no 'train'")
        found = {k: next((table[n] for n in names if n in table), None) for k, names in HUB_SPLIT_NAMES.items()}
        cut = {k: getattr(hp, f"{k}_size") for k in ("test", "val") if found[k] is None}  # carved out of train
        if cut and sum(cut.values()) >= len(found["train"]):
            sizes = " + ".join(f"{k}_size={n}" for k, n in cut.items())
            raise ValueError(
                f"{hp.dataset}'s train split has {len(found['train'])} rows: too few to cut {sizes} out of it; "
                "lower them in the data config"
            )
        rest = found["train"].shuffle(seed=hp.seed)
        if found["test"] is None:
            found["test"] = rest.select(range(hp.test_size))
            rest = rest.select(range(hp.test_size, len(rest)))
        if found["val"] is None:
            found["val"] = rest.select(range(hp.val_size))
            rest = rest.select(range(hp.val_size, len(rest)))
        found["train"] = rest
        return found

    def split(self, name: str) -> datasets.Dataset:
        """The ``train`` / ``val`` / ``test`` table (rows: text, label, index, ...); ``validation`` / ``dev`` = ``val``."""
        name = SPLIT_ALIASES.get(name, name)
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} (or {tuple(SPLIT_ALIASES)} for 'val'), got {name!r}")
        self.setup()
        return self._splits[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        bs = self.hparams.batch_size if name == "train" else self.hparams.eval_batch_size
        rows = self.split(name).to_list()
        if name == "train" and self._teacher:
            rows = [{**r, "teacher": self._teacher[r["index"]]} for r in rows]
        return DataLoader(
            rows,
            batch_size=bs,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def collate(rows: list[dict]) -> dict:
    """Rows → ``{"text": [...], "label": LongTensor, "index": LongTensor, ...}``; other numeric columns stacked."""
    out: dict = {"text": [r["text"] for r in rows]}
    for key in rows[0]:
        if key == "text":
            continue
        vals = [r[key] for r in rows]
        if all(isinstance(v, (int, bool)) for v in vals):
            out[key] = torch.tensor(vals, dtype=torch.long)
        elif all(isinstance(v, (int, float)) for v in vals):
            out[key] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[key] = vals
    return out


def data_from_options(dataset: str, seed: int, data: dict | None = None, **fixed) -> TextClassificationData:
    """The data module of a job with top-level ``dataset`` / ``seed`` and further ``data`` options (split sizes, ...).

    A key given both at the top level and in ``data`` with different values is an error, not a silent choice.
    """
    data = dict(data or {})
    top = {"dataset": dataset, "seed": seed, **fixed}
    clash = {k: (v, data[k]) for k, v in top.items() if k in data and data[k] != v}
    if clash:
        detail = ", ".join(f"{k}: {a!r} (top level) vs {b!r} (data)" for k, (a, b) in clash.items())
        raise ValueError(f"data options contradict the job's own options ({detail}); set each in one place")
    return TextClassificationData(**{**data, **top})
