"""Speed of amlx's batched evaluation vs. one example at a time vs. ferret-xai, on the same attributions.

    .venv/bin/python benchmarks/eval_speed.py [--n 1000] [--ferret-n 1000]

Attributions: Gradient×Input of the default classifier (``amlx:minilm-movies``) on the first ``n`` movie-test
examples (not timed). Timed, in one run and one after another (never concurrently), with the same torch thread
count: (1) amlx's batched ``Evaluator`` on the five AML metrics (suff, comp, log-odds, AOPC-suff, AOPC-comp);
(2) amlx batched on AOPC-comp + AOPC-suff only, the pair ferret computes; (3) amlx's one-example-at-a-time
reference path on a subset (its values are also compared with the batched ones); (4) ferret 0.4.2's AOPC
evaluators (subprocess in its own venv, ``benchmarks/setup_ferret.sh``). ferret defines AOPC differently
(see benchmarks/ferret_runner.py), so only timings are compared, never values across libraries.
Writes ``benchmarks/results/eval-speed-minilm.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from amlx import assets
from amlx.data import TextClassificationData
from amlx.evaluation import DEFAULT_METRICS, Evaluator
from amlx.methods import get as get_method
from amlx.models import ExplainedModel
from amlx.results import write_results

HERE = Path(__file__).resolve().parent
FERRET_PY = HERE / "peers" / "ferret-venv" / "bin" / "python"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="amlx:minilm-movies")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--one-by-one-n", type=int, default=100)
    ap.add_argument("--ferret-n", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--name", default="eval-speed-minilm")
    args = ap.parse_args()

    threads = torch.get_num_threads()
    model = ExplainedModel.from_pretrained(args.model)
    texts = TextClassificationData(dataset="amlx:movies", seed=0).split("test")["text"][: args.n]
    records = get_method("gradient_x_input", internal_batch_size=64).attribute(texts, model)

    five = Evaluator(model, DEFAULT_METRICS, max_tokens=args.max_tokens)
    aopc = Evaluator(model, ["aopc_comp", "aopc_suff"], max_tokens=args.max_tokens)
    five.evaluate(records[:8])  # warm-up
    vals, t_five = timed(lambda: five.evaluate(records))
    stats_five = dict(five.stats)
    _, t_aopc = timed(lambda: aopc.evaluate(records))
    sub = records[: args.one_by_one_n]
    ref, t_ref = timed(lambda: five.evaluate_one_by_one(sub))
    max_diff = max(float(np.max(np.abs(ref[m] - vals[m][: len(sub)]))) for m in ref)

    rows = [
        {"method": "amlx", "variant": "batched, 5 AML metrics", "metric": "seconds", "mean": t_five,
         "n": len(records), "sec_per_example": t_five / len(records)},
        {"method": "amlx", "variant": "batched, aopc_comp+aopc_suff", "metric": "seconds", "mean": t_aopc,
         "n": len(records), "sec_per_example": t_aopc / len(records)},
        {"method": "amlx", "variant": "one-by-one, 5 AML metrics", "metric": "seconds", "mean": t_ref,
         "n": len(sub), "sec_per_example": t_ref / len(sub),
         "ratio": (t_ref / len(sub)) / (t_five / len(records))},
    ]  # fmt: skip
    notes = [
        f"Batched vs one-by-one values on the first {len(sub)} examples: max |diff| = {max_diff:.2e}.",
        f"Batched pass: {stats_five}. torch threads {threads}; load average before run "
        f"{os.getloadavg()[0]:.2f}.",
        "ratio on the one-by-one row = its sec/example ÷ amlx batched (5 metrics) sec/example.",
    ]

    if FERRET_PY.exists() and args.ferret_n > 0:
        # ferret needs a plain HF folder and its own tokenization ([CLS] ... [SEP], no padding): our records
        # hold exactly the tokenizer's ids with specials, so tokens/scores carry over one to one.
        fsub = records[: args.ferret_n]
        with tempfile.TemporaryDirectory() as tmp:
            payload = {
                "model_dir": assets.resolve(args.model),
                "examples": [{"text": r.text, "tokens": r.tokens, "scores": r.scores.tolist(), "target": r.target}
                             for r in fsub],
            }  # fmt: skip
            inp, outp = Path(tmp) / "in.json", Path(tmp) / "out.json"
            inp.write_text(json.dumps(payload))
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run([str(FERRET_PY), str(HERE / "ferret_runner.py"), str(inp), str(outp)],
                                  env=env, capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"ferret runner failed:\n{proc.stderr[-3000:]}")
            fr = json.loads(outp.read_text())
        amlx_pair = t_aopc / len(records)
        rows.append({"method": f"ferret-{fr['ferret_version']}", "variant": "AOPC comp+suff evaluators",
                     "metric": "seconds", "mean": fr["seconds_total"], "n": fr["n"],
                     "sec_per_example": fr["sec_per_example"], "ratio": fr["sec_per_example"] / amlx_pair})  # fmt: skip
        notes.append(
            "ratio on the ferret row = ferret sec/example ÷ amlx batched sec/example for the same pair of metrics "
            "(aopc_comp + aopc_suff). ferret's AOPC uses 10 thresholds 10..100% of positive-scored tokens and "
            "re-tokenizes decoded text; amlx's uses {1,5,10,20,50}% (docs/evaluation.md): timings only."
        )
    else:
        notes.append("ferret not installed (bash benchmarks/setup_ferret.sh): no peer timing in this run.")

    setup = {"explained_model": args.model, "dataset": "amlx:movies", "split": "test", "n_examples": len(records),
             "attributions": "gradient_x_input", "metrics": list(DEFAULT_METRICS), "max_tokens": args.max_tokens,
             "torch_threads": threads}  # fmt: skip
    cmd = "python benchmarks/eval_speed.py " + " ".join(sys.argv[1:])
    path = write_results(args.name, rows, setup, command=cmd.strip(), notes=" ".join(notes))
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
