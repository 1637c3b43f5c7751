"""Where each method puts its top-k% tokens on a decoder classifier, next to its log-odds: the read-out token check.

    .venv/bin/python benchmarks/readout_token.py outputs/evaluate/aml-minilm-smollm2-log-odds --name NAME

A decoder classifier (``*ForSequenceClassification`` on SmolLM2 / Llama / Mistral) reads its prediction from the
hidden state of the *last* token. Replacing that token by the mask token (log-odds' perturbation) changes the
read-out position's input itself, so it moves the prediction far more than masking any other single token. This
script reads an ``explain.py evaluate`` output folder (``attributions/<label>.jsonl``, ``scores/<label>.jsonl`` and
``table.json``'s setup) and, per method, reports beside the evaluation's own log-odds mean and 95% interval:

- ``last_in_top``: share of examples whose last attributable token is among the method's top ⌊n·k/100⌋ tokens
  (the log-odds protocol's units, floor rounding, ties broken by position like ``amlx.metrics``),
- ``top_rel_position``: mean relative position (0 = first token, 1 = last) of those top tokens.

A uniform random ranking puts the last token in the top k% about k% of the time (less for short texts, where
⌊n·k/100⌋ rounds down). Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from amlx.jobs.evaluate import summarize
from amlx.results import write_results


def positions(path: Path, percent: float) -> tuple[float, float, int]:
    """(share of records with the last attributable token in their top-k%, mean relative top position, records)."""
    hits, rel, n = 0, [], 0
    for line in path.open():
        rec = json.loads(line)
        idx = np.flatnonzero(np.asarray(rec["attributable"], dtype=bool))
        if len(idx) == 0:
            continue
        n += 1
        k = int(np.floor(round(len(idx) * percent / 100, 9)))
        if k == 0:
            continue
        scores = np.asarray(rec["scores"], dtype=float)[idx]
        top = np.argsort(-scores, kind="stable")[:k]  # ties: earlier position first, as amlx.metrics ranks
        hits += int(len(idx) - 1 in top)
        rel.extend(top / max(len(idx) - 1, 1))
    return hits / max(n, 1), float(np.mean(rel)) if rel else float("nan"), n


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="an `explain.py evaluate` output folder")
    ap.add_argument("--name", required=True, help="results name (benchmarks/results/<name>.json)")
    ap.add_argument("--metric", default="log_odds", help="the table's metric shown beside the positions")
    ap.add_argument("--percent", type=float, default=20.0, help="k of the top-k%% (log-odds: 20)")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    table = json.loads((out / "table.json").read_text())
    rows = []
    for path in sorted((out / "attributions").glob("*.jsonl")):
        label = path.stem  # the evaluate job's label of the method (alias, or name with options)
        scores = out / "scores" / path.name
        values = [json.loads(line)[args.metric] for line in scores.open()] if scores.is_file() else []
        if not values:
            raise ValueError(f"{scores} holds no {args.metric!r} values; evaluate with that metric first")
        first = json.loads(path.open().readline())
        share, rel, n = positions(path, args.percent)
        mean, ci = summarize(values)
        rows.append({"method": first["method"], "variant": label, "metric": args.metric, "mean": mean, "ci95": ci,
                     "n": len(values), "last_in_top": round(share, 4), "top_rel_position": round(rel, 4)})  # fmt: skip
    from amlx.metrics import direction

    return write_results(
        args.name, rows, {**table["setup"], "top_percent": args.percent},
        command="python benchmarks/readout_token.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        notes=(f"Attributions and per-example {args.metric} from `{table['command']}`. last_in_top: share of examples whose last attributable token (the one a decoder classifier reads "
               f"its prediction from) is in the method's top {args.percent:g}% tokens; top_rel_position: mean "
               "relative position of those tokens (0 first, 1 last). mean/ci95: the evaluation's own "
               f"{args.metric}."),
        direction=direction,
    )  # fmt: skip


if __name__ == "__main__":
    print(main())
