"""Seconds per example of pAML and fAML against integrated gradients, measured in one run on the same texts.

    .venv/bin/python benchmarks/aml_speed.py --model amlx:minilm-movies --checkpoint amlx:paml-minilm-movies

The AML paper's runtime claim, checked on this machine: pAML is one forward pass of G (plus the forward pass of
F every method makes for the prediction), fAML ``steps`` fine-tuning steps per instance. Every variant
attributes the same ``--n`` movie-test sentences (after a warm-up) in ``--repeats`` interleaved rounds, so
load from other processes hits every variant alike; the figure is the median over rounds of the mean record
``seconds``. ``ratio`` = the variant's sec/example ÷ integrated gradients' sec/example. Writes
``benchmarks/results/aml-speed-<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from amlx import methods
from amlx.data import TextClassificationData
from amlx.models import ExplainedModel, resolve_device
from amlx.results import write_results


def variants(checkpoint: str, steps: int) -> dict[str, tuple[str, dict]]:
    """Row label → (method name, options)."""
    faml = {"checkpoint": checkpoint, "steps": steps, "selection": "loss"}
    return {
        "integrated_gradients": ("integrated_gradients", {}),
        "paml": ("paml", {"checkpoint": checkpoint}),
        "faml all": ("faml", {**faml, "params": "all", "parallel": 1}),
        "faml all parallel=8": ("faml", {**faml, "params": "all", "parallel": 8}),
        "faml lora": ("faml", {**faml, "params": "lora", "lr": 1e-3}),
        "faml head": ("faml", {**faml, "params": "head", "lr": 1e-3}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="amlx:minilm-movies")
    ap.add_argument("--checkpoint", default="amlx:paml-minilm-movies")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto (results of a GPU run get a '-cuda' suffix)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    model = ExplainedModel.from_pretrained(args.model).to(device)
    texts = TextClassificationData(dataset="amlx:movies", seed=0).split("test")["text"]
    configured = {label: methods.get(name, **opts) for label, (name, opts) in variants(args.checkpoint, args.steps).items()}
    for m in configured.values():
        m.attribute(texts[:2], model)  # warm-up: lazy loads, caches, first-call allocations
    rounds: dict[str, list[float]] = {label: [] for label in configured}
    for r in range(args.repeats):
        for label, m in configured.items():
            recs = m.attribute(texts[2 : 2 + args.n], model)
            rounds[label].append(float(np.mean([rec.seconds for rec in recs])))
            print(f"round {r}  {label:24s} {rounds[label][-1]:8.4f} s/example", flush=True)
    ig = float(np.median(rounds["integrated_gradients"]))
    rows = []
    for label, m in configured.items():
        sec = float(np.median(rounds[label]))
        variant = m.variant + ("" if label in ("integrated_gradients", "paml") else f" {label.split(' ', 1)[1]}")
        rows.append({"method": m.name, "variant": variant.strip(), "metric": "seconds", "mean": sec,
                     "n": args.n, "sec_per_example": sec, "ratio": sec / ig})  # fmt: skip
        print(f"{label:24s} {sec:8.4f} s/example  ratio to IG {sec / ig:.4f}")
    setup = {"explained_model": args.model, "checkpoint": args.checkpoint, "dataset": "amlx:movies",
             "split": "test", "n_examples": args.n, "steps": args.steps, "repeats": args.repeats}  # fmt: skip
    notes = (
        "ratio = sec/example ÷ integrated gradients' sec/example (50 steps, mask baseline), same run, same texts, "
        "median of interleaved rounds. fAML selection by lowest loss (no metric evaluation inside the timing); "
        "'all' tunes every parameter pAML trains, one instance after the other; 'parallel=8' vmaps 8 instances' "
        "stacked parameters; 'lora' a rank-8 adapter + head; 'head' the token head only, all instances at once. "
        "Internal batch 16 for every method."
    )
    name = "aml-speed-" + args.model.replace("amlx:", "").replace("/", "-") + ("-cuda" if device.type == "cuda" else "")
    print(write_results(name, rows, setup, command="python benchmarks/aml_speed.py " + " ".join(sys.argv[1:]),
                        notes=notes))  # fmt: skip


if __name__ == "__main__":
    main()
