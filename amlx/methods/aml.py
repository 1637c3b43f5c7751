"""AML as attribution methods: ``paml`` (one forward pass of a pretrained attributor) and ``faml`` (fine-tuned per instance).

Both take ``checkpoint``: a ``.ckpt`` written by ``train.py fit --config configs/aml/...`` or an ``amlx:<name>`` the
run exported (``amlx.attributors.aml.checkpoint_path``). A checkpoint is loaded once per process and file version
(``load_attributor``, an LRU cache keyed by resolved path and modification time), so ``explain.py evaluate``,
which builds a method per chunk, does not reload it. It explains only the model it was trained against: another
one is refused with ``ExplainedMismatchError`` on first use.
"""

from __future__ import annotations

import functools
import os

from torch import Tensor

from amlx.attributors.aml import AMLAttributor, resolve_checkpoint
from amlx.attributors.faml import FAML
from amlx.methods.base import AttributionMethod, register_method
from amlx.models.explained import Encoded

CACHED_CHECKPOINTS = 4


def load_attributor(checkpoint: str) -> AMLAttributor:
    """The attributor of ``checkpoint`` (path or ``amlx:`` name), loaded weights-only once and cached, in eval mode."""
    path = os.path.realpath(resolve_checkpoint(checkpoint))
    return _load(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=CACHED_CHECKPOINTS)
def _load(path: str, mtime_ns: int) -> AMLAttributor:
    return AMLAttributor.from_checkpoint(path).eval()  # mtime_ns: a rewritten file is a new cache entry


class _AMLMethod(AttributionMethod):
    """Holds the attributor: from ``checkpoint`` (cached) or given in memory (validation during pAML training)."""

    sort_by_length = True  # an example's scores do not depend on its batch-mates
    takes_probs = True  # G is conditioned on F(x): reuse the pass the base class makes

    def __init__(
        self, checkpoint: str = "", attributor: AMLAttributor | None = None, internal_batch_size: int = 16
    ) -> None:
        super().__init__(internal_batch_size)
        if (attributor is None) == (not checkpoint):
            raise ValueError(
                f"{self.name} needs an attributor checkpoint: --method_options '{{{self.name}: {{checkpoint: "
                "PATH.ckpt or amlx:NAME}}' (train one with python train.py fit --config configs/aml/...)"
            )
        self.checkpoint = checkpoint
        self.attributor = attributor if attributor is not None else load_attributor(checkpoint)

    def _attach(self, model) -> AMLAttributor:
        """The attributor on ``model``'s device with ``model`` as its explained model (refused if not its own)."""
        att = self.attributor
        att.set_explained(model)
        if att.device != model.device:
            att.to(model.device)
        return att


@register_method("paml")
class PAML(_AMLMethod):
    """pAML inference: one forward pass of the pretrained attributor G (plus one of F for the conditioning p)."""

    variant = "pretrained"

    def scores(self, enc: Encoded, model, target: Tensor, probs: Tensor | None = None) -> Tensor:
        return self._attach(model).scores(enc, target, probs)

    def scores_from_embeds(self, embeds: Tensor, enc: Encoded, model, target: Tensor) -> Tensor:
        """G's map when F's word embeddings are ``embeds``; G's own embeddings of the same tokens move with them."""
        return self._attach(model).scores_from_embeds(embeds, enc, target)


@register_method("faml")
class FAMLMethod(_AMLMethod):
    """fAML: the pretrained attributor fine-tuned on each instance for ``steps`` steps, one map selected.

    ``params`` all | head | lora; ``selection`` loss (lowest AML loss; variant ``select:loss``) | last
    (``select:last``) | metric — the paper's protocol, the step with the best ``metric`` on that very example
    (variant ``oracle-selected:<metric>``). ``seconds`` of each record include the fine-tuning. ``trainer``: options
    of the inner Lightning Trainer (e.g. ``{precision: bf16-mixed, gradient_clip_val: 1.0}``); ``lr_scheduler``: a
    learning-rate schedule from YAML (``{class_path: torch.optim.lr_scheduler.ReduceLROnPlateau, init_args:
    {factor: 0.5, patience: 2}}``, stepped after every step; ``amlx.attributors.inner``).
    """

    show_progress = True

    def __init__(
        self,
        checkpoint: str = "",
        steps: int = 10,
        params: str = "all",
        selection: str = "loss",
        metric: str = "comp",
        lr: float | None = None,
        lora: dict | None = None,
        parallel: int | None = None,
        lambdas: list[float] | None = None,
        trainer: dict | None = None,
        lr_scheduler: dict | None = None,
        attributor: AMLAttributor | None = None,
        internal_batch_size: int = 16,
    ) -> None:
        super().__init__(checkpoint, attributor, internal_batch_size)
        self.faml = FAML(self.attributor, steps, params, selection, metric if selection == "metric" else None,
                         lr=lr, lora=lora, parallel=parallel, lambdas=lambdas, trainer=trainer,
                         lr_scheduler=lr_scheduler)  # fmt: skip
        self.variant = f"oracle-selected:{metric}" if selection == "metric" else f"select:{selection}"

    def scores(self, enc: Encoded, model, target: Tensor, probs: Tensor | None = None) -> Tensor:
        self._attach(model)
        return self.faml.attribute(enc, target, probs).scores
