"""Read an offline W&B run back from its ``run-<id>.wandb`` file: config, metric history, summary, exit code.

An offline run (``WANDB_MODE=offline``) is a directory ``<save_dir>/wandb/offline-run-<time>-<id>/`` whose only
record of what was logged is ``run-<id>.wandb`` (``wandb sync <dir>`` uploads it later; wandb ≥ 0.19 writes no
``files/wandb-summary.json`` offline). That file is a LevelDB-style log: a 7-byte header (``:W&B``, magic
0xBEE1, version 0), then 32 KiB blocks of chunks, each ``crc32 (4 bytes) | length (2) | type (1) | data`` with
type full / first / middle / last; a full record is one serialized ``wandb_internal_pb2.Record``. Logged media
(tables, HTML) are files under the run's ``files/media/``, which the log names (``OfflineRun.media``).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
IDENT, MAGIC = b":W&B", 0xBEE1
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run logged. ``history``: one dict per ``log`` call (``_step`` included)."""

    path: Path
    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None

    def curve(self, key: str) -> list[float]:
        """The logged values of ``key``, in order."""
        return [row[key] for row in self.history if key in row]

    def media(self, key: str) -> list[Path]:
        """The files of the media logged under ``key`` (``wandb.Table``, ``wandb.Html``, ...), in order.

        W&B writes each one under the run's ``files/`` (``media/table/<key>_<step>_<hash>.table.json``) and logs
        its path; a table file is JSON ``{"columns": [...], "data": [[...], ...]}``.
        """
        return [self.path.parent / "files" / row[f"{key}/path"] for row in self.history if f"{key}/path" in row]


def records(path: str | Path) -> list[bytes]:
    """The serialized records of a ``.wandb`` file, in order (a truncated or corrupt tail is dropped)."""
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC or version != 0:
        raise ValueError(f"{path} is not a W&B transaction log (header {ident!r}, {magic:#x}, {version})")
    out, pending, pos = [], b"", HEADER.size
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # the block's tail is padding
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        body = data[pos + CHUNK.size : pos + CHUNK.size + length]
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left
            continue
        if len(body) < length or zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            break  # the writer stopped mid-record (a killed process)
        pos += CHUNK.size + length
        if kind == FULL:
            out.append(body)
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            out.append(pending + body)
            pending = b""
    return out


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _json(text: str):
    return json.loads(text) if text else None


def read_run(run_dir: str | Path, wait_s: float = 0.0) -> OfflineRun:
    """Parse the run directory ``.../wandb/offline-run-*`` (or its ``.wandb`` file) into an ``OfflineRun``.

    W&B's writer process creates the file and flushes a finished run's last records (summary, exit) shortly
    after ``run.finish()`` returns; ``wait_s`` re-reads for up to that many seconds until the exit record is there.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            run = _parse(Path(run_dir))
            if run.exit_code is not None or time.monotonic() >= deadline:
                return run
        except (FileNotFoundError, ValueError, struct.error):  # not written yet, or not even its header
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def _parse(run_dir: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    files = [run_dir] if run_dir.suffix == ".wandb" else sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    run = OfflineRun(path=files[0])
    for raw in records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.tags = list(r.tags)
            run.config.update({_key(i): _json(i.value_json) for i in r.config.update})
        elif kind == "config":
            run.config.update({_key(i): _json(i.value_json) for i in rec.config.update})
        elif kind == "history":
            run.history.append({_key(i): _json(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): _json(i.value_json) for i in rec.summary.update})
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    run.config = {k: v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v
                  for k, v in run.config.items()}  # fmt: skip
    return run


def offline_runs(save_dir: str | Path, wait_s: float = 0.0) -> list[OfflineRun]:
    """Every offline run under ``<save_dir>/wandb/``, oldest first (``wait_s``: see ``read_run``)."""
    return [read_run(d, wait_s) for d in sorted(Path(save_dir).glob("wandb/offline-run-*"))]
