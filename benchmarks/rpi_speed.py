"""RPI's batched path integral against one interpolant at a time, on the same examples and baselines, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rpi_speed.py --n 3

For each of the first ``n`` movie-test sentences (after a one-example warm-up) the R·n candidate-map computation
(Eqs. 3–4, last layer) runs three ways, interleaved per example so that machine load hits all alike: the plain
reference of tests/test_rpi.py (each interpolant alone through the full model), the batched ``path_integral``
without reusing the lower blocks, and the default batched ``path_integral`` (blocks below the layer computed once).
Selection is left out (it is the same for all three). Figures: seconds per example, ``ratio`` = reference / batched,
and the largest difference between the reference's and the batched maps. Writes
``benchmarks/results/rpi-speed-minilm.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.test_rpi holds the reference

from amlx.data import TextClassificationData  # noqa: E402
from amlx.methods.attention import prediction_rows  # noqa: E402
from amlx.methods.diffusion import alpha_bar, sample_baselines  # noqa: E402
from amlx.methods.rpi import capture, path_integral, resolve_layers  # noqa: E402
from amlx.models import ExplainedModel  # noqa: E402
from amlx.results import write_results  # noqa: E402
from tests.test_rpi import reference_maps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="amlx:minilm-movies")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--n-baselines", type=int, default=24)
    ap.add_argument("--n-steps", type=int, default=30)
    ap.add_argument("--rows-per-pass", type=int, default=120)
    args = ap.parse_args()

    model = ExplainedModel.from_pretrained(args.model)
    texts = TextClassificationData(dataset="amlx:movies", seed=0).split("test")["text"][: args.n + 1]
    layer = resolve_layers(model, [-1])[0]
    gen = torch.Generator().manual_seed(0)
    ab = alpha_bar()
    times = {"reference": [], "batched, no block reuse": [], "batched": []}
    max_diff, lengths = 0.0, []
    for i, text in enumerate(texts):
        enc = model.encode([text])
        with torch.no_grad():
            target = model.probs(enc.input_ids, enc.attention_mask).argmax(-1)
        cap, cap_full = capture(model, enc, [layer]), capture(model, enc, [layer], reuse_prefix=False)
        base = sample_baselines(cap.probs[layer], cap.allowed[layer], args.n_baselines, ab, "sqrt", gen)
        out = {}
        for name in times:
            t0 = time.perf_counter()
            if name == "reference":
                row = int(prediction_rows(enc, model.kind)[0])
                out[name] = reference_maps(model, text, int(target[0]), layer, base[0], args.n_steps)[:, row]
            else:
                c = cap if name == "batched" else cap_full
                out[name] = path_integral(model, enc, target, c, layer, base, args.n_steps,
                                          rows_per_pass=args.rows_per_pass)[0]  # fmt: skip
            if i > 0:  # example 0 is the warm-up
                times[name].append(time.perf_counter() - t0)
        if i > 0:
            lengths.append(enc.input_ids.shape[1])
            for name in ("batched, no block reuse", "batched"):
                max_diff = max(max_diff, float((out[name] - out["reference"]).abs().max()))
        print(f"example {i}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v and i > 0), flush=True)

    ref = sum(times["reference"]) / len(times["reference"])
    rows = []
    for name, ts in times.items():
        sec = sum(ts) / len(ts)
        row = {"method": "rpi", "variant": f"{name} (R{args.n_baselines}n{args.n_steps}, last layer)",
               "metric": "seconds", "mean": sec, "n": len(ts), "sec_per_example": sec}  # fmt: skip
        if name != "reference":
            row["ratio"] = ref / sec
        rows.append(row)
        print(f"{name:26s} {sec:8.3f} s/example" + (f"  ratio {ref / sec:.1f}x" if name != "reference" else ""))
    setup = {"explained_model": args.model, "dataset": "amlx:movies", "split": "test", "n_examples": len(lengths),
             "tokens_per_example": lengths, "n_baselines": args.n_baselines, "n_steps": args.n_steps,
             "rows_per_pass": args.rows_per_pass, "torch_threads": torch.get_num_threads(),
             "max_abs_diff_vs_reference": max_diff}  # fmt: skip
    notes = ("Candidate maps of one layer (no selection) for the same baselines. reference: one interpolant per "
             "forward + backward pass through the full model (tests/test_rpi.py::reference_maps). ratio = reference "
             "seconds / this row's seconds, measured in the same run, interleaved per example. "
             "max_abs_diff_vs_reference: largest |batched − reference| map entry.")  # fmt: skip
    path = write_results("rpi-speed-minilm", rows, setup,
                         command="python benchmarks/rpi_speed.py " + " ".join(sys.argv[1:]), notes=notes)  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
