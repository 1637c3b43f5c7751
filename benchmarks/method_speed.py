"""Seconds per example of every registered attribution method on one explained model.

    .venv/bin/python benchmarks/method_speed.py --model amlx:minilm-movies --n 20
    .venv/bin/python benchmarks/method_speed.py --model amlx:smollm2-movies --n 20

Each method attributes the same first ``n`` movie-test sentences (``--slow-n`` for methods that make hundreds of
passes per example) after a one-example warm-up; the figure is the mean of the records' ``seconds`` (each
internal batch's wall time split over its examples). Methods that cannot explain the model (e.g. Progressive
Inference on an encoder) are listed with the reason. Besides every registered method at its defaults, the list holds
the option variants in ``VARIANTS`` (RPI-IG and RPI-SIG); ``--methods`` takes names and ``name[option=value,...]``.
Writes ``benchmarks/results/speed-<model>.{json,md}`` (``--name``: another name, for a run over some ``--methods``
that must not replace the table of every method).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import yaml

from amlx import methods
from amlx.data import TextClassificationData
from amlx.models import ExplainedModel, resolve_device
from amlx.results import write_results

SLOW = {"shapley_sampling", "integrated_gradients", "gradient_shap", "lime", "kernel_shap", "faml", "marc", "rpi", "mp_pi",
        "sig", "solvex"}  # fmt: skip
NEEDS_CHECKPOINT = {"paml", "faml"}
VARIANTS = ["integrated_gradients[baseline=diffusion]", "sig[baseline=diffusion]"]  # RPI-IG, RPI-SIG


def parse_method(item: str) -> tuple[str, dict]:
    """``name`` or ``name[option=value,...]`` (values read as YAML scalars) → (name, options)."""
    name, _, rest = item.partition("[")
    if not rest:
        return name, {}
    if not rest.endswith("]"):
        raise SystemExit(f"--methods {item!r}: write options as name[option=value,...]")
    pairs = [p.partition("=") for p in rest[:-1].split(",") if p]
    return name, {k.strip(): yaml.safe_load(v) for k, _, v in pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="amlx:minilm-movies")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--slow-n", type=int, default=5)
    ap.add_argument("--methods", nargs="*", default=None,
                    help="names or name[option=value,...]; default: every registered method, then VARIANTS")  # fmt: skip
    ap.add_argument("--checkpoint", default=None, help="pAML checkpoint for paml/faml (skipped without one)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto (results of a GPU run get a '-cuda' suffix)")
    ap.add_argument("--name", default=None,
                    help="results name (default speed-<model>[-cuda]); give one for a run over some --methods")  # fmt: skip
    args = ap.parse_args()

    device = resolve_device(args.device)
    model = ExplainedModel.from_pretrained(args.model).to(device)
    texts = TextClassificationData(dataset="amlx:movies", seed=0).split("test")["text"]
    rows, skipped = [], []
    for item in args.methods or methods.names() + VARIANTS:
        name, opts = parse_method(item)
        if name in NEEDS_CHECKPOINT:
            opts.setdefault("checkpoint", args.checkpoint)
            if not opts["checkpoint"]:
                skipped.append(f"{name}: no --checkpoint")
                continue
        n = args.slow_n if name in SLOW else args.n
        try:
            method = methods.get(name, **opts)
            method.attribute(texts[:1], model)  # warm-up (lazy loads, caches)
            recs = method.attribute(texts[1 : n + 1], model)
        except (ValueError, NotImplementedError) as err:
            skipped.append(f"{item}: {err}")
            continue
        sec = float(np.mean([r.seconds for r in recs]))
        print(f"{item:24s} {sec:8.4f} s/example (n={len(recs)})", flush=True)
        rows.append({"method": name, "variant": method.variant, "metric": "seconds", "mean": sec, "n": len(recs),
                     "sec_per_example": sec})  # fmt: skip
    setup = {"explained_model": args.model, "kind": model.kind, "dataset": "amlx:movies", "split": "test",
             "n_examples": args.n, "slow_n": args.slow_n}  # fmt: skip
    notes = "Default options of every method. Not measured: " + ("; ".join(skipped) if skipped else "none") + "."
    name = args.name or "speed-" + args.model.replace("amlx:", "").replace("/", "-") + ("-cuda" if device.type == "cuda" else "")
    path = write_results(name, rows, setup, command="python benchmarks/method_speed.py " + " ".join(sys.argv[1:]),
                         notes=notes)  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
