"""The ``explain`` job: attribute texts with one or more methods, save JSONL, write an HTML page, print to the terminal.

A front-end of the explain engine (``amlx.jobs.engine``): Lightning's ``Trainer.predict`` runs the chunks, each
method built once and reseeded per chunk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from amlx import methods as method_registry
from amlx import render
from amlx.errors import UserError
from amlx.jobs.engine import (
    ChunkJob,
    TrainerOptions,
    chunks_of,
    run_jobs,
    seed_and_attribute,
    trainer_options,
)
from amlx.jobs.run_files import rank_file, rank_files
from amlx.methods.specs import MethodSpec
from amlx.models.explained import EmptyTextError, ExplainedModel, check_model_options
from amlx.pairs import Input, inputs_of
from amlx.records import Attribution, load_jsonl, save_jsonl

log = logging.getLogger(__name__)


class TextSourceError(UserError, ValueError):
    """No source of texts, more than one, or a text file that is missing or holds no text."""


def load_texts(
    texts: list[str] | None, file: str | None, dataset: str | None, split: str, n: int, seed: int,
    data: dict | None = None, start: int = 0,
) -> tuple[list[Input], list[str], list[int | None]]:
    """(texts, example ids, gold labels or None) from exactly one source: a list, a text file, or a dataset split.

    A dataset of sentence pairs gives ``TextPair``s (``amlx.pairs``).
    """
    given = [name for name, v in (("texts", texts), ("file", file), ("dataset", dataset)) if v is not None]
    if len(given) != 1:
        raise TextSourceError(
            f"give exactly one source of texts (texts=[...], file=PATH with one text per line, or dataset=NAME); "
            f"got {given or 'none'}"
        )
    if texts is not None:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise TextSourceError("texts is an empty list; give at least one text (--texts \"A great film\")")
        for i, t in enumerate(texts):
            if not t.strip():
                raise EmptyTextError(f"text {i} of texts is empty or whitespace only ({t!r}); remove it or give a text")
        return texts, [str(i) for i in range(len(texts))], [None] * len(texts)
    if file is not None:
        if not Path(file).is_file():
            raise TextSourceError(f"text file {file} does not exist; give a UTF-8 file with one text per line")
        lines = [line.strip() for line in Path(file).read_text(encoding="utf-8").splitlines()]
        kept = [(i, t) for i, t in enumerate(lines, 1) if t]
        if not kept:
            raise TextSourceError(f"text file {file} holds no text (only blank lines); give one text per line")
        return [t for _, t in kept], [f"{file}:{i}" for i, _ in kept], [None] * len(kept)
    from amlx.data import data_from_options

    rows = data_from_options(dataset, seed, data).split(split)
    if start < 0 or start >= len(rows):
        raise TextSourceError(
            f"start={start} is outside the {split} split of {dataset} ({len(rows)} rows); give 0 ≤ start < {len(rows)}"
        )
    rows = rows.select(range(start, min(start + n, len(rows))))
    return inputs_of(rows), [f"{dataset}/{split}/{i}" for i in rows["index"]], list(rows["label"])


def explain(
    model: str,
    methods: list[str] = ["gradient_x_input"],  # noqa: B006  (jsonargparse reads the default from the signature)
    texts: list[str] | None = None,
    file: str | None = None,
    dataset: str | None = None,
    split: str = "test",
    n: int = 10,
    seed: int = 0,
    method_options: dict[str, dict] | None = None,
    target: int | str | None = None,
    model_options: dict | None = None,
    out_dir: str = "outputs/explain",
    html: bool = True,
    terminal: bool = True,
    kind: str = "auto",
    device: str = "auto",
    data: dict | None = None,
    chunk_size: int | None = None,
    start: int = 0,
    trainer: TrainerOptions | None = None,
) -> list[Attribution]:
    """Explain the model's predictions on the given texts with each method; save ``attributions.jsonl`` (+ ``.html``).

    Args:
        model: explained model (``amlx:`` name, local folder or hub name), loaded by ``ExplainedModel.from_pretrained``.
        methods: registered method names (``amlx.methods.names()``), run in this order; ``alias=name`` runs one
            method twice with different options (keyed by the alias).
        texts: texts to explain (give exactly one of texts, file and dataset).
        file: a UTF-8 text file with one text per line (blank lines skipped).
        dataset: a dataset name; the first ``n`` rows of ``split`` of
            ``amlx.data.TextClassificationData(dataset=..., seed=seed)`` are explained.
        split: dataset split (train | val | test).
        n: number of dataset rows.
        start: the first dataset row (rows ``start`` .. ``start + n - 1``): shards of one long run (teacher maps)
            go to separate ``out_dir``s, possibly on separate machines, and their ``attributions.jsonl`` files are
            concatenated afterwards (ids are the dataset rows, so shards never collide). Each chunk reseeds the
            method (``AttributionMethod.reseed``: its own ``seed`` option, else ``seed``, + the dataset row of the
            chunk's first text) and torch (``seed`` + that row), so shards that start on a chunk boundary give the
            maps of the unsharded run.
        seed: the data module's split seed.
        method_options: per method name, keyword options for its constructor, e.g. ``{"lime": {"n_samples": 500}}``
            (checked against the constructor before the model loads).
        target: the class to explain (label name or index) for every text; default: each text's predicted class.
        model_options: further ``ExplainedModel.from_pretrained`` options (``mask``, ``dtype``, ...).
        out_dir: folder for ``attributions.jsonl`` and ``attributions.html``.
        html: write the HTML page.
        terminal: print the coloured terminal view.
        kind: explained-model kind (auto | encoder | decoder | prompted).
        device: where the explained model and the methods run: auto (a CUDA GPU when visible, else CPU) | cpu | cuda[:N].
        data: further ``TextClassificationData`` options for ``dataset`` (e.g. ``{val_size: 500, test_size: 2000}``:
            the splits the explained classifier was trained on).
        chunk_size: explain this many texts at a time and append each chunk to ``attributions.jsonl`` as it is done;
            a re-run then skips the (method, example) pairs already there, so a long run (teacher maps for
            amortized attributors) resumes. None: all texts in one pass and the file written anew.
        trainer: Lightning Trainer settings (``devices``, ``strategy``, ...: docs/cluster.md); rank r > 0 of a
            distributed run writes ``attributions.rank<r>.jsonl``, and rank 0 the HTML page and the terminal view.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    specs = method_registry.parse_methods(methods, method_options)  # before the model loads: a typo fails fast
    check_model_options(model_options)
    if start and dataset is None:
        raise TextSourceError(f"start={start} applies to a dataset split only; texts and files start at their first line")
    trainer = trainer_options(trainer)
    batch, ids, labels = load_texts(texts, file, dataset, split, n, seed, data, start)
    explained = ExplainedModel.from_pretrained(model, kind=kind, **(model_options or {}))
    out = Path(out_dir)
    jobs = [RecordedMethod(spec, out, model, batch, ids, labels, explained, seed, start, target, fresh=chunk_size is None
                           and k == 0) for k, spec in enumerate(specs)]  # fmt: skip
    chunks = chunks_of(len(batch), chunk_size or len(batch))
    pl_trainer = run_jobs(explained, jobs, chunks, len(batch), progress=bool(chunk_size), device=device,
                          trainer=trainer)  # fmt: skip
    done = _resume(out, model)
    records = [done[spec.alias, i] for spec in specs for i in ids]
    for spec in specs:
        secs = [done[spec.alias, i].seconds for i in ids]
        log.info("%s: %.3f s per example", spec.alias, sum(secs) / max(1, len(secs)))
    if not pl_trainer.is_global_zero:  # rank 0 renders
        return records
    if html:
        render.to_html(records, out / "attributions.html", title=f"amlx attributions: {model}")
    if terminal:
        render.to_terminal(records)
    return records


class RecordedMethod(ChunkJob):
    """One method of an explain run: its records per chunk, appended to ``attributions.jsonl`` (rank r > 0:
    ``attributions.rank<r>.jsonl``); an example is done when a record of (alias, example id) is in any rank's file."""

    def __init__(self, spec: MethodSpec, out: Path, model: str, texts: list[Input], ids: list[str],
                 labels: list[int | None], explained: ExplainedModel, seed: int, first_row: int, target,
                 fresh: bool) -> None:  # fmt: skip
        self.spec, self.label, self.out, self.model = spec, spec.alias, out, model
        self.texts, self.ids, self.labels, self.explained = texts, ids, labels, explained
        self.seed, self.first_row, self.target, self.fresh = seed, first_row, target, fresh
        self.method = spec.build()  # once per run; reseeded per chunk
        self.done: set[str] = set()

    def repair(self) -> None:
        for path in rank_files(self.out, "attributions"):
            if self.fresh:
                path.unlink()  # one-shot runs write the file anew
            else:
                _cut_torn_line(path)

    def load_done(self) -> None:
        self.done = {i for alias, i in _resume(self.out, self.model) if alias == self.label}

    def todo(self, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return [(a, b) for a, b in chunks if any(self.ids[i] not in self.done for i in range(a, b))]

    def n_done(self) -> int:
        return len(self.done & set(self.ids))

    def compute(self, start: int, stop: int) -> dict:
        """The chunk's records, seeded by the dataset row of its first text (so shards match an unsharded run)."""
        inputs = self.explained.encode(self.texts[start:stop])
        recs = seed_and_attribute(self.method, self.spec.options, self.seed, self.first_row + start, inputs,
                                  self.explained, target=self.target)  # fmt: skip
        for r, i in zip(recs, range(start, stop)):
            r.example_id = self.ids[i]
            r.meta.update(model=self.model, **({"label": self.labels[i]} if self.labels[i] is not None else {}))
            if self.label != self.spec.name:
                r.meta["alias"] = self.label
        return {"records": [r for r in recs if r.example_id not in self.done]}  # a chunk cut short by a kill

    def commit(self, prediction: dict, rank: int) -> None:
        save_jsonl(prediction["records"], rank_file(self.out, "attributions", rank), append=True)  # one chunk per write
        self.done.update(r.example_id for r in prediction["records"])


def _cut_torn_line(path: Path) -> None:
    """Cut a partial last line (a killed write) off ``path``."""
    raw = path.read_bytes()
    cut = raw.rfind(b"\n") + 1
    if cut < len(raw):
        with path.open("r+b") as f:
            f.truncate(cut)
        log.warning("%s: dropped a partial last line left by an interrupted run", path)


def _resume(out: Path, model: str) -> dict[tuple[str, str], Attribution]:
    """Records already in ``out``'s attributions files (every rank's) by (method alias, example id)."""
    done = {}
    for path in rank_files(out, "attributions"):
        for r in load_jsonl(path):
            if r.meta.get("model") != model:
                raise ValueError(
                    f"{path} holds maps of {r.meta.get('model')!r}, not {model!r}: use another out_dir or delete the file"
                )
            done.setdefault((r.meta.get("alias", r.method), r.example_id), r)
    return done
