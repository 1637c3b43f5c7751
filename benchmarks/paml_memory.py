"""Peak memory of pAML training against a frozen explained model in fp32 / bf16, with and without gradient checkpointing.

    .venv/bin/python benchmarks/paml_memory.py --explained amlx:smollm2-movies --steps 20 --batch-size 8

Each setting trains a fresh MiniLM attributor (``AMLAttributor``, the paper's λ_p = λ_a = λ_inv = 1, seed 0, the same
first ``steps × batch_size`` train sentences in the same order) for ``steps`` optimizer steps under Lightning, in its
own subprocess so that its memory is its own. The explained model is loaded with
``explained_options: {dtype: ..., gradient_checkpointing: ...}`` (the YAML of a pAML config takes the same options).
Recorded per setting: the peak resident set size while training (CPU: /proc/self/statm sampled every 2 ms; CUDA:
``torch.cuda.max_memory_allocated``), the same above the resident size right before training (what the batches
add: activations, gradients, optimizer state), seconds per step, and every step's loss; the loss curves of bf16
are compared with fp32's (max relative difference over the steps). Writes
``benchmarks/results/<name>.{json,md}`` (default ``paml-memory-<model>``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

SETTINGS = {"fp32": ("float32", False), "fp32+ckpt": ("float32", True), "bf16": ("bfloat16", False),
            "bf16+ckpt": ("bfloat16", True)}  # fmt: skip


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler(threading.Thread):
    def __init__(self, every: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.every, self.peak, self.stop = every, _rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.every)


def child(args: argparse.Namespace) -> None:
    """One setting: train, print one JSON line with the figures."""
    import lightning.pytorch as L
    import torch

    from amlx.attributors import AMLAttributor
    from amlx.data import TextClassificationData

    dtype, ckpt = SETTINGS[args.setting]
    L.seed_everything(0, verbose=False)
    att = AMLAttributor(explained=args.explained, backbone=args.backbone,
                        explained_options={"dtype": dtype, "gradient_checkpointing": ckpt})  # fmt: skip
    dm = TextClassificationData(dataset="amlx:movies", val_size=500, test_size=2000, seed=0,
                                max_train_examples=args.steps * args.batch_size, batch_size=args.batch_size)  # fmt: skip
    losses: list[float] = []
    times: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, *a) -> None:
            times.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            times[-1] = time.perf_counter() - times[-1]
            losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    cuda = torch.cuda.is_available() and args.device != "cpu"
    trainer = L.Trainer(max_steps=args.steps, accelerator="gpu" if cuda else "cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Record()])  # fmt: skip
    _ = att.explained  # loaded before the baseline is taken
    before = _rss_bytes()
    sampler = _PeakSampler()
    sampler.start()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(att, datamodule=dm)
    sampler.stop.set()
    sampler.join()
    peak = torch.cuda.max_memory_allocated() if cuda else sampler.peak
    base = 0 if cuda else before
    print("RESULT " + json.dumps({"setting": args.setting, "peak_mb": peak / 2**20, "added_mb": (peak - base) / 2**20,
                                  "sec_per_step": sum(times[1:]) / max(len(times) - 1, 1), "losses": losses}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--explained", default="amlx:smollm2-movies")
    ap.add_argument("--backbone", default="amlx:minilm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (results of a GPU run get a '-cuda' suffix)")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--name", default=None)
    ap.add_argument("--note", default="", help="appended to the results' notes (e.g. what the explained model is)")
    ap.add_argument("--setting", help=argparse.SUPPRESS)  # the child's one setting
    args = ap.parse_args()
    if args.setting:
        return child(args)

    from amlx.results import write_results

    results = {}
    for setting in args.settings:
        cmd = [sys.executable, __file__, "--setting", setting, "--explained", args.explained, "--backbone",
               args.backbone, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--device", args.device]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if out.returncode or line is None:
            raise SystemExit(f"{setting} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        results[setting] = json.loads(line[len("RESULT ") :])
        print(setting, {k: v for k, v in results[setting].items() if k != "losses"}, flush=True)
    ref = results.get("fp32", {}).get("losses")
    rows = []
    for setting, r in results.items():
        rel = None
        if ref and setting != "fp32":
            rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(r["losses"], ref))
        for metric, value in (("peak_mb", r["peak_mb"]), ("added_mb", r["added_mb"]), ("seconds", r["sec_per_step"])):
            rows.append({"method": "paml_train", "variant": setting, "metric": metric, "mean": value, "n": args.steps,
                         **({"loss_max_rel_diff_vs_fp32": rel} if rel is not None else {})})  # fmt: skip
    setup = {"explained_model": args.explained, "backbone": args.backbone, "steps": args.steps,
             "batch_size": args.batch_size, "device": args.device, "losses": {s: r["losses"] for s, r in results.items()}}  # fmt: skip
    what = "max_memory_allocated" if args.device != "cpu" else "peak RSS while training (sampled every 2 ms)"
    notes = (f"peak_mb: {what}; added_mb: the same minus the resident size right before training (CPU); seconds: per "
             "optimizer step (the first step excluded); loss_max_rel_diff_vs_fp32: max over the steps of "
             "|loss − loss_fp32| / |loss_fp32|, same data, same seed. Every setting ran in its own process. "
             + args.note).strip()  # fmt: skip
    model = args.explained.removeprefix("amlx:").replace("/", "-")
    name = args.name or f"paml-memory-{model}" + ("-cuda" if args.device != "cpu" else "")
    write_results(name, rows, setup, notes=notes)


if __name__ == "__main__":
    main()
