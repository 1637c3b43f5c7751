"""Time ferret-xai's AOPC comprehensiveness / sufficiency evaluators on given attributions (peer benchmark).

Runs INSIDE the ferret virtualenv built by ``benchmarks/setup_ferret.sh`` (``benchmarks/peers/ferret-venv``,
ferret-xai 0.4.2, transformers<5, torch 2.13.0+cpu); it never imports amlx. A comparison script calls it as
a subprocess::

    benchmarks/peers/ferret-venv/bin/python benchmarks/ferret_runner.py in.json out.json

``in.json``: ``{"model_dir": <saved HF sequence-classification folder>, "examples": [{"text": str,
"tokens": [str, ...], "scores": [float, ...], "target": int}, ...]}``. ``tokens``/``scores`` must follow
ferret's own tokenization of ``text`` (``ModelHelper.get_tokens``: the tokenizer with ``truncation=True``,
special tokens included, e.g. ``[CLS] ... [SEP]``), which is how ferret's explainers build
``Explanation.tokens``. The runner re-tokenizes every text with that helper and exits with an error if the
token count differs from ``len(scores)`` (or from ``len(tokens)``); if only the token strings differ it warns
on stderr and uses ferret's tokens. ``out.json``: ``{"n", "seconds_total", "sec_per_example", "aopc_comp":
[...], "aopc_suff": [...], "ferret_version", ...}`` (plus torch/transformers versions and the thread count).
Timing covers only the loop of evaluator calls (``time.perf_counter``), after the model load, tokenizer
checks and one untimed warm-up pass over the first example. Torch threads: ``torch.set_num_threads`` from
``OMP_NUM_THREADS`` when set. Hub access is disabled (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` default 1).

ferret's AOPC definition (read from ferret 0.4.2, ``ferret/evaluators/faithfulness_measures.py`` and
``utils_from_soft_to_discrete.py``, with the default arguments that ``Benchmark.evaluate_explanations`` uses,
which this runner uses too): the [CLS]/[SEP] scores are dropped (``remove_first_last=True``, applied to the
scores only when ``tokens[0]`` is the CLS token) and the ids are the tokenizer's ids without first/last; over
the n remaining tokens, for each percentage p in ``np.arange(0.1, 1.1, 0.1)`` (10%, 20%, ..., 100%) it takes
k = int(p * n) (floor; p = 0.1 with n < 10 gives k = 0 and that threshold is skipped), and the rationale is
the top-k tokens by score **restricted to scores > 0** (``only_pos=True``: fewer than k tokens when fewer are
positive, none at all when no score is positive); a threshold whose rationale set equals the previous
retained one is skipped (so duplicates from small n or from running out of positive tokens count once).
Perturbation is token **deletion** (``remove_tokens=True``): comprehensiveness deletes the rationale ids,
sufficiency keeps only the rationale ids in their original order; the perturbed id list is turned back into
a string with ``tokenizer.decode`` and **re-tokenized** (specials re-added; WordPiece pieces may re-merge
differently) and run in batches of 8 padded to the longest. Each score is the plain mean, over the retained
thresholds only, of p_target(x) - p_target(variant) (softmax probability of the given target, not the
predicted class): it divides by the number of distinct non-empty rationales |K'| (at most 10), with no
k = 0 term and no |K|+1 divisor. With no retained rationale (e.g. all scores <= 0) comprehensiveness
returns 0 and sufficiency 1. Differences from amlx's ``aopc_comp``/``aopc_suff``: amlx uses k in
{1, 5, 10, 20, 50} % of the attributable tokens (floor), fixed divisor 5 (6 in the seed-code mode), ranks by
score regardless of sign with ties by position, keeps duplicate/empty k-sets as terms (Comp(k)=0 for k=0),
and perturbs ``input_ids`` directly without a decode/re-tokenize round trip; ferret's and amlx's numbers
therefore differ in value and this benchmark compares timings only. Work per example for ferret: 2 forward
passes of the full text (baseline, once per evaluator) + one batch of up to 10 variants per evaluator.

Model folder compatibility: a BertForSequenceClassification folder written by transformers 5.x
(``save_pretrained``: ``model.safetensors``, ``config.json`` with ``dtype``/``transformers_version`` 5.x keys,
and a ``tokenizer.json``-only tokenizer without ``vocab.txt``) loads as-is in ferret's transformers 4.57
(``BertTokenizerFast`` from ``tokenizer.json``); checked with identical logits in both versions, so no
re-saving or config stripping was needed.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _fail(msg: str) -> None:
    print(f"ferret_runner: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} IN.json OUT.json", file=sys.stderr)
        return 2
    in_path, out_path = argv[1], argv[2]

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))

    from importlib.metadata import version

    import transformers
    from ferret.evaluators.faithfulness_measures import (
        AOPC_Comprehensiveness_Evaluation,
        AOPC_Sufficiency_Evaluation,
    )
    from ferret.explainers.explanation import Explanation
    from ferret.model_utils import ModelHelper
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with open(in_path) as f:
        spec = json.load(f)
    model_dir = spec.get("model_dir")
    examples = spec.get("examples")
    if not model_dir or not os.path.isdir(model_dir):
        _fail(f"model_dir {model_dir!r} is not a directory")
    if not examples:
        _fail("no examples given")

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    helper = ModelHelper(model, tokenizer)
    num_labels = model.config.num_labels

    explanations: list = []
    targets: list[int] = []
    for i, ex in enumerate(examples):
        text, scores, target = ex["text"], ex["scores"], int(ex["target"])
        given_tokens = ex.get("tokens")
        ferret_tokens = helper.get_tokens(text)  # what ferret's explainers put in Explanation.tokens
        if len(ferret_tokens) != len(scores):
            _fail(
                f"example {i}: ferret tokenizes the text into {len(ferret_tokens)} tokens (special tokens "
                f"included) but {len(scores)} scores were given; ferret tokens: {ferret_tokens}"
            )
        if given_tokens is not None:
            if len(given_tokens) != len(ferret_tokens):
                _fail(
                    f"example {i}: {len(given_tokens)} tokens given but ferret's tokenization has "
                    f"{len(ferret_tokens)}: given {given_tokens} vs ferret {ferret_tokens}"
                )
            if list(given_tokens) != list(ferret_tokens):
                print(
                    f"ferret_runner: warning: example {i}: token strings differ from ferret's "
                    f"(same count, using ferret's): given {given_tokens} vs ferret {ferret_tokens}",
                    file=sys.stderr,
                )
        if not 0 <= target < num_labels:
            _fail(f"example {i}: target {target} outside 0..{num_labels - 1}")
        explanations.append(
            Explanation(text, ferret_tokens, np.asarray(scores, dtype=np.float64), "given", target)
        )
        targets.append(target)

    comp_ev = AOPC_Comprehensiveness_Evaluation(model, tokenizer)
    suff_ev = AOPC_Sufficiency_Evaluation(model, tokenizer)

    # Untimed warm-up (first-call allocations, oneDNN/kernel selection).
    comp_ev.compute_evaluation(explanations[0], targets[0])
    suff_ev.compute_evaluation(explanations[0], targets[0])

    comp_vals: list[float] = []
    suff_vals: list[float] = []
    t0 = time.perf_counter()
    for expl, target in zip(explanations, targets):
        comp_vals.append(comp_ev.compute_evaluation(expl, target).score)
        suff_vals.append(suff_ev.compute_evaluation(expl, target).score)
    seconds = time.perf_counter() - t0

    n = len(explanations)
    out = {
        "n": n,
        "seconds_total": seconds,
        "sec_per_example": seconds / n,
        "aopc_comp": [float(v) for v in comp_vals],
        "aopc_suff": [float(v) for v in suff_vals],
        "ferret_version": version("ferret-xai"),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "n_warmup": 1,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
