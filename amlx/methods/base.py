"""The interface every attribution method implements, and the method registry.

A method is a class with a registered ``name`` and one entry point, ``attribute(inputs, model, target=None)``:
texts (or an ``Encoded`` batch) in, one ``Attribution`` per example out. Shared arguments mean the same
everywhere: ``target`` (None = the predicted class; an int or label name for all examples; or one per example)
and ``internal_batch_size`` (examples per forward/backward pass). A subclass implements only ``scores``; a method
whose map is a differentiable function of the input embeddings also implements ``scores_from_embeds`` (what the top-k
attack, ``amlx.attack``, needs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from amlx.models.explained import Encoded
from amlx.progress import Progress
from amlx.records import Attribution, records_from_encoded

_REGISTRY: dict[str, type[AttributionMethod]] = {}

Target = int | str | Sequence[int | str] | Tensor | None


class AttributionMethod:
    """Base class: ``attribute`` handles encoding, targets, batching, timing and records; ``scores`` the method."""

    name: ClassVar[str]
    variant: str = ""
    takes_probs: ClassVar[bool] = False  # True: ``scores`` also gets ``probs=`` F(x) [batch, classes], computed once
    # True for methods whose scores of an example do not depend on the rest of its internal batch: examples are
    # then batched in order of length (less padding in every pass); records still come back in input order
    sort_by_length: ClassVar[bool] = False
    # True for methods that optimize per instance (fAML, MaRC): ``attribute`` shows progress over the examples
    show_progress: ClassVar[bool] = False
    # the class whose constructor takes the ``**options`` of this one's (MaRC's optimizer settings), so a job's
    # method_options are checked against both (amlx.methods.specs)
    options_to: ClassVar[type | None] = None

    def __init__(self, internal_batch_size: int = 16) -> None:
        if internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be ≥ 1, got {internal_batch_size}")
        self.internal_batch_size = internal_batch_size

    def reseed(self, seed: int) -> None:
        """Draw from now on what this method constructed with ``seed`` would draw (the jobs call it per chunk).

        Methods without a ``seed`` option ignore it; a method with one overrides it to reset every seeded state it
        holds (its ``seed``, generators, the variant that names the seed), so one instance serves a whole run.
        """

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        """Raw scores [batch, tokens] for the batch ``enc`` (on the model's device) and classes ``target`` [batch]."""
        raise NotImplementedError

    def scores_from_embeds(self, embeds: Tensor, enc: Encoded, model, target: Tensor) -> Tensor:
        """Scores [batch, tokens] of ``enc`` with its word embeddings replaced by ``embeds`` [batch, tokens, hidden].

        Differentiable w.r.t. ``embeds`` when it requires grad (gradient maps keep their graph: double backprop);
        at ``model.embed(enc.input_ids)`` it equals ``scores``. Position, type and special-token inputs are the
        model's own. Implemented by saliency, gradient_x_input, integrated_gradients and paml.
        """
        raise NotImplementedError(
            f"{self.name} has no differentiable map of the input embeddings; the top-k attack (explain.py "
            f"robustness) supports {', '.join(differentiable_names())}"
        )

    @classmethod
    def differentiable(cls) -> bool:
        """Whether the method implements ``scores_from_embeds``."""
        return cls.scores_from_embeds is not AttributionMethod.scores_from_embeds

    def attribute(self, inputs: str | list[str] | Encoded, model, target: Target = None) -> list[Attribution]:
        """One record per example; ``seconds`` is each internal batch's wall time split evenly over its examples."""
        enc = inputs if isinstance(inputs, Encoded) else model.encode(inputs)
        targets = resolve_targets(target, len(enc), model)
        order = list(range(len(enc)))
        if self.sort_by_length and len(enc) > self.internal_batch_size:
            lengths = enc.attention_mask.sum(1).tolist()
            order.sort(key=lambda i: -lengths[i])
        out: list[tuple[int, Attribution]] = []
        with Progress(len(enc), self.name, enabled=self.show_progress) as bar:
            for start in range(0, len(enc), self.internal_batch_size):
                rows = order[start : start + self.internal_batch_size]
                chunk = enc.select(rows).to(model.device)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    probs = model.probs(input_ids=chunk.input_ids, attention_mask=chunk.attention_mask)
                tgt = probs.argmax(-1) if targets is None else targets[rows].to(model.device)
                scores = self.scores(chunk, model, tgt, **({"probs": probs} if self.takes_probs else {}))
                if scores.device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
                    torch.cuda.synchronize(scores.device)
                seconds = (time.perf_counter() - t0) / len(chunk)
                recs = records_from_encoded(
                    chunk, model.tokenizer, scores, tgt, probs, model.labels, self.name, self.variant, seconds
                )
                out += zip(rows, recs)
                bar.update(len(rows))
        return [rec for _, rec in sorted(out, key=lambda pair: pair[0])]


def resolve_targets(target: Target, n: int, model) -> Tensor | None:
    """Class indices [n] from None (→ None: use the prediction), one int/label, or one per example."""
    if target is None:
        return None
    if isinstance(target, (int, str)):
        return torch.full((n,), model.label_index(target), dtype=torch.long)
    items = target.tolist() if isinstance(target, Tensor) else list(target)
    if len(items) != n:
        raise ValueError(f"got {len(items)} targets for {n} examples; pass one target or one per example")
    return torch.tensor([model.label_index(t) for t in items], dtype=torch.long)


OUTPUTS = ("logit", "log_prob", "prob")


def class_outputs(logits: Tensor, output: str) -> Tensor:
    """The explained quantity per class: raw ``logit``, ``log_prob`` (log-softmax) or ``prob``: [batch, classes].

    With a softmax head only logit *differences* move the prediction, so ``logit`` gradients carry a common-mode
    part that ``log_prob`` / ``prob`` (what the faithfulness metrics measure) do not.
    """
    if output == "logit":
        return logits
    if output == "log_prob":
        return logits.float().log_softmax(-1)
    if output == "prob":
        return logits.float().softmax(-1)
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


def register_method(name: str):
    """Class decorator: make the method available as ``amlx.methods.get(name)``."""

    def deco(cls: type[AttributionMethod]) -> type[AttributionMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"two methods are registered as {name!r}: {_REGISTRY[name]} and {cls}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get(name: str, **options) -> AttributionMethod:
    """A configured method by registered name (``explain.py --method NAME``, YAML ``method: NAME``)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown attribution method {name!r}; registered methods: {', '.join(names())}")
    return _REGISTRY[name](**options)


def names() -> list[str]:
    return sorted(_REGISTRY)


def method_label(name: str, options: dict) -> str:
    """``name`` or ``name[k=v,...]`` (options sorted): how tables and file names tell configurations apart."""
    return name + ("" if not options else "[" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + "]")


def differentiable_names() -> list[str]:
    """Registered methods that implement ``scores_from_embeds``."""
    return [n for n in names() if _REGISTRY[n].differentiable()]
