"""fAML — instance-wise fine-tuning of a pretrained AML attributor at explain time (seed 002 §3.1).

For each instance, a copy of the pretrained θ minimizes the AML loss (λ's fixed from pretraining) for
``steps`` Adam steps; the map and the loss are recorded before the first step and after every step, and one
map is selected: ``loss`` (lowest AML loss, metric-agnostic), ``last``, or ``metric`` — the paper's protocol,
which picks the step by the very metric it reports (an oracle; results are labelled "oracle-selected"). A
registered metric (name or ``amlx.metrics.Metric``) is scored with ``amlx.evaluation.Evaluator`` — every step's
map of every instance in one batched call, exactly as an evaluation scores the returned record.

Which parameters move: ``all`` (everything pAML trains), ``head`` (the token head only), ``lora`` (a peft
LoRA adapter on the backbone, plus the head). ``head`` tunes every instance of a batch at once: the backbone
states are computed once and one stacked copy of the head per instance is optimized through
``torch.func.vmap``; since Adam is elementwise and the loss is a sum over instances, this equals independent
per-instance runs. ``all`` and ``lora`` run the instances in sequence on one working copy that is reset to
the pretrained weights before each instance (a vmapped copy of the whole backbone is left for later).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from amlx.attributors.aml import AMLAttributor
from amlx.models.explained import Encoded

PARAMS = ("all", "head", "lora")
SELECTIONS = ("loss", "last", "metric")
DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}


@dataclass
class FAMLResult:
    """Selected maps and the whole fine-tuning trace of a batch. Step 0 is the pretrained (pAML) map."""

    scores: Tensor  # [batch, tokens] the selected map of each instance, on explained-model tokens
    step: Tensor  # [batch] the selected step
    maps: Tensor  # [batch, steps + 1, tokens]
    losses: Tensor  # [batch, steps + 1] AML loss of each recorded map
    enc: Encoded  # the explained model's encoding the maps refer to
    probs: Tensor  # [batch, classes] F(x)
    selection: str  # "loss" | "last" | "oracle-selected"


class FAML:
    """Fine-tune ``attributor`` on each instance for ``steps`` steps and select a map (module docstring).

    ``metric`` (for ``selection="metric"``): a registered metric name (``"comp"``) or ``amlx.metrics.Metric``,
    scored with the batched ``Evaluator``; or any callable ``metric(record, explained_model) -> float`` on an
    ``amlx.records.Attribution`` per recorded map. Its ``direction`` ('higher' | 'lower' is better) is used
    unless ``metric_direction`` is given. ``lr`` defaults to the attributor's pretraining lr; ``lora`` is a
    peft ``LoraConfig`` dict.
    """

    def __init__(
        self,
        attributor: AMLAttributor,
        steps: int = 10,
        params: str = "all",
        selection: str = "loss",
        metric: Callable | None = None,
        metric_direction: str | None = None,
        lr: float | None = None,
        lora: dict | None = None,
    ) -> None:
        if params not in PARAMS:
            raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {steps}")
        if isinstance(metric, str):
            from amlx import metrics

            metric = metrics.get(metric)
        direction = metric_direction or getattr(metric, "direction", None)
        if selection == "metric" and (metric is None or direction not in ("higher", "lower")):
            raise ValueError("selection='metric' needs metric= and its direction ('higher' | 'lower' is better)")
        self.attributor = attributor
        self.steps = steps
        self.params = params
        self.selection = selection
        self.metric = metric
        self.higher_is_better = direction == "higher"
        self.lr = lr if lr is not None else attributor.hparams.lr
        self.lora = {**DEFAULT_LORA, **(lora or {})}
        self._work: AMLAttributor | None = None
        self._init: dict[str, Tensor] = {}

    def attribute(self, inputs: str | list[str] | Encoded, target: Tensor | None = None) -> FAMLResult:
        """Fine-tune on every instance of ``inputs`` and return the selected maps with the trace."""
        att = self.attributor
        was_training = att.training
        att.eval()  # no dropout: the recorded losses must describe the recorded maps
        inputs = [inputs] if isinstance(inputs, str) else inputs
        enc, p, y = att.prepare(inputs, target)
        with torch.enable_grad():
            if self.params == "head":
                maps, losses = self._tune_heads(enc, y)
            else:
                maps, losses = self._tune_each(enc, y)
        att.train(was_training)
        maps = maps * enc.attributable[:, None, :]
        if self.selection == "loss":
            step = losses.argmin(1)
        elif self.selection == "last":
            step = torch.full((len(enc),), self.steps, dtype=torch.long, device=maps.device)
        else:
            explained_target = p.argmax(-1) if target is None else target.to(p.device)
            values = self._metric_values(enc, p, explained_target, maps)
            step = (values.argmax(1) if self.higher_is_better else values.argmin(1)).to(maps.device)
        chosen = maps[torch.arange(len(enc), device=maps.device), step]
        label = "oracle-selected" if self.selection == "metric" else self.selection
        return FAMLResult(chosen, step, maps, losses, enc, p, label)

    # ---------------------------------------------------------------------------------- optimization
    def _optimize(self, forward: Callable[[], tuple[Tensor, Tensor]], params: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Record (map, loss) before each step and after the last: ([b, steps + 1, tokens], [b, steps + 1])."""
        opt = torch.optim.Adam(params, lr=self.lr)
        maps, losses = [], []
        for s in range(self.steps + 1):
            with torch.set_grad_enabled(s < self.steps):
                a, loss = forward()
            maps.append(a.detach())
            losses.append(loss.detach())
            if s == self.steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # instances are independent: each one's gradient stays its own
            opt.step()
        return torch.stack(maps, 1), torch.stack(losses, 1)

    def _tune_heads(self, enc: Encoded, y: Tensor) -> tuple[Tensor, Tensor]:
        """All instances at once: frozen backbone states, one stacked head per instance, vmapped."""
        att = self.attributor
        inputs = att.tokenize(enc.texts).to(att.device)
        with torch.no_grad():
            h = att.hidden(inputs, y)  # [batch, source, d]
        params, _ = torch.func.stack_module_state([copy.deepcopy(att.head) for _ in range(len(enc))])

        def one(p: dict[str, Tensor], h_i: Tensor) -> Tensor:
            return torch.func.functional_call(att.head, p, (h_i,))

        def forward() -> tuple[Tensor, Tensor]:
            a_src = torch.sigmoid(torch.func.vmap(one)(params, h)[..., 0])  # [batch, source]
            a = att.to_explained(a_src, inputs, enc)
            return a, att.loss_terms(enc, a, y)["loss"]

        return self._optimize(forward, list(params.values()))

    def _tune_each(self, enc: Encoded, y: Tensor) -> tuple[Tensor, Tensor]:
        """One instance after the other on a working copy reset to the pretrained weights each time."""
        t = enc.input_ids.shape[1]
        maps, losses = [], []
        for b in range(len(enc)):
            work = self._fresh_copy()
            row = enc.select(slice(b, b + 1))
            y_b = y[b : b + 1]

            def forward(work=work, row=row, y_b=y_b) -> tuple[Tensor, Tensor]:
                a = work.token_scores(row, y_b)
                return a, work.loss_terms(row, a, y_b)["loss"]

            m, loss = self._optimize(forward, [p for p in work.parameters() if p.requires_grad])
            maps.append(torch.nn.functional.pad(m, (0, t - m.shape[-1])))
            losses.append(loss)
        return torch.cat(maps), torch.cat(losses)

    def _fresh_copy(self) -> AMLAttributor:
        """The working copy, built once (with the LoRA adapter for ``lora``) and reset to its initial state."""
        if self._work is None:
            att = self.attributor
            # the trainer is not copied (memo maps it to None); the explained model is shared, not copied (_Frozen)
            memo = {id(att._trainer): None} if getattr(att, "_trainer", None) is not None else {}
            work = copy.deepcopy(att, memo)
            if self.params == "lora":
                from peft import LoraConfig, get_peft_model

                work.backbone = get_peft_model(work.backbone, LoraConfig(**self.lora))
                work.class_embeddings.requires_grad_(False)
            work.eval()
            self._work = work
            self._init = {k: v.detach().clone() for k, v in work.state_dict().items()}
        else:
            self._work.load_state_dict(self._init)
        return self._work

    # -------------------------------------------------------------------------------------- selection
    def _metric_values(self, enc: Encoded, probs: Tensor, target: Tensor, maps: Tensor) -> Tensor:
        """The selection metric of every recorded map: [batch, steps + 1]."""
        from amlx.evaluation import Evaluator
        from amlx.metrics import Metric
        from amlx.records import records_from_encoded

        explained = self.attributor.explained
        recs = []  # step-major: all instances at step 0, then step 1, ...
        for s in range(maps.shape[1]):
            recs += records_from_encoded(
                enc, explained.tokenizer, maps[:, s], target, probs, explained.labels, "fAML", "oracle-selected"
            )
        if isinstance(self.metric, Metric):
            flat = Evaluator(explained, [self.metric]).evaluate(recs)[self.metric.name]
        else:
            flat = [float(self.metric(r, explained)) for r in recs]
        return torch.tensor(flat, dtype=torch.float64).reshape(maps.shape[1], len(enc)).T
