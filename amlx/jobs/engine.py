"""The explain engine: (explained model, examples, method specs, metrics) → attribution records and per-example scores.

Lightning runs it: ``Trainer.predict`` over a ``ChunkData`` module whose items are chunks ``[start, stop)`` of
``chunk_size`` examples (one predict batch = one chunk, so chunk boundaries and seeds are the same for any number of
processes), ``Explainer.predict_step`` computes a chunk and the ``ChunkWriter`` callback commits it, both through a
``ChunkJob``: ``ScoredMethod`` (records and metric rows; ``explain.py evaluate`` and the main job) or
``amlx.jobs.explain.RecordedMethod`` (records only; ``explain.py explain``), one ``Trainer.predict`` per method.
Each method is built once per run; per chunk it is reseeded (``AttributionMethod.reseed(seed + start)``, or
``option seed + start`` when the method sets its own) and torch is seeded with ``seed + start``, so a resumed or
distributed run draws what one uninterrupted process draws. Lightning's predict sampler hands each rank whole chunks
without padding duplicates (``UnrepeatedDistributedSamplerWrapper``).

Files, per method label: rank 0 (and a single process) writes ``attributions/<label>.jsonl`` and
``scores/<label>.jsonl``; rank r > 0 writes ``<label>.rank<r>.jsonl`` beside them. A chunk is committed by its score
rows (records appended first, then all the chunk's score rows in one write; every row names its ``chunk``). Before a
method runs, rank 0 repairs every rank's files (``_recover``), then all ranks skip the chunks committed in any file.
The table is computed after the last method, from all ranks' files, and written by rank 0 only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from amlx.data.rationales import rationale_tokens
from amlx.errors import UserError
from amlx.jobs.run_files import rank_file, rank_files
from amlx.methods.base import AttributionMethod, Target
from amlx.methods.ensemble import Ensemble
from amlx.methods.specs import MethodSpec
from amlx.models import ExplainedModel, resolve_device
from amlx.pairs import Input
from amlx.progress import Progress, quiet
from amlx.records import Attribution, load_jsonl, save_jsonl

log = logging.getLogger(__name__)


class ResumeMismatchError(UserError, ValueError):
    """``out_dir`` holds scores of a different evaluation configuration than the one asked for."""


class IncompleteRunError(RuntimeError):
    """After every rank finished, some example has no committed score row (a bug, never a user error)."""


class TrainerOptionsError(UserError, ValueError):
    """``trainer`` names an option the job's Trainer does not take."""


@dataclasses.dataclass
class TrainerOptions:
    """Lightning ``Trainer`` settings of a job (``--trainer.devices 2 --trainer.strategy ddp``).

    ``accelerator`` / ``devices`` None: from the job's ``device`` option (auto | cpu | cuda | cuda:N), one device.
    ``precision``: Lightning's (``32-true``, ``bf16-mixed``, ``16-mixed``, ...); None is ``32-true``.
    """

    accelerator: str | None = None
    devices: int | str | list[int] | None = None
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None


