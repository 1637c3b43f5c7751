"""The names of an evaluate run's per-rank files: ``<label>.jsonl`` from rank 0 (or one process), ``<label>.rank<r>.jsonl``
from rank r of a distributed run, in ``attributions/`` and ``scores/`` alike."""

from __future__ import annotations

import re
from pathlib import Path

RANK_SUFFIX = re.compile(r"\.rank(\d+)$")


def rank_file(folder: Path, label: str, rank: int) -> Path:
    """The file of ``label`` that ``rank`` writes: ``<label>.jsonl`` for rank 0, ``<label>.rank<r>.jsonl`` otherwise."""
    return folder / (f"{label}.jsonl" if rank == 0 else f"{label}.rank{rank}.jsonl")


def rank_files(folder: Path, label: str) -> list[Path]:
    """Every rank's file of ``label`` in ``folder`` (rank 0's first), those that exist."""
    if not folder.is_dir():
        return []
    ranks = {0} if (folder / f"{label}.jsonl").exists() else set()
    prefix = f"{label}.rank"
    for p in folder.iterdir():
        if p.name.startswith(prefix) and p.suffix == ".jsonl":
            m = RANK_SUFFIX.search(p.stem)
            if m and p.stem[: m.start()] == label:
                ranks.add(int(m[1]))
    return [rank_file(folder, label, r) for r in sorted(ranks)]


def run_labels(folder: Path) -> list[str]:
    """The method labels with files in ``folder`` (rank files counted under their label), sorted."""
    stems = {p.stem for p in folder.glob("*.jsonl")} if folder.is_dir() else set()
    return sorted({RANK_SUFFIX.sub("", s) for s in stems})
