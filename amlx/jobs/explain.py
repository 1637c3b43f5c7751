"""The ``explain`` job: attribute texts with one or more methods, save JSONL, write an HTML page, print to the terminal."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from amlx import methods as method_registry
from amlx import render
from amlx.models.explained import ExplainedModel, resolve_device
from amlx.records import Attribution, load_jsonl, save_jsonl

log = logging.getLogger(__name__)


def load_texts(
    texts: list[str] | None, file: str | None, dataset: str | None, split: str, n: int, seed: int,
    data: dict | None = None,
) -> tuple[list[str], list[str], list[int | None]]:
    """(texts, example ids, gold labels or None) from exactly one source: a list, a text file, or a dataset split."""
    given = [name for name, v in (("texts", texts), ("file", file), ("dataset", dataset)) if v]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one source of texts (texts=[...], file=PATH with one text per line, or dataset=NAME); "
            f"got {given or 'none'}"
        )
    if texts:
        return list(texts), [str(i) for i in range(len(texts))], [None] * len(texts)
    if file:
        lines = [line.strip() for line in Path(file).read_text(encoding="utf-8").splitlines()]
        kept = [(i, t) for i, t in enumerate(lines, 1) if t]
        return [t for _, t in kept], [f"{file}:{i}" for i, _ in kept], [None] * len(kept)
    from amlx.data import data_from_options

    rows = data_from_options(dataset, seed, data).split(split)
    rows = rows.select(range(min(n, len(rows))))
    return list(rows["text"]), [f"{dataset}/{split}/{i}" for i in rows["index"]], list(rows["label"])


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
    out_dir: str = "outputs/explain",
    html: bool = True,
    terminal: bool = True,
    kind: str = "auto",
    device: str = "auto",
    data: dict | None = None,
    chunk_size: int | None = None,
) -> list[Attribution]:
    """Explain the model's predictions on the given texts with each method; save ``attributions.jsonl`` (+ ``.html``).

    Args:
        model: explained model (``amlx:`` name, local folder or hub name), loaded by ``ExplainedModel.from_pretrained``.
        methods: registered method names (``amlx.methods.names()``), run in this order.
        texts: texts to explain (give exactly one of texts, file and dataset).
        file: a UTF-8 text file with one text per line (blank lines skipped).
        dataset: a dataset name; the first ``n`` rows of ``split`` of
            ``amlx.data.TextClassificationData(dataset=..., seed=seed)`` are explained.
        split: dataset split (train | val | test).
        n: number of dataset rows.
        seed: the data module's split seed.
        method_options: per method name, keyword options for its constructor, e.g. ``{"lime": {"n_samples": 500}}``.
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
    method_options = method_options or {}
    unknown = sorted(set(method_options) - set(methods))
    if unknown:
        raise ValueError(f"method_options for {unknown}, which are not in methods={methods}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    explained = ExplainedModel.from_pretrained(model, kind=kind).to(resolve_device(device))
    batch, ids, labels = load_texts(texts, file, dataset, split, n, seed, data)
    out = Path(out_dir)
    path = out / "attributions.jsonl"
    done = _resume(path, model) if chunk_size else {}
    if not chunk_size and path.exists():
        path.unlink()  # one-shot runs write the file anew
    size = chunk_size or len(batch)
    for name in methods:
        method = method_registry.get(name, **method_options.get(name, {}))
        todo = [i for i in range(len(batch)) if (name, ids[i]) not in done]
        bar = tqdm(total=len(batch), initial=len(batch) - len(todo), desc=name, disable=not chunk_size)
        for start in range(0, len(todo), size):
            rows = todo[start : start + size]
            torch.manual_seed(seed + rows[0])  # a resumed run draws what an uninterrupted one drew for this chunk
            recs = method.attribute(explained.encode([batch[i] for i in rows]), explained)
            for r, i in zip(recs, rows):
                r.example_id = ids[i]
                r.meta.update(model=model, **({"label": labels[i]} if labels[i] is not None else {}))
                done[name, ids[i]] = r
            save_jsonl(recs, path, append=True)  # one chunk per write: a kill loses at most the chunk in flight
            bar.update(len(rows))
        bar.close()
        secs = [done[name, i].seconds for i in ids]
        log.info("%s: %.3f s per example", name, sum(secs) / max(1, len(secs)))
    records = [done[name, i] for name in methods for i in ids]
    if html:
        render.to_html(records, out / "attributions.html", title=f"amlx attributions: {model}")
    if terminal:
        render.to_terminal(records)
    return records


def _resume(path: Path, model: str) -> dict[tuple[str, str], Attribution]:
    """Records already in ``path`` by (method, example id); a torn last line (a killed write) is cut off."""
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
        done[r.method, r.example_id] = r
    return done
