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
from amlx.jobs.engine import seed_and_attribute
from amlx.jobs.run_files import rank_file, rank_files, run_labels
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


@pytest.fixture(scope="module")
def run_setup(tmp_path_factory):
    """A saved tiny encoder, 96 labelled texts (70 in test) and the evaluate options of the distributed tests."""
    from tests.tiny import CORPUS, tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("engine")
    tok = tiny_tokenizer("bert")
    tiny_model("bert", "encoder", tok).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(list(CORPUS) * 3)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # 66 examples in chunks of 8: 9 chunks, an odd number, so a padding sampler would give one rank a duplicate
    kw = {"model": str(root / "model"), "dataset": str(root / "data.jsonl"), "split": "test", "n": 66,
          "chunk_size": 8, "seed": 0, "progress": False, "metrics": ["comp", "suff", "aopc_comp"],
          "methods": ["random", "occlusion", "marc", "ens=ensemble"],
          "method_options": {"marc": {"steps": 2, "patience": None}, "ens": {"members": ["random", "occlusion"]}},
          "data": {"test_size": 70, "val_size": 10}}  # fmt: skip
    return root, kw


def _table(out: Path) -> dict:
    return {(r["method"], r["metric"]): (r["mean"], r["ci95"]) for r in json.loads((out / "table.json").read_text())["rows"]}


def _records(out: Path, label: str) -> list:
    return [r for path in rank_files(out / "attributions", label) for r in load_jsonl(path)]