def trainer_options(options: TrainerOptions | dict | None) -> TrainerOptions:
    """``options`` as ``TrainerOptions`` (a YAML/Python dict is accepted); unknown keys are refused with the valid ones."""
    if options is None:
        return TrainerOptions()
    if isinstance(options, TrainerOptions):
        return options
    valid = [f.name for f in dataclasses.fields(TrainerOptions)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TrainerOptionsError(
            f"unknown trainer options {unknown}; the trainer options are: {', '.join(valid)} (--trainer.devices 2)"
        )
    return TrainerOptions(**options)


def make_trainer(device: str, options: TrainerOptions | dict | None, callbacks: list) -> Trainer:
    """A predict-only Trainer: autograd on (gradient methods, fAML), no logger, checkpoints or Lightning bars."""
    opts = trainer_options(options)
    accelerator, devices = opts.accelerator, opts.devices
    if accelerator is None:
        where = resolve_device(device)  # refuses cuda without a GPU, with a clear message
        accelerator = where.type
        if devices is None and where.index is not None:
            devices = [where.index]
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*length of `DataLoader` across ranks is zero.*")  # a finished method
    # Lightning's device banner ("GPU available: ...") on every run would bury the job's own lines
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    return Trainer(
        accelerator=accelerator, devices=1 if devices is None else devices, strategy=opts.strategy,
        num_nodes=opts.num_nodes, precision=opts.precision or "32-true", inference_mode=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip


@dataclasses.dataclass
class Examples:
    """The examples of a job: inputs, ids, and the ground truth the records get (planted spans or rationales)."""

    texts: list[Input]
    ids: list[str]
    planted: list[tuple[int, int]] | None = None  # per example, the planted word's character span
    rationales: list | None = None  # per example, the human rationale (amlx.data.rationales)

    def __len__(self) -> int:
        return len(self.texts)

    def stamp(self, recs: list[Attribution], idx: Sequence[int]) -> None:
        """Give the records of examples ``idx`` their example ids and ground truth."""
        for i, r in zip(idx, recs, strict=True):
            r.example_id = self.ids[i]
            if self.planted:
                r.ground_truth = r.spans_to_tokens([self.planted[i]])
            elif self.rationales is not None:
                r.ground_truth = rationale_tokens(r, self.rationales[i])


def checkpoint_digest(opts: dict) -> str | None:
    """SHA-256 of the file a method's ``checkpoint`` option names (path or ``amlx:`` name), or None without one.

    A retrained attributor exported under the same name has the same options, so the options alone cannot tell
    its rows from the old checkpoint's: the digest, stored in every score row, can.
    """
    name = opts.get("checkpoint")
    if not isinstance(name, str) or not name:
        return None
    from amlx.attributors.aml import checkpoint_path

    path = checkpoint_path(name)
    if not path.is_file():
        return None  # the method itself reports the missing checkpoint, with how to make it
    stat = path.stat()
    return _file_digest(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:  # size, mtime_ns: a rewritten file is hashed anew
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _complete_lines(path: Path) -> list[bytes]:
    """The file's whole lines; a torn last line (a write killed midway) is not one."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    return raw[: raw.rfind(b"\n") + 1].splitlines(keepends=True)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    """Replace ``path`` by ``lines`` atomically: a temporary file in the same folder, fsynced, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _recover(scores_path: Path, records_path: Path) -> None:
    """Make one method's two files (of one rank) agree after a kill at any instant, before resuming.

    A chunk is committed when all its score rows are on disk: each row names its chunk ``[start, stop)``, and the
    records are appended before the scores. So a torn last line, the score rows of a chunk cut short, and records
    without committed scores (a kill between the two appends) are all dropped here, each file rewritten atomically;
    the resumed run recomputes exactly those chunks. Nothing committed is lost, and no line is duplicated.
    """
    lines = _complete_lines(scores_path)
    rows = [json.loads(line) for line in lines]
    per_chunk = collections.Counter(tuple(r["chunk"]) for r in rows if "chunk" in r)
    kept, seen = [], set()
    for line, r in zip(lines, rows):
        whole = "chunk" not in r or per_chunk[tuple(r["chunk"])] == r["chunk"][1] - r["chunk"][0]
        if whole and r["index"] not in seen:
            seen.add(r["index"])
            kept.append((line, r))
    if scores_path.exists() and (len(kept) < len(lines) or scores_path.stat().st_size != sum(map(len, lines))):
        log.warning("%s: dropped %d uncommitted rows left by an interrupted run", scores_path, len(lines) - len(kept))
        _rewrite(scores_path, [line for line, _ in kept])
    committed = {r["example_id"] for _, r in kept}
    rec_lines = _complete_lines(records_path)
    rec_kept, rec_seen = [], set()
    for line in rec_lines:
        eid = json.loads(line).get("example_id")
        if eid in committed and eid not in rec_seen:
            rec_seen.add(eid)
            rec_kept.append(line)
    if records_path.exists() and (len(rec_kept) < len(rec_lines) or records_path.stat().st_size != sum(map(len, rec_lines))):
        log.warning("%s: dropped %d records without committed scores", records_path, len(rec_lines) - len(rec_kept))
        _rewrite(records_path, rec_kept)


def _changed_settings(old_key: str | None, new_key: str) -> str:
    """The settings that differ between two configuration keys (JSON), for the message."""
    try:
        old, new = json.loads(old_key or "{}"), json.loads(new_key)
    except json.JSONDecodeError:
        return "its configuration"
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(changed) or "its configuration"


def _done_indices(scores_path: Path, config_key: str, digest: str | None = None) -> dict[int, dict]:
    """Per-example metric rows already on disk for this configuration (other configurations are refused).

    ``digest``: the checkpoint the method loads now; rows written from another checkpoint file are refused.
    """
    if not scores_path.exists():
        return {}
    done, unverified = {}, 0
    with scores_path.open() as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("config") != config_key:
                raise ResumeMismatchError(
                    f"{scores_path} was written by a different evaluation configuration (changed: "
                    f"{_changed_settings(row.get('config'), config_key)}); resume with the same configuration, "
                    "use another out_dir, or delete it to start over"
                )
            old = row.get("checkpoint_sha256")
            if digest is not None and old is not None and old != digest:
                raise ResumeMismatchError(
                    f"{scores_path} was written with another version of the method's checkpoint (sha256 "
                    f"{old[:12]}…, now {digest[:12]}…): the checkpoint was retrained or replaced. Delete {scores_path} "
                    "and its attributions file to evaluate the new one, or give it its own alias or out_dir"
                )
            unverified += digest is not None and old is None
            done[row["index"]] = row
    if unverified:
        log.warning("%s: %d rows predate checkpoint digests; their checkpoint version cannot be checked",
                    scores_path, unverified)  # fmt: skip
    return done


def committed_rows(out: Path, label: str, config_key: str, digest: str | None) -> dict[int, dict]:
    """Score rows of ``label`` by example index, from every rank's scores file (first file wins a duplicate)."""
    done: dict[int, dict] = {}
    for path in rank_files(out / "scores", label):
        for i, row in _done_indices(path, config_key, digest).items():
            done.setdefault(i, row)
    return done


def seed_and_attribute(method: AttributionMethod, opts: dict, seed: int, start: int, inputs: list[Input],
                       model: ExplainedModel, target: Target = None) -> list[Attribution]:  # fmt: skip
    """The records of the chunk at ``start``: the method reseeded with (its own seed or ``seed``) + ``start``, torch
    with ``seed + start``; the same draws as a method constructed anew for the chunk."""
    method.reseed(opts.get("seed", seed) + start)
    torch.manual_seed(seed + start)
    return method.attribute(inputs, model, target=target)


def options_key(opts: dict) -> str:
    return json.dumps(opts, sort_keys=True)


def chunks_of(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk of ``n`` examples: the same boundaries for every run and number of ranks."""
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


class ChunkJob:
    """What one ``Trainer.predict`` computes and writes: the chunks of one method (``ScoredMethod``, ``RecordedMethod``).

    ``repair`` runs on rank 0 before any rank reads the files, ``load_done`` on every rank; ``compute`` is a predict
    step's work and ``commit`` writes its result on the rank that computed it.
    """

    label: str

    def repair(self) -> None: ...

    def load_done(self) -> None: ...

    def todo(self, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        raise NotImplementedError

    def n_done(self) -> int:
        raise NotImplementedError

    def compute(self, start: int, stop: int) -> dict[str, Any]:
        raise NotImplementedError

    def commit(self, prediction: dict[str, Any], rank: int) -> None:
        raise NotImplementedError


class ScoredMethod(ChunkJob):
    """One entry of an evaluate run's ``methods``: records and score rows per chunk, committed by the score rows."""

    def __init__(self, spec: MethodSpec, settings: dict, out: Path, examples: Examples, explained: ExplainedModel,
                 evaluator, seed: int) -> None:  # fmt: skip
        self.spec, self.label, self.out = spec, spec.label, out
        self.examples, self.explained, self.evaluator, self.seed = examples, explained, evaluator, seed
        self.method = spec.build()  # once per run; reseeded per chunk
        variant = getattr(self.method, "variant", "") or ""
        if spec.alias != spec.name:  # two runs of one method must stay distinguishable in the table
            variant = f"{variant} [{spec.alias}]".strip()
        self.variant = variant
        self.config_key = json.dumps({**settings, "method": spec.name, "options": spec.options}, sort_keys=True)
        self.digest = checkpoint_digest(spec.options)
        self.done: dict[int, dict] = {}
        # ensemble members: (options, the member built once or the label of the run's method whose records it reuses)
        self.members: list[tuple[dict, AttributionMethod | str]] = []
        self._member_cache: dict[str, dict[str, Attribution]] = {}

    @property
    def is_ensemble(self) -> bool:
        return isinstance(self.method, Ensemble)

    def link_members(self, evaluated: dict[tuple[str, str], str]) -> None:
        """For an ensemble: each member is the records of a method of the run (same name and options), or built once."""
        from amlx.methods import get

        for name, opts in self.method.members:
            source = evaluated.get((name, options_key(opts)))
            self.members.append((opts, source if source is not None else get(name, **opts)))

    def repair(self) -> None:
        for scores in rank_files(self.out / "scores", self.label):
            suffix = scores.name[len(self.label) :]
            _recover(scores, self.out / "attributions" / f"{self.label}{suffix}")

    def load_done(self) -> None:
        self.done = committed_rows(self.out, self.label, self.config_key, self.digest)

    def todo(self, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return [(a, b) for a, b in chunks if not all(i in self.done for i in range(a, b))]

    def n_done(self) -> int:
        return sum(1 for i in self.done if i < len(self.examples))

    def attribute(self, start: int, stop: int) -> list[Attribution]:
        """The stamped records of examples ``start .. stop - 1``, seeded for the chunk."""
        idx = range(start, stop)
        inputs = [self.examples.texts[i] for i in idx]
        if self.is_ensemble:
            recs = self.method.combine([self._member(m, opts, start, idx, inputs) for opts, m in self.members])
            reused = [isinstance(m, str) for _, m in self.members]
            for r in recs:
                r.meta["reused"] = reused
        else:
            recs = seed_and_attribute(self.method, self.spec.options, self.seed, start, inputs, self.explained)
        self.examples.stamp(recs, idx)
        return recs

    def _member(self, member, opts: dict, start: int, idx: range, inputs: list[Input]) -> list[Attribution]:
        if not isinstance(member, str):
            return seed_and_attribute(member, opts, self.seed, start, inputs, self.explained)
        if member not in self._member_cache:  # all ranks' files: the member's chunks may have run anywhere
            self._member_cache[member] = {r.example_id: r for path in rank_files(self.out / "attributions", member)
                                          for r in load_jsonl(path)}  # fmt: skip
        return [self._member_cache[member][self.examples.ids[i]] for i in idx]

    def compute(self, start: int, stop: int) -> dict[str, Any]:
        recs = self.attribute(start, stop)
        t0 = time.perf_counter()
        values = self.evaluator.evaluate(recs)
        eval_sec = (time.perf_counter() - t0) / len(recs)
        names = [m.name for m in self.evaluator.metrics]
        rows = []
        for j, (i, r) in enumerate(zip(range(start, stop), recs)):
            rows.append({"index": i, "example_id": self.examples.ids[i], "chunk": [start, stop],
                         "config": self.config_key, **({"checkpoint_sha256": self.digest} if self.digest else {}),
                         "seconds": r.seconds, "eval_seconds": eval_sec, **{m: float(values[m][j]) for m in names},
                         "curves": {m: points[j] for m, points in self.evaluator.curves.items()}})  # fmt: skip
        return {"records": recs, "rows": rows}

    def commit(self, prediction: dict[str, Any], rank: int) -> None:
        """Records appended first, then the chunk's score rows in one write: the score rows commit the chunk."""
        save_jsonl(prediction["records"], rank_file(self.out / "attributions", self.label, rank), append=True)
        scores_path = rank_file(self.out / "scores", self.label, rank)
        scores_path.parent.mkdir(parents=True, exist_ok=True)
        with scores_path.open("a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in prediction["rows"]))  # a kill leaves a short chunk
        for row in prediction["rows"]:
            self.done[row["index"]] = row


class ChunkData(LightningDataModule):
    """The chunks of one job that no rank has committed yet; one predict batch is one chunk ``(start, stop)``."""

    def __init__(self, job: ChunkJob, chunks: list[tuple[int, int]]) -> None:
        super().__init__()
        self.job, self.chunks = job, chunks
        self.todo: list[tuple[int, int]] = []

    def setup(self, stage: str) -> None:
        if self.trainer.is_global_zero:
            self.job.repair()
        self.trainer.strategy.barrier("amlx-repaired")  # no rank reads a file rank 0 may still be rewriting
        self.job.load_done()
        self.todo = self.job.todo(self.chunks)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.todo, batch_size=1, collate_fn=_only)


def _only(batch: list):
    return batch[0]


class Explainer(LightningModule):
    """Runs the current job on one chunk per predict step; the explained model is a child, so Lightning places it."""

    def __init__(self, explained: ExplainedModel) -> None:
        super().__init__()
        self.explained = explained
        self.job: ChunkJob | None = None

    def predict_step(self, batch: tuple[int, int], batch_idx: int) -> dict[str, Any]:
        start, stop = (int(v) for v in batch)
        with torch.enable_grad():  # gradient methods and fAML need autograd (the Trainer runs without inference mode)
            return {"chunk": (start, stop), **self.job.compute(start, stop)}


class ChunkWriter(BasePredictionWriter):
    """Commits each chunk on the rank that computed it (``ChunkJob.commit``); rank 0 shows the progress."""

    def __init__(self, n: int, progress: bool) -> None:
        super().__init__(write_interval="batch")
        self.n, self.progress = n, progress
        self.job: ChunkJob | None = None
        self._bar: Progress | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._world = trainer.world_size
        self._quiet = contextlib.ExitStack()
        if not trainer.is_global_zero:
            self._quiet.enter_context(quiet())  # the methods' own bars (fAML, MaRC) too
        self._bar = Progress(self.n, self.job.label, enabled=self.progress, initial=self.job.n_done())

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._bar.close()
        self._quiet.close()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.job.commit(prediction, trainer.global_rank)
        start, stop = prediction["chunk"]
        # rank 0 sees only its share of the chunks: it counts each of them for every rank (an estimate in DDP)
        self._bar.update(min((stop - start) * self._world, self.n - self._bar.done))


def run_jobs(explained: ExplainedModel, jobs: list[ChunkJob], chunks: list[tuple[int, int]], n: int,
             progress: bool = True, device: str = "auto", trainer: TrainerOptions | dict | None = None) -> Trainer:
    """``Trainer.predict`` over the chunks of each job in turn, then a barrier: every rank's files are complete."""
    writer = ChunkWriter(n, progress)
    pl_trainer = make_trainer(device, trainer, [writer])
    module = Explainer(explained)
    for job in jobs:
        module.job = writer.job = job
        pl_trainer.predict(module, datamodule=ChunkData(job, chunks), return_predictions=False)
    pl_trainer.strategy.barrier("amlx-all-committed")  # every rank's last chunk is on disk
    return pl_trainer


def summarize(values: list[float]) -> tuple[float, float]:
    """Mean and 95% normal-approximation confidence half-width (1.96·sd/√n) of finite values."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(arr) == 0:
        return float("nan"), float("nan")
    ci = 1.96 * arr.std(ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return float(arr.mean()), float(ci)


def run_methods(
    explained: ExplainedModel, examples: Examples, specs: list[MethodSpec], evaluator, settings: dict, seed: int,
    chunk_size: int, out: Path, progress: bool = True, device: str = "auto",
    trainer: TrainerOptions | dict | None = None,
) -> tuple[dict[str, list[dict]], list[ScoredMethod], bool]:
    """Attribute and score ``examples`` with every method (ensembles last); resumes from ``out``'s files.

    Returns the committed score rows per label (in example order, every rank's), the method runs in the order of
    ``specs``, and whether this process is rank 0 (the one that writes tables).
    """
    n = len(examples)
    runs = [ScoredMethod(s, settings, out, examples, explained, evaluator, seed) for s in specs]
    evaluated = {(r.spec.name, options_key(r.spec.options)): r.label for r in runs if not r.is_ensemble}
    for r in runs:
        if r.is_ensemble:
            r.link_members(evaluated)
    ordered = sorted(runs, key=lambda r: r.is_ensemble)  # ensembles last: the members they reuse are on disk
    pl_trainer = run_jobs(explained, ordered, chunks_of(n, chunk_size), n, progress, device, trainer)
    per_label = {}
    for run in runs:
        run.load_done()
        missing = [i for i in range(n) if i not in run.done]
        if missing:
            raise IncompleteRunError(f"{run.label}: examples {missing[:10]} have no committed score row in {out}")
        per_label[run.label] = [run.done[i] for i in range(n)]
    return per_label, runs, pl_trainer.is_global_zero
