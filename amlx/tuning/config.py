"""Fit configs as plain dicts: dotted-path overrides, a trial's config and the best configuration's YAML.

A tuning study starts from a ``train.py fit`` YAML (``fit_config``) and edits it with dotted paths such as
``trainer.max_epochs`` or ``data.init_args.max_train_examples``. Inside a list (``trainer.callbacks``,
``trainer.logger``) a path segment is an index (``trainer.callbacks.0``), or the class name of the items it
selects (``trainer.callbacks.MetricValidation.init_args.n_examples`` sets it on every ``MetricValidation``).
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import yaml


def load_yaml(path: str | Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _select(items: list, segment: str) -> list:
    """The items of a list that ``segment`` names: one by index, or every item whose class name it is."""
    if segment.lstrip("-").isdigit():
        return [items[int(segment)]]
    found = [x for x in items if isinstance(x, dict) and str(x.get("class_path", "")).split(".")[-1] == segment]
    if not found:
        names = [str(x.get("class_path", x)) if isinstance(x, dict) else repr(x) for x in items]
        raise KeyError(f"no item of class {segment!r} in the list {names}")
    return found


def set_path(config: dict, path: str, value: Any) -> None:
    """Set ``value`` at the dotted ``path`` of ``config`` in place (missing dict levels are created)."""
    *parents, last = path.split(".")
    nodes: list = [config]
    for seg in parents:
        nxt = []
        for node in nodes:
            if isinstance(node, list):
                nxt += _select(node, seg)
            else:
                if node.get(seg) is None:
                    node[seg] = {}
                nxt.append(node[seg])
        nodes = nxt
    for node in nodes:
        if isinstance(node, list):
            chosen = [id(x) for x in _select(node, last)]
            node[:] = [copy.deepcopy(value) if id(x) in chosen else x for x in node]
        else:
            node[last] = copy.deepcopy(value)


def get_path(config: dict, path: str) -> Any:
    """The value at a dotted ``path`` (the first match when a class name selects several list items)."""
    node: Any = config
    for seg in path.split("."):
        node = _select(node, seg)[0] if isinstance(node, list) else node[seg]
    return node


def apply(config: dict, overrides: dict[str, Any]) -> dict:
    """A copy of ``config`` with every dotted override set, in order."""
    out = copy.deepcopy(config)
    for path, value in (overrides or {}).items():
        set_path(out, path, value)
    return out


def _callbacks(config: dict) -> list[dict]:
    callbacks = config.get("trainer", {}).get("callbacks") or []
    return callbacks if isinstance(callbacks, list) else [callbacks]


def _is_checkpoint(class_path: str) -> bool:
    # imported here: a tuning worker imports Lightning for its fits only
    from lightning.pytorch.callbacks import ModelCheckpoint

    module, _, name = class_path.rpartition(".")
    try:
        return issubclass(getattr(importlib.import_module(module), name), ModelCheckpoint)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def for_metric(config: dict, metric: str) -> dict:
    """A copy in which every callback with a ``metric`` argument (``amlx.callbacks``) uses ``metric``."""
    out = copy.deepcopy(config)
    for cb in _callbacks(out):
        if isinstance(cb, dict) and "metric" in (cb.get("init_args") or {}):
            cb["init_args"]["metric"] = metric
    return out


def without_checkpoints(config: dict) -> dict:
    """A copy with no checkpointing: ``ModelCheckpoint`` callbacks (and their ``export_to``) removed, none by default."""
    out = copy.deepcopy(config)
    trainer = out.setdefault("trainer", {})
    keep = [cb for cb in _callbacks(out) if not (isinstance(cb, dict) and _is_checkpoint(str(cb.get("class_path"))))]
    trainer["callbacks"] = keep
    trainer["enable_checkpointing"] = False
    return out


def write_yaml(path: str | Path, config: dict, header: str = "") -> Path:
    """Write ``config`` as YAML (``header`` lines become comments); atomic, so workers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(comments + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110))
    tmp.replace(path)
    return path
