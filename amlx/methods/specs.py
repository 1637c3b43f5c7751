"""Method specs of the jobs (``explain``, ``evaluate``, ``main``), checked against the method classes up front.

A job names its methods in ``methods: [name, alias=name, ...]`` and configures them in
``method_options: {alias: {option: value}}`` (docs/evaluation.md). ``parse_methods`` turns the two into
``MethodSpec``s and refuses, before any model is loaded, an unknown method, an alias given twice, options for a
method not in ``methods``, an option its constructor does not take, and a value of the wrong plain type — each
with the valid names in the message.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from amlx.errors import UserError
from amlx.methods.base import _REGISTRY, AttributionMethod, method_label, names


class MethodSpecError(UserError, ValueError):
    """``methods`` / ``method_options`` name a method or an option that does not exist, or a wrong value."""


@dataclass(frozen=True)
class MethodSpec:
    """One entry of ``methods``: ``alias`` (its name in the job's files and table), the registered ``name``, options."""

    alias: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type[AttributionMethod]:
        return _REGISTRY[self.name]

    @property
    def label(self) -> str:
        """The alias when one was given, else the name with its options (``random[seed=1]``): file and table name."""
        return self.alias if self.alias != self.name else method_label(self.name, self.options)

    def accepts(self, option: str) -> bool:
        """Whether the method's constructor takes ``option`` (e.g. ``seed``)."""
        options = constructor_options(self.cls)
        return options is None or option in options

    def build(self, **overrides) -> AttributionMethod:
        """The configured method; ``overrides`` replace options (a job's per-chunk ``seed``).

        A value the constructor refuses (its ``ValueError``: an option outside its choices, a malformed schedule)
        becomes a ``MethodSpecError`` naming ``method_options.<alias>``, so the CLI reports it in one line, status 2.
        """
        try:
            return self.cls(**{**self.options, **overrides})
        except MethodSpecError:
            raise
        except ValueError as e:
            raise MethodSpecError(f"method {self.alias!r} (method_options.{self.alias}): {e}") from e


def constructor_options(cls: type) -> dict[str, inspect.Parameter] | None:
    """The keyword options of ``cls``'s constructor by name, with those of ``cls.options_to`` when it forwards
    ``**options`` there; None when it takes any keyword (names cannot be checked)."""
    params = inspect.signature(cls).parameters
    out = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        target = getattr(cls, "options_to", None)
        more = constructor_options(target) if target is not None else None
        if more is None:
            return None
        out = {**more, **out}
    return out


def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of the constructor (and of ``options_to``'s); empty when they cannot be resolved here."""
    hints: dict[str, Any] = {}
    for c in (getattr(cls, "options_to", None), cls):
        if c is None:
            continue
        try:
            hints.update(typing.get_type_hints(c.__init__))
        except Exception:  # an annotation naming a type imported only for type checkers: check names only
            pass
    return hints


def _suggest(word: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(word, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _plain_type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` can be ``hint`` when ``hint`` is built from int, float, str, bool, None, Literal and unions;
    any other hint (dicts, objects) is not judged."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_plain_type_ok(value, a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def check_options(name: str, cls: type, options: dict[str, Any], where: str) -> None:
    """Refuse options ``cls``'s constructor does not take, or values of the wrong plain type (``where``: for the message)."""
    params = constructor_options(cls)
    valid = sorted(params or ())
    for key in options:
        if params is not None and key not in params:
            raise MethodSpecError(
                f"method {name!r} has no option {key!r} ({where}){_suggest(key, valid)}; "
                f"its options are: {', '.join(valid)}"
            )
    hints = _type_hints(cls)
    for key, value in options.items():
        if key in hints and not _plain_type_ok(value, hints[key]):
            hint = str(hints[key]).replace("typing.", "")
            raise MethodSpecError(
                f"option {key!r} of method {name!r} ({where}) must be {getattr(hints[key], '__name__', hint)}, "
                f"got {value!r}"
            )


def parse_methods(methods: list[str], method_options: dict[str, dict] | None = None) -> list[MethodSpec]:
    """Specs of ``methods`` (``name`` or ``alias=name``) with their ``method_options`` (keyed by alias), checked."""
    method_options = dict(method_options or {})
    if isinstance(methods, str):
        methods = [methods]
    if not methods:
        raise MethodSpecError(
            f"no methods given; name at least one in methods (registered: {', '.join(names())})"
        )
    specs: list[MethodSpec] = []
    for item in methods:
        alias, sep, name = item.partition("=")
        alias, name = alias.strip(), (name if sep else alias).strip()
        if not alias or not name:
            raise MethodSpecError(
                f"methods entry {item!r} must be NAME or ALIAS=NAME (e.g. faml_oracle=faml)"
            )
        if name not in _REGISTRY:
            raise MethodSpecError(
                f"unknown attribution method {name!r} in methods{_suggest(name, names())}; "
                f"registered methods: {', '.join(names())}"
            )
        if any(s.alias == alias for s in specs):
            raise MethodSpecError(
                f"{alias!r} appears twice in methods; give the second one an alias (ALIAS={name})"
            )
        options = method_options.get(alias) or {}
        if not isinstance(options, dict):
            raise MethodSpecError(
                f"method_options.{alias} must be a mapping of option: value, got {options!r}"
            )
        check_options(name, _REGISTRY[name], options, f"method_options.{alias}")
        specs.append(MethodSpec(alias, name, dict(options)))
    extra = sorted(set(method_options) - {s.alias for s in specs})
    if extra:
        raise MethodSpecError(
            f"method_options for {extra}, which are not in methods {[s.alias for s in specs]}; key each method's "
            "options by its name (or alias) in methods"
        )
    return specs
