"""The ``explain`` job: attribute texts with one or more methods, save JSONL, write an HTML page, print to the terminal."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from amlx import methods as method_registry
from amlx import render
from amlx.errors import UserError
from amlx.models.explained import EmptyTextError, ExplainedModel, check_model_options, resolve_device
from amlx.pairs import Input, inputs_of
from amlx.progress import Progress
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
            concatenated afterwards (ids are the dataset rows, so shards never collide). Each chunk seeds torch with
            ``seed`` + the dataset row of its first text.
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
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    specs = method_registry.parse_methods(methods, method_options)  # before the model loads: a typo fails fast
    check_model_options(model_options)
    if start and dataset is None:
        raise TextSourceError(f"start={start} applies to a dataset split only; texts and files start at their first line")
    batch, ids, labels = load_texts(texts, file, dataset, split, n, seed, data, start)
    explained = ExplainedModel.from_pretrained(model, kind=kind, **(model_options or {})).to(resolve_device(device))
    out = Path(out_dir)
    path = out / "attributions.jsonl"
    done = _resume(path, model) if chunk_size else {}
    if not chunk_size and path.exists():
        path.unlink()  # one-shot runs write the file anew
    size = chunk_size or len(batch)
    for spec in specs:
        method, key = spec.build(), spec.alias
        todo = [i for i in range(len(batch)) if (key, ids[i]) not in done]
        with Progress(len(batch), key, enabled=bool(chunk_size), initial=len(batch) - len(todo)) as bar:
            for start in range(0, len(todo), size):
                rows = todo[start : start + size]
                torch.manual_seed(seed + start + rows[0])  # a resumed run draws what an uninterrupted one drew for this chunk
                recs = method.attribute(explained.encode([batch[i] for i in rows]), explained, target=target)
                for r, i in zip(recs, rows):
                    r.example_id = ids[i]
                    r.meta.update(model=model, **({"label": labels[i]} if labels[i] is not None else {}))
                    if key != spec.name:
                        r.meta["alias"] = key
                    done[key, ids[i]] = r
                save_jsonl(recs, path, append=True)  # one chunk per write: a kill loses at most the chunk in flight
                bar.update(len(rows))
        secs = [done[key, i].seconds for i in ids]
        log.info("%s: %.3f s per example", key, sum(secs) / max(1, len(secs)))
    records = [done[spec.alias, i] for spec in specs for i in ids]
    if html:
        render.to_html(records, out / "attributions.html", title=f"amlx attributions: {model}")
    if terminal:
        render.to_terminal(records)
    return records


def _resume(path: Path, model: str) -> dict[tuple[str, str], Attribution]:
    """Records already in ``path`` by (method alias, example id); a torn last line (a killed write) is cut off."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    cut = raw.rfind(b"\n") + 1
    if cut < len(raw):
        with path.open("r+b") as f:
            f.truncate(cut)
        log.warning("%s: dropped a partial last line left by an interrupted run", path)
    done = {}
    for r in load_jsonl(path):
        if r.meta.get("model") != model:
            raise ValueError(
                f"{path} holds maps of {r.meta.get('model')!r}, not {model!r}: use another out_dir or delete the file"
            )
        done[r.meta.get("alias", r.method), r.example_id] = r
    return done
