"""Read or replace the attention probabilities of chosen layers of a Hugging Face model, without modeling-file copies.

``swap_attention(hf)`` switches the model, for one ``with`` block, to an attention function registered with
transformers' ``AttentionInterface`` (eager attention: softmax(QKᵀ·scaling + mask)·V with grouped key/value heads
repeated, the same operations as the models' own eager code, so outputs equal ``attn_implementation="eager"``
bit for bit) and restores the previous implementation afterwards. The yielded ``AttentionSession`` numbers the
attention modules in the order they run (layer 0 first), keeps the probabilities and the allowed positions of the
layers in ``record``, and hands the probabilities of the modules in ``replace`` to a function whose result is used
instead: ``fn(probs [rows, heads, q, k], allowed [rows, 1 | heads, q, k]) -> [rows, heads, q, k]``.

``skip_blocks`` reuses hidden states: the transformer blocks (the children of a ``ModuleList`` holding the
attention modules) below a layer return a precomputed output instead of running, for methods that change only
layers ≥ l and evaluate many variants of one input (RPI). Models whose attention does not go through the interface
(e.g. DeBERTa, MPNet in transformers 5) raise ``AttentionReplacementError``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

IMPLEMENTATION = "amlx_replaceable"
Replacement = Callable[[Tensor, Tensor], Tensor]

_SESSION: contextvars.ContextVar[AttentionSession | None] = contextvars.ContextVar("amlx_attention", default=None)


class AttentionReplacementError(NotImplementedError):
    """The model's attention cannot be read or replaced through transformers' ``AttentionInterface``."""


@dataclass
class AttentionSession:
    """What one ``swap_attention`` block saw: attention modules in call order, recorded and replaced layers."""

    record: frozenset[int] = frozenset()
    replace: dict[nn.Module, Replacement] = field(default_factory=dict)
    modules: list[nn.Module] = field(default_factory=list)  # attention modules, layer order (order of first call)
    probs: dict[int, Tensor] = field(default_factory=dict)  # layer → [batch, heads, q, k] (recorded layers)
    allowed: dict[int, Tensor] = field(default_factory=dict)  # layer → bool [batch, 1 | heads, q, k]
    replaced: set[nn.Module] = field(default_factory=set)

    def on_attention(self, module: nn.Module, probs: Tensor, allowed: Tensor) -> Tensor:
        if module not in self.modules:
            self.modules.append(module)
        layer = self.modules.index(module)
        if layer in self.record:
            self.probs[layer], self.allowed[layer] = probs.detach(), allowed
        fn = self.replace.get(module)
        if fn is None:
            return probs
        new = fn(probs, allowed)
        if new.shape != probs.shape:
            raise ValueError(f"a replacement for layer {layer} returned {tuple(new.shape)}, expected {tuple(probs.shape)}")
        self.replaced.add(module)
        return new.to(probs.dtype)

    def check_layers(self, hf: nn.Module) -> None:
        """Raise if a forward pass ran without reaching this attention function (attention not replaceable)."""
        if not self.modules:
            raise AttentionReplacementError(_unsupported(hf, "its attention layers never called the interface"))
        missing = [m for m in self.replace if m not in self.replaced]
        if missing:
            raise AttentionReplacementError(_unsupported(hf, f"{len(missing)} replaced layer(s) never ran"))


def replaceable_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Eager attention (query/key/value [batch, heads, tokens, head_dim]) whose probabilities a session may replace."""
    for unsupported in ("softcap", "s_aux", "sinks"):
        if kwargs.get(unsupported) is not None:
            raise AttentionReplacementError(
                f"{type(module).__name__} uses attention {unsupported!r}, which amlx's replaceable attention does not "
                "implement; explain a model without it"
            )
    if key.shape[1] != query.shape[1]:  # grouped-query attention: repeat each key/value head for its query heads
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    probs = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    session = _SESSION.get()
    if session is not None:
        probs = session.on_attention(module, probs, _allowed(attention_mask, probs))
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _allowed(attention_mask: Tensor | None, probs: Tensor) -> Tensor:
    """Positions the model may attend to (bool, broadcastable to ``probs``) from an eager additive or boolean mask."""
    if attention_mask is None:
        return torch.ones((1,) * probs.ndim, dtype=torch.bool, device=probs.device).expand_as(probs)
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, replaceable_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)  # additive float masks, as eager attention expects


def _unsupported(hf: nn.Module, why: str) -> str:
    return (
        f"cannot read or replace the attention of {type(hf).__name__}: {why}. RPI needs a model whose attention goes "
        "through transformers' AttentionInterface (BERT, RoBERTa, DistilBERT, GPT-2, Llama, Mistral, ...); explain "
        "this model with a method that needs only gradients (e.g. integrated_gradients)"
    )


@contextlib.contextmanager
def swap_attention(
    hf: nn.Module, record: set[int] | frozenset[int] = frozenset(), replace: dict[nn.Module, Replacement] | None = None
) -> Iterator[AttentionSession]:
    """Within the block, ``hf`` runs ``replaceable_attention`` under a new session (module docstring)."""
    _register()
    previous = hf.config._attn_implementation
    if previous != IMPLEMENTATION:
        hf.set_attn_implementation(IMPLEMENTATION)  # only warns for a model that cannot switch: checked below
        if hf.config._attn_implementation != IMPLEMENTATION:
            raise AttentionReplacementError(_unsupported(hf, "it cannot switch its attention implementation"))
    session = AttentionSession(frozenset(record), dict(replace or {}))
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)
        if previous != IMPLEMENTATION:
            hf.set_attn_implementation(previous)


def block_of(hf: nn.Module, module: nn.Module) -> tuple[nn.ModuleList, int] | None:
    """The transformer block holding ``module``: (its ModuleList, its index there), or None if there is none."""
    names = {m: n for n, m in hf.named_modules()}
    parts = names[module].split(".")
    for depth in range(len(parts) - 1, 0, -1):
        parent = hf.get_submodule(".".join(parts[: depth - 1])) if depth > 1 else hf
        container = getattr(parent, parts[depth - 1], None)
        if isinstance(container, nn.ModuleList) and parts[depth].isdigit():
            return container, int(parts[depth])
    return None


@contextlib.contextmanager
def record_block_outputs(blocks: list[nn.Module]) -> Iterator[dict[nn.Module, object]]:
    """Within the block, every forward of a module in ``blocks`` stores its output (detached references)."""
    outputs: dict[nn.Module, object] = {}

    def hook(module, args, output):
        outputs[module] = output.detach() if isinstance(output, Tensor) else output

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def skip_blocks(blocks: list[nn.Module], output: Tensor) -> Iterator[None]:
    """Within the block, each module in ``blocks`` returns ``output`` without running (instance ``forward`` override)."""

    def fixed(*args, **kwargs) -> Tensor:
        return output

    for b in blocks:
        b.forward = fixed
    try:
        yield
    finally:
        for b in blocks:
            del b.forward
