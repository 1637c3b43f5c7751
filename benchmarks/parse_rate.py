"""How the LLM self-explanations of an evaluate run parsed (``llm_explanation``'s record metadata).

    .venv/bin/python benchmarks/parse_rate.py outputs/evaluate/llm-explanation-smollm2-movies \
        --name llm-explanation-smollm2-movies-parse

Reads ``<out_dir>/attributions/<label>.jsonl`` (default label ``llm_explanation``) and writes
``benchmarks/results/<name>.{json,md}``: the parse rate (share of answers that ranked at least one word, the
complement of the fallback "every word ties at 0"), the shares of full / partial / unparsed answers, and the mean share
of the text's words an answer ranked.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from amlx.methods.llm_explanation import parse_rate
from amlx.records import load_jsonl
from amlx.results import write_results


def parse_rows(records: list, label: str = "llm_explanation") -> list[dict]:
    """One row per figure, each a share over the records (``n`` = number of records)."""
    n = len(records)
    if not n or any("llm_parse" not in r.meta for r in records):
        raise SystemExit("these records carry no llm_parse metadata: give the folder of an evaluate run of llm_explanation")
    status = collections.Counter(r.meta["llm_parse"] for r in records)
    coverage = [r.meta["llm_ranked_words"] / max(r.meta["llm_words"], 1) for r in records]
    row = {"method": records[0].method, "variant": records[0].variant, "n": n, "label": label}
    figures = {"parse_rate": parse_rate(records), "parse_full": status["full"] / n, "parse_partial": status["partial"] / n,
               "parse_none": status["none"] / n, "ranked_word_share": float(np.mean(coverage))}  # fmt: skip
    return [{**row, "metric": k, "mean": float(v)} for k, v in figures.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--label", default="llm_explanation")
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    path = Path(args.out_dir) / "attributions" / f"{args.label}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run explain.py evaluate with llm_explanation first")
    records = load_jsonl(path)
    rows = parse_rows(records, args.label)
    notes = ("parse_rate: share of answers that ranked at least one word of the text (the rest fall back to every word "
             "tied at 0, amlx/methods/llm_explanation.py); full: every word ranked; partial: some; none: no word; "
             "ranked_word_share: mean share of the text's words an answer ranked.")  # fmt: skip
    write_results(args.name, rows, {"attributions": str(path), "n_examples": len(records)}, notes=notes)
    print((Path("benchmarks/results") / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
