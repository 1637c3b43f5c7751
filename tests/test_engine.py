"""The explain engine (amlx.jobs.engine): one method instance per run reseeded per chunk, Lightning's predict on one or
several processes, and precision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from amlx import methods
from amlx.jobs.engine import rank_file, rank_files, run_labels, seed_and_attribute
from amlx.methods.base import _REGISTRY
from amlx.methods.specs import constructor_options
from amlx.records import load_jsonl

ROOT = Path(__file__).resolve().parent.parent

# every registered method with a seed option, with options that keep it fast (and make the seed matter)
SEEDED = {
    "random": {},
    "lime": {"n_samples": 16},
    "kernel_shap": {"n_samples": 16},
    "shapley_sampling": {"n_samples": 2},
    "gradient_shap": {"n_samples": 4, "stdevs": 0.1},
    "integrated_gradients": {"baseline": "diffusion", "n_steps": 4, "n_baselines": 2, "selection": "mean"},
    "sig": {"baseline": "diffusion", "n_steps": 2, "n_baselines": 2, "selection": "mean"},
    "rpi": {"n_baselines": 2, "n_steps": 4, "selection": "mean"},
    "mp_pi": {"budget": 4, "disk_cache": False},
    "marc": {"steps": 3, "patience": None},
    "ensemble": {"members": ["random", {"name": "lime", "n_samples": 16}]},
}
MODEL_OF = {"mp_pi": ("gpt2", "decoder")}  # Progressive Inference explains a decoder
TEXTS = ["a good movie", "bad plot and bad acting", "terrible ending", "really good fun", "dull and weak",
         "a small gem"]  # fmt: skip


def test_the_seeded_methods_listed_here_are_every_registered_method_with_a_seed():
    seeded = {n for n in methods.names() if "seed" in (constructor_options(_REGISTRY[n]) or {"seed": None})}
    assert seeded == set(SEEDED)


@pytest.mark.parametrize("name", sorted(SEEDED))
@pytest.mark.parametrize("own_seed", [None, 7])
def test_one_instance_reseeded_per_chunk_gives_the_maps_of_an_instance_built_per_chunk(explained, name, own_seed):
    """What evaluate did before the engine: ``get(name, seed=seed + start)`` and ``torch.manual_seed(seed + start)``
    per chunk; the engine builds the method once and calls ``reseed``. Both give the same maps and variants."""
    model = explained(*MODEL_OF.get(name, ("bert", "encoder")))
    opts = {**SEEDED[name], **({"seed": own_seed} if own_seed is not None else {})}
    seed, chunk = 3, 2
    once = methods.get(name, **opts)
    for start in range(0, len(TEXTS), chunk):
        texts = TEXTS[start : start + chunk]
        torch.manual_seed(seed + start)
        fresh = methods.get(name, **{**opts, "seed": opts.get("seed", seed) + start}).attribute(texts, model)
        reused = seed_and_attribute(once, opts, seed, start, texts, model)
        for a, b in zip(fresh, reused, strict=True):
            np.testing.assert_array_equal(a.scores, b.scores)
            assert a.variant == b.variant
    other = methods.get(name, **{**opts, "seed": opts.get("seed", seed) + 100}).attribute(TEXTS[:2], model)
    torch.manual_seed(seed)  # the seed matters, so the check above is not vacuous
    first = methods.get(name, **{**opts, "seed": opts.get("seed", seed)}).attribute(TEXTS[:2], model)
    assert any(not np.array_equal(a.scores, b.scores) for a, b in zip(first, other))


def test_rank_files_name_rank_zero_plainly_and_find_every_rank_of_a_label_only(tmp_path):
    for label, rank in [("lime", 0), ("lime", 1), ("lime", 3), ("lime[n_samples=5]", 0), ("lime[n_samples=5]", 2)]:
        rank_file(tmp_path, label, rank).write_text("")
    assert [p.name for p in rank_files(tmp_path, "lime")] == ["lime.jsonl", "lime.rank1.jsonl", "lime.rank3.jsonl"]
    assert [p.name for p in rank_files(tmp_path, "lime[n_samples=5]")] == ["lime[n_samples=5].jsonl",
                                                                          "lime[n_samples=5].rank2.jsonl"]  # fmt: skip
    assert run_labels(tmp_path) == ["lime", "lime[n_samples=5]"]