def _two_cpu_processes(root: Path, job: str, config: Path, out_dir: Path) -> subprocess.CompletedProcess:
    """``explain.py <job> --config <config>`` on 2 CPU processes (DDP, gloo), this checkout's code first on the path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(ROOT / "explain.py"), job, "--config", str(config), "--out_dir", str(out_dir),
         "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"],
        env=env, cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_two_ddp_processes_write_the_table_and_records_of_one_process(run_setup, monkeypatch):
    """``explain.py evaluate --trainer.devices 2 --trainer.strategy ddp`` (gloo on the CPU): each rank commits whole
    chunks to its own files, no example is lost or duplicated, the ensemble reuses its members' records from both
    ranks' files, the table equals one process's to 1e-6, and a one-process resume finds every chunk done."""
    from amlx.jobs.evaluate import evaluate

    root, kw = run_setup
    one = evaluate(out_dir=str(root / "one"), **kw)
    config = root / "evaluate.yaml"
    config.write_text(json.dumps(kw))  # JSON is YAML
    proc = _two_cpu_processes(root, "evaluate", config, root / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = root / "two"
    want = _table(root / "one")
    assert set(_table(two)) == set(want)
    for key, (mean, ci) in _table(two).items():
        assert mean == pytest.approx(want[key][0], abs=1e-6) and ci == pytest.approx(want[key][1], abs=1e-6)
    for label in one["per_example"]:
        assert [p.name for p in rank_files(two / "scores", label)] == [f"{label}.jsonl", f"{label}.rank1.jsonl"]
        chunks = [{tuple(json.loads(line)["chunk"]) for line in p.read_text().splitlines()}
                  for p in rank_files(two / "scores", label)]  # fmt: skip
        assert all(chunks) and not chunks[0] & chunks[1]  # both ranks worked, on different chunks
        assert sorted(chunks[0] | chunks[1]) == [(s, min(s + 8, 66)) for s in range(0, 66, 8)]
        recs = _records(two, label)
        assert sorted(r.example_id for r in recs) == sorted(str(i) for i in range(66))  # none lost or duplicated
        single = {r.example_id: r for r in load_jsonl(root / "one" / "attributions" / f"{label}.jsonl")}
        for r in recs:
            np.testing.assert_allclose(r.scores, single[r.example_id].scores, atol=1e-6)
            assert r.tokens == single[r.example_id].tokens and r.target == single[r.example_id].target
    for r in _records(two, "ens"):
        assert r.meta["reused"] == [True, True]

    from amlx.methods.base import AttributionMethod
    from amlx.report import load_run

    calls = []
    monkeypatch.setattr(AttributionMethod, "attribute", lambda *a, **k: calls.append(a))
    again = evaluate(out_dir=str(two), **kw)  # chunks committed in either rank's file are not recomputed
    assert calls == [] and {(r["method"], r["metric"]): r["mean"] for r in again["rows"]} == pytest.approx(
        {key: mean for key, (mean, _) in want.items()}, abs=1e-6)  # fmt: skip

    run = load_run(two)  # the report reads every rank's files under one label
    assert sorted(run.labels) == sorted(one["per_example"])
    assert all(len(run.records[label]) == len(run.scores[label]) == 66 for label in run.labels)


def test_bf16_mixed_precision_forward_passes_stay_near_fp32(run_setup):
    """``trainer: {precision: bf16-mixed}`` on the CPU: the explained model's probabilities (each record's ``probs``,
    one forward pass under autocast) are within ``BF16_PROB_TOL`` of fp32, and the tables of random and occlusion
    within ``BF16_TABLE_TOL``: the tolerances measured here, documented in docs/evaluation.md."""
    from amlx.jobs.evaluate import evaluate

    root, kw = run_setup
    kw = {**kw, "n": 32, "methods": ["random", "occlusion"], "method_options": None}
    fp32 = evaluate(out_dir=str(root / "fp32"), **kw)
    bf16 = evaluate(out_dir=str(root / "bf16"), trainer={"precision": "bf16-mixed", "accelerator": "cpu"}, **kw)
    for method in kw["methods"]:
        a = load_jsonl(root / "fp32" / "attributions" / f"{method}.jsonl")
        b = load_jsonl(root / "bf16" / "attributions" / f"{method}.jsonl")
        prob = max(float(np.abs(x.probs - y.probs).max()) for x, y in zip(a, b, strict=True))
        ta = {r["metric"]: r["mean"] for r in fp32["rows"] if r["method"] == method}
        tb = {r["metric"]: r["mean"] for r in bf16["rows"] if r["method"] == method}
        table = max(abs(ta[m] - tb[m]) for m in ta)
        flips = sum(x.target != y.target for x, y in zip(a, b))
        print(f"bf16-mixed vs fp32, {method}: probs {prob:.4f}, table {table:.4f}, {flips} target flips")
        assert 0 < prob < BF16_PROB_TOL  # > 0: autocast really ran in bf16
        assert table < BF16_TABLE_TOL


BF16_PROB_TOL = 0.02
BF16_TABLE_TOL = 0.05


def test_explain_shards_on_chunk_boundaries_give_the_seeded_maps_of_the_unsharded_run(run_setup, tmp_path):
    """``explain.py explain --start``: each chunk is reseeded by the dataset row of its first text, so a shard that
    starts on a chunk boundary draws what the unsharded run drew (random's maps, not only occlusion's)."""
    from amlx.jobs.explain import explain

    root, kw = run_setup
    common = dict(model=kw["model"], methods=["random", "lime"], method_options={"lime": {"n_samples": 16}},
                  dataset=kw["dataset"], split="test", data=kw["data"], html=False, terminal=False, chunk_size=3)  # fmt: skip
    whole = explain(**common, n=9, out_dir=str(tmp_path / "whole"))
    shards = explain(**common, n=3, out_dir=str(tmp_path / "a")) + explain(**common, n=6, start=3,
                                                                            out_dir=str(tmp_path / "b"))  # fmt: skip
    got = {(r.method, r.example_id): r for r in shards}
    assert len(got) == len(whole) == 18
    for r in whole:
        np.testing.assert_array_equal(got[r.method, r.example_id].scores, r.scores)


def test_an_unknown_trainer_option_is_refused_before_the_model_loads_with_the_valid_ones():
    from amlx.jobs.engine import TrainerOptionsError
    from amlx.jobs.evaluate import evaluate

    with pytest.raises(TrainerOptionsError, match="unknown trainer options \\['device'\\].*devices, strategy"):
        evaluate(model="(never loaded)", methods=["random"], trainer={"device": 2})


def test_two_ddp_processes_explain_the_records_of_one_process_and_train_reads_both_rank_files(run_setup):
    """``explain.py explain --trainer.devices 2 --trainer.strategy ddp`` (gloo): rank 0 writes ``attributions.jsonl``,
    rank 1 ``attributions.rank1.jsonl``; together they hold every (method, example) once with one process's maps,
    and a teacher named by rank 0's file is read from both (every train row keeps its map)."""
    from amlx.data import TextClassificationData
    from amlx.jobs.explain import explain

    root, kw = run_setup
    common = dict(model=kw["model"], methods=["occlusion", "random"], dataset=kw["dataset"], split="train", n=16,
                  data=kw["data"], chunk_size=3)  # the whole train split (16 rows), in 6 chunks  # fmt: skip
    one = explain(**common, html=False, terminal=False, out_dir=str(root / "explain-one"))
    config = root / "explain.yaml"
    config.write_text(json.dumps({**common, "html": True, "terminal": False}))
    proc = _two_cpu_processes(root, "explain", config, root / "explain-two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = root / "explain-two"
    files = rank_files(two, "attributions")
    assert [p.name for p in files] == ["attributions.jsonl", "attributions.rank1.jsonl"]
    per_rank = [load_jsonl(p) for p in files]
    assert all(per_rank)  # both ranks explained
    got = [(r.method, r.example_id) for recs in per_rank for r in recs]
    assert sorted(got) == sorted((r.method, r.example_id) for r in one) and len(set(got)) == len(got) == 32
    single = {(r.method, r.example_id): r for r in one}
    for r in (r for recs in per_rank for r in recs):
        np.testing.assert_allclose(r.scores, single[r.method, r.example_id].scores, atol=1e-6)
    assert (two / "attributions.html").exists()  # rank 0 renders

    def teacher_rows(folder):
        dm = TextClassificationData(dataset=kw["dataset"], seed=0, teacher=str(folder / "attributions.jsonl"),
                                    teacher_method="occlusion", **kw["data"])  # fmt: skip
        dm.setup()
        return dm.split("train")["index"]

    assert teacher_rows(two) == teacher_rows(root / "explain-one") == list(range(16))
