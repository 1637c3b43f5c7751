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
``torch.func.vmap``. ``all`` tunes ``parallel`` instances at a time, each with its own copy of the trainable
tensors (memory: about 16 bytes per trainable parameter per instance for the tensors, their gradients and
Adam's two moments; the default ``parallel=None`` takes as many as fit in ``PARALLEL_BYTES``, at most
``MAX_PARALLEL``): G runs per instance, the explained model F sees all their masked inputs in one pass.
Since Adam is elementwise and the loss is a sum over instances, both equal independent per-instance runs
(tested). ``lora`` (and ``all`` with ``parallel=1``) runs the instances in sequence on one working copy that is
reset to the pretrained weights before each instance.

The tuned copies of a group are a LightningModule (``FAMLModule``): a lean inner Lightning Trainer
(``amlx.attributors.inner``) runs its ``training_step`` once per step, with options from ``trainer``
(precision, gradient clipping, callbacks). ``FAML.module`` gives that module for a batch of your own, to fit
with a Trainer you configure (docs/aml.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor, nn

from amlx.attributors import inner
from amlx.attributors.aml import AMLAttributor, aml_loss
from amlx.models.explained import Encoded

PARAMS = ("all", "head", "lora")
SELECTIONS = ("loss", "last", "metric")
DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
PARALLEL_BYTES = 2 * 1024**3  # fAML "all": memory for the per-instance copies (tensor, gradient, 2 Adam moments)
MAX_PARALLEL = 8  # the fastest group size measured on a CPU (benchmarks/results/aml-speed-minilm-movies)
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
    peft ``LoraConfig`` dict. ``lambdas`` (λ_p, λ_a, λ_inv) default to the pretraining ones (methods.md "AML");
    an attributor amortized from a teacher with the AML terms off needs its own. ``trainer``: options of the inner
    Lightning Trainer (``amlx.attributors.inner``: precision, gradient clipping, callbacks, …). ``lr_scheduler``: a
    learning-rate schedule stepped after every step (``{class_path: torch.optim.lr_scheduler.ReduceLROnPlateau,
    init_args: {...}}``, ``inner.optimization``; a plateau schedule reads the group's mean loss).
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
        parallel: int | None = None,
        lambdas: tuple[float, float, float] | list[float] | None = None,
        trainer: dict | None = None,
        lr_scheduler: dict | None = None,
    ) -> None:
        if params not in PARAMS:
            raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {steps}")
        if parallel is None:
            trainable = sum(p.numel() for p in attributor.parameters() if p.requires_grad)
            parallel = max(1, min(MAX_PARALLEL, PARALLEL_BYTES // (16 * max(trainable, 1))))
        if parallel < 1:
            raise ValueError(f"parallel must be ≥ 1, got {parallel}")
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
        self.parallel = parallel
        hp = attributor.hparams
        self.lambdas = tuple(float(v) for v in (lambdas or (hp.lambda_p, hp.lambda_a, hp.lambda_inv)))
        if len(self.lambdas) != 3 or min(self.lambdas) < 0:
            raise ValueError(f"lambdas must be three weights ≥ 0 (λ_p, λ_a, λ_inv), got {lambdas}")
        if not any(self.lambdas) and steps > 0:
            raise ValueError(
                "this attributor was pretrained with λ_p = λ_a = λ_inv = 0 (amortized from a teacher), so the AML loss "
                "fAML minimizes is 0: give fAML its own weights, e.g. lambdas: [1.0, 1.0, 1.0]"
            )
        inner.check_scheduler(lr_scheduler)
        self.trainer, self.lr_scheduler = trainer, lr_scheduler
        self._work: AMLAttributor | None = None
        self._init: dict[str, Tensor] = {}

    def attribute(
        self, inputs: str | list[str] | Encoded, target: Tensor | None = None, probs: Tensor | None = None
    ) -> FAMLResult:
        """Fine-tune on every instance of ``inputs`` and return the selected maps with the trace (``probs``: F(x))."""
        att = self.attributor
        was_training = att.training
        att.eval()  # no dropout: the recorded losses must describe the recorded maps
        inputs = [inputs] if isinstance(inputs, str) else inputs
        enc, p, y = att.prepare(inputs, target, probs)
        with torch.enable_grad():
            if self.params == "head":
                maps, losses = self._run(self._tune_heads(enc, y))
            elif self.params == "all" and self.parallel > 1:
                parts = [self._run(self._tune_all(enc.select(rows), y[rows])) for rows in _chunks(len(enc), self.parallel)]
                maps, losses = _cat_traces(parts)
            else:
                maps, losses = self._tune_each(enc, y)
        att.train(was_training)
        return self._select(enc, p, target, maps, losses)

    def module(
        self, inputs: str | list[str] | Encoded, target: Tensor | None = None, probs: Tensor | None = None
    ) -> FAMLModule:
        """The LightningModule of the per-instance copies of ``inputs`` (all of them at once), for your own Trainer.

        ``params`` head or all (``lora`` tunes one instance at a time: use ``attribute``). The attributor is left
        in eval mode. Fit with ``lightning.Trainer(max_epochs=steps, ...).fit(module)`` on the attributor's device, then
        ``result(module)`` selects the maps as ``attribute`` does.
        """
        if self.params == "lora":
            raise ValueError("fAML params='lora' tunes one instance at a time on one working copy: use attribute()")
        self.attributor.eval()
        inputs = [inputs] if isinstance(inputs, str) else inputs
        enc, p, y = self.attributor.prepare(inputs, target, probs)
        module = self._tune_heads(enc, y) if self.params == "head" else self._tune_all(enc, y)
        module.instances = (enc, p, target)
        return module

    def result(self, module: FAMLModule) -> FAMLResult:
        """The selected maps and the trace of a module from ``module`` after its Trainer ran."""
        enc, p, target = module.instances
        maps, losses = module.trace()
        return self._select(enc, p, target, maps, losses)

    def _select(self, enc: Encoded, p: Tensor, target: Tensor | None, maps: Tensor, losses: Tensor) -> FAMLResult:
        """One recorded map per instance by ``selection`` (maps [b, recorded, tokens], losses [b, recorded])."""
        maps = maps * enc.attributable[:, None, :]
        if self.selection == "loss":
            step = losses.argmin(1)
        elif self.selection == "last":
            step = torch.full((len(enc),), maps.shape[1] - 1, dtype=torch.long, device=maps.device)
        else:
            explained_target = p.argmax(-1) if target is None else target.to(p.device)
            values = self._metric_values(enc, p, explained_target, maps)
            step = (values.argmax(1) if self.higher_is_better else values.argmin(1)).to(maps.device)
        chosen = maps[torch.arange(len(enc), device=maps.device), step]
        label = "oracle-selected" if self.selection == "metric" else self.selection
        return FAMLResult(chosen, step, maps, losses, enc, p, label)

    # ---------------------------------------------------------------------------------- optimization
    def _run(self, module: FAMLModule) -> tuple[Tensor, Tensor]:
        """Fit ``module`` on the inner Trainer and read its trace: ([b, steps + 1, tokens], [b, steps + 1])."""
        if self.steps > 0:
            inner.fit(module, self.attributor.device, self.steps, self.trainer)
        trace = module.trace()
        module.release()
        return trace

    def _tune_heads(self, enc: Encoded, y: Tensor) -> FAMLModule:
        """All instances at once: frozen backbone states, one stacked head per instance, vmapped."""
        att = self.attributor
        inputs = att.tokenize(enc.texts).to(att.device)
        with torch.no_grad():
            h = att.hidden(inputs.input_ids, inputs.attention_mask, y)  # [batch, source, d]
        stacked, _ = torch.func.stack_module_state([copy.deepcopy(att.head) for _ in range(len(enc))])
        params = {k: nn.Parameter(v) for k, v in stacked.items()}

        def one(p: dict[str, Tensor], h_i: Tensor) -> Tensor:
            return torch.func.functional_call(att.head, p, (h_i,))

        def forward() -> tuple[Tensor, Tensor]:
            a_src = torch.sigmoid(torch.func.vmap(one)(params, h)[..., 0])  # [batch, source]
            a = att.to_explained(a_src, inputs, enc)
            return a, self._loss(enc, a, y)

        return FAMLModule(list(params.values()), forward, self.steps, self.lr, self.lr_scheduler)

    def _tune_all(self, enc: Encoded, y: Tensor) -> FAMLModule:
        """The instances of ``enc`` together: each its own copy of G's trainable tensors, F batched over all.

        G runs once per instance on its unpadded tokens (``functional_call`` with that instance's tensors and the
        shared frozen ones); the maps are stacked and the explained model F scores every instance's two masked
        inputs in one pass; one backward of the summed loss and one Adam step over all copies follow.
        """
        att = self.attributor
        inputs = att.tokenize(enc.texts).to(att.device)
        lengths = inputs.attention_mask.sum(1).tolist()
        shared = {f"att.{n}": t for n, t in att.named_buffers()}
        shared.update({f"att.{n}": p.detach() for n, p in att.named_parameters() if not p.requires_grad})
        copies = [{f"att.{n}": nn.Parameter(p.detach().clone()) for n, p in att.named_parameters() if p.requires_grad}
                  for _ in range(len(enc))]  # fmt: skip
        scorer = _Scorer(att)
        source = inputs.input_ids.shape[1]

        def forward() -> tuple[Tensor, Tensor]:
            rows = []
            for i, (tensors, n) in enumerate(zip(copies, lengths)):
                args = (inputs.input_ids[i : i + 1, :n], inputs.attention_mask[i : i + 1, :n], y[i : i + 1])
                a_i = torch.func.functional_call(scorer, {**shared, **tensors}, args)  # [1, n]
                rows.append(torch.nn.functional.pad(a_i, (0, source - n)))
            a = att.to_explained(torch.cat(rows), inputs, enc)
            return a, self._loss(enc, a, y)

        return FAMLModule([t for tensors in copies for t in tensors.values()], forward, self.steps, self.lr, self.lr_scheduler)

    def _tune_each(self, enc: Encoded, y: Tensor) -> tuple[Tensor, Tensor]:
        """One instance after the other on a working copy reset to the pretrained weights each time."""
        t = enc.input_ids.shape[1]
        parts = []
        for b in range(len(enc)):
            work = self._fresh_copy()
            row = enc.select(slice(b, b + 1))
            y_b = y[b : b + 1]

            def forward(work=work, row=row, y_b=y_b) -> tuple[Tensor, Tensor]:
                a = work.token_scores(row, y_b)
                return a, self._loss(row, a, y_b)

            tuned = [p for p in work.parameters() if p.requires_grad]
            parts.append(self._run(FAMLModule(tuned, forward, self.steps, self.lr, self.lr_scheduler)))
        return _cat_traces(parts, t)

    def _loss(self, enc: Encoded, a: Tensor, y: Tensor) -> Tensor:
        """The per-instance AML loss [batch] with fAML's λ's (Eq. 4)."""
        att = self.attributor
        return aml_loss(att.explained, enc, a, y, self.lambdas, att.hparams.sparsity)["loss"]

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
        if isinstance(self.metric, Metric):
            return Evaluator(explained, [self.metric]).score_maps(enc, maps, target, probs, "fAML")[self.metric.name]
        recs = []  # a plain callable on records; step-major: all instances at step 0, then step 1, ...
        for s in range(maps.shape[1]):
            recs += records_from_encoded(
                enc, explained.tokenizer, maps[:, s], target, probs, explained.labels, "fAML", "oracle-selected"
            )
        flat = [float(self.metric(r, explained)) for r in recs]
        return torch.tensor(flat, dtype=torch.float64).reshape(maps.shape[1], len(enc)).T


class FAMLModule(L.LightningModule):
    """The per-instance copies of G's trainable tensors for a group of instances, tuned for their AML loss.

    ``tuned``: the copies (stacked heads, one copy of every trainable tensor per instance, or one working copy's
    trainable parameters); ``forward()`` → (maps [b, tokens], AML loss [b]) of the instances with the current
    copies (the instances and the frozen G and F it runs are fixed when the module is built, so each step's batch
    from ``train_dataloader`` is empty). ``Trainer(max_epochs=steps).fit`` takes ``steps`` Adam steps on the summed loss
    (Adam is elementwise: each instance's update is its own), recording (map, loss) before each; ``trace()`` adds
    the map after the last: ([b, steps + 1, tokens], [b, steps + 1]). G and F are outside the module tree, so the
    Trainer never switches them out of eval mode.
    """

    def __init__(
        self, tuned: list[nn.Parameter], forward: Callable[[], tuple[Tensor, Tensor]], steps: int, lr: float,
        lr_scheduler: dict | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.tuned = nn.ParameterList(tuned)  # the same Parameter objects ``forward`` reads
        self.run_forward = forward
        self.steps, self.lr, self.lr_scheduler = steps, lr, lr_scheduler
        self.instances: tuple[Encoded, Tensor, Tensor | None] | None = None  # (enc, F(x), target) from FAML.module
        self.maps: list[Tensor] = []
        self.losses: list[Tensor] = []

    def train_dataloader(self) -> inner.Batches:
        return inner.Batches([{}])

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> int | None:
        if len(self.maps) >= self.steps:  # a Trainer with more epochs than steps: the trace is full
            self.trainer.should_stop = True
            return -1
        return None

    def configure_optimizers(self):
        params = list(self.tuned)
        # fused: one pass over each (stacked) tensor per step instead of several; same update as the default
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in params)
        return inner.optimization(torch.optim.Adam(params, lr=self.lr, fused=fused or None), self.lr_scheduler)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        a, loss = self.run_forward()
        self.maps.append(a.detach())
        self.losses.append(loss.detach())
        if inner.watched(self.trainer, self.lr_scheduler):  # callbacks, loggers, a plateau schedule; else skipped
            self.log("loss", loss.detach().mean(), batch_size=len(loss))
        return loss.sum()  # instances are independent: each one's gradient stays its own

    def release(self) -> None:
        """Drop the copies, their optimizer state and the trace once read (``inner.release``): the group's memory is
        freed now, not at Python's next full garbage collection."""
        inner.release(self)
        self.tuned = nn.ParameterList()
        self.run_forward = None
        self.maps, self.losses = [], []

    def trace(self) -> tuple[Tensor, Tensor]:
        """The recorded maps and losses with those after the last step: ([b, steps + 1, tokens], [b, steps + 1])."""
        with torch.no_grad():
            a, loss = self.run_forward()
        return torch.stack([*self.maps, a.detach()], 1), torch.stack([*self.losses, loss.detach()], 1)


class _Scorer(torch.nn.Module):
    """G's token scores as one module call (what ``functional_call`` needs): (ids, mask, y_v) → [batch, source]."""

    def __init__(self, att: AMLAttributor) -> None:
        super().__init__()
        self.att = att

    def forward(self, input_ids: Tensor, attention_mask: Tensor, y: Tensor) -> Tensor:
        return self.att.head_scores(self.att.hidden(input_ids, attention_mask, y))


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _cat_traces(parts: list[tuple[Tensor, Tensor]], tokens: int | None = None) -> tuple[Tensor, Tensor]:
    """Concatenate (maps [b_i, r_i, t_i], losses [b_i, r_i]) traces along the batch, right-padding tokens with zeros;
    a group that recorded fewer steps (stopped early by a Trainer callback) repeats its last record, the map it kept."""
    r = max(m.shape[1] for m, _ in parts)
    t = tokens or max(m.shape[-1] for m, _ in parts)
    maps, losses = [], []
    for m, loss in parts:
        more = r - m.shape[1]
        maps.append(torch.nn.functional.pad(torch.cat([m, m[:, -1:].expand(-1, more, -1)], 1), (0, t - m.shape[-1])))
        losses.append(torch.cat([loss, loss[:, -1:].expand(-1, more)], 1))
    return torch.cat(maps), torch.cat(losses)
