"""Named transformations and parameter templates, compiled from ``x-synchronization``.

A transform is either a field map — target field (dotted for nesting, indexed
for arrays: ``data[0].name``; see :mod:`shared.transform.targets`) → expression
over the source record — or one expression building the whole payload.

Nulls: a BSS (or a vendor) answers ``null`` for an empty field. In the input,
``null`` is treated like an absent field (so ``$lowercase(email)`` of an empty
email yields nothing instead of failing). A field whose expression yields
nothing is left out of the payload — or, with ``keepNulls``, sent as ``null``
so the third party clears it. ``Transform.apply`` turns a record into a payload; every failure is a
``MappingError`` naming the transform and the field, except a missing link,
which stays a retryable ``DependencyPending`` (and ``LinksNotLoaded``, a signal
for the caller to load links and evaluate again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from shared.errors import MappingError, SyncError
from shared.transform.context import LinksNotLoaded, TransformContext, using_context
from shared.transform.expressions import (
    UNDEFINED,
    Expression,
    ExpressionRuntimeError,
    as_text,
    free_variables,
)
from shared.transform.helpers import HELPERS, HelperError
from shared.transform.targets import (
    Target,
    TargetError,
    assign,
    closed,
    is_indexed,
    parse_target,
    shape_problems,
    target_name,
)

#: What a step's body may read of the steps before it: ``$steps``, each earlier step's
#: captures by step name (``$externalId`` is a helper function already: the id step's
#: own capture gives the id, ``$steps.customer.id``).
ANSWER_VARIABLES = frozenset({"steps"})


def compile_expression(source: str) -> Expression:
    """Compile with bss-sync's helper functions (field paths as ``TRANSFORM_PATHS`` says).
    Raises ``ExpressionSyntaxError``."""
    return Expression(source, HELPERS)


@dataclasses.dataclass(frozen=True)
class FieldRule:
    target: Target  # field names and array indices: ("data", 0, "name")
    expression: Expression | None  # None: a literal constant
    constant: Any = None
    origin: str = ""  # the transform that declares it (differs when inherited)

    @property
    def name(self) -> str:
        return target_name(self.target)


@dataclasses.dataclass(frozen=True)
class Transform:
    """A compiled named transform."""

    name: str
    fields: tuple[FieldRule, ...] = ()
    expression: Expression | None = None
    keep_nulls: bool = False
    #: some target has an index: arrays are built, then closed (the others pay nothing)
    indexed: bool = dataclasses.field(init=False, repr=False, compare=False)
    #: the answers of earlier steps it reads (``$steps``): a step's body made when the
    #: step is sent (see :meth:`apply`)
    answers: frozenset[str] = dataclasses.field(init=False, repr=False, compare=False)
    _reading: frozenset[int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "indexed", any(is_indexed(r.target) for r in self.fields))
        read: set[str] = set()
        reading: set[int] = set()
        for expression in self.expressions():
            names = free_variables(expression) & ANSWER_VARIABLES
            if names:
                read |= names
                reading.add(id(expression))
        object.__setattr__(self, "answers", frozenset(read))
        object.__setattr__(self, "_reading", frozenset(reading))

    def expressions(self) -> list[Expression]:
        """Every expression of the transform (its fields', or its one)."""
        if self.expression is not None:
            return [self.expression]
        return [r.expression for r in self.fields if r.expression is not None]

    def apply(self, record: Any, context: TransformContext,
              answers: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The payload for ``record``. ``answers`` binds ``$steps`` (each earlier step's
        captures by name) for a step's body that reads it; without it ``$steps`` is
        undefined (the fields made of it left out), which is how a push's hash sees such
        a body. Raises ``MappingError``, ``DependencyPending``, ``LinksNotLoaded``."""
        record = without_nulls(record)
        bindings = without_nulls(dict(answers)) if answers is not None and self.answers \
            else None
        with using_context(context):
            if self.expression is not None:
                value = self._evaluate(self.expression, record, "(expression)", bindings)
                if value is UNDEFINED:
                    value = {}
                if not isinstance(value, dict):
                    raise MappingError(
                        f"transform {self.name} must produce an object, "
                        f"it produced {_json_type(value)}",
                        details={"transform": self.name},
                    )
                return value if self.keep_nulls else without_nulls(value)
            out: dict[str, Any] = {}
            for rule in self.fields:
                if rule.expression is None:
                    value = rule.constant
                else:
                    value = self._evaluate(rule.expression, record, rule.name, bindings)
                if value is UNDEFINED or value is None:
                    if not self.keep_nulls:
                        continue
                    value = None
                assign(out, rule.target, value)
            return closed(out) if self.indexed else out

    def _evaluate(self, expression: Expression, record: Any, field: str,
                  bindings: dict[str, Any] | None = None) -> Any:
        try:
            if bindings is not None and id(expression) in self._reading:
                return expression.evaluate(record, bindings)
            return expression.evaluate(record)
        except (SyncError, LinksNotLoaded):
            raise
        except (ExpressionRuntimeError, HelperError) as exc:
            raise MappingError(
                f"transform {self.name}, field {field}: {exc}",
                details={"transform": self.name, "field": field},
            ) from None
        except Exception as exc:  # jsonata-python can fail in odd ways on odd input
            raise MappingError(
                f"transform {self.name}, field {field}: evaluation failed "
                f"({type(exc).__name__}: {exc})",
                details={"transform": self.name, "field": field},
            ) from None


def without_nulls(value: Any) -> Any:
    """``value`` with null-valued object members removed, at every depth."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def build_transform(name: str, spec: Mapping[str, Any]) -> Transform:
    """Compile one ``transforms`` entry. Raises ``ExpressionSyntaxError`` or
    ``TargetError`` (the first problem found); document validation compiles field
    by field to report every error."""
    keep_nulls = bool(spec.get("keepNulls", False))
    if "expression" in spec:
        return Transform(
            name, expression=compile_expression(spec["expression"]), keep_nulls=keep_nulls
        )
    rules = []
    for target, source in (spec.get("map") or {}).items():
        path = parse_target(target)
        if isinstance(source, str):
            rules.append(FieldRule(path, compile_expression(source)))
        else:
            rules.append(FieldRule(path, None, source))
    for number, problem in shape_problems([rule.target for rule in rules]):
        raise TargetError(f"target {rules[number].name!r}: {problem}")
    return Transform(name, fields=tuple(rules), keep_nulls=keep_nulls)


# -- templates ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Template:
    """A parameter value: a literal, or text with ``{expression}`` placeholders.

    A template that is exactly one placeholder keeps the value's type (``"{since}"``
    can be a number); otherwise the parts are joined as text.
    """

    source: Any
    parts: tuple[str | Expression, ...] = ()

    @property
    def is_literal(self) -> bool:
        return not any(isinstance(p, Expression) for p in self.parts)

    def expressions(self) -> list[Expression]:
        return [p for p in self.parts if isinstance(p, Expression)]

    def render(self, data: Any, context: TransformContext) -> Any:
        """The value over ``data``; ``UNDEFINED`` when a sole placeholder yields nothing.
        Raises ``MappingError``, ``DependencyPending``, ``LinksNotLoaded``."""
        if not isinstance(self.source, str):
            return self.source
        data = without_nulls(data)
        with using_context(context):
            if len(self.parts) == 1 and isinstance(self.parts[0], Expression):
                return self._value(self.parts[0], data)
            text = []
            for part in self.parts:
                if isinstance(part, Expression):
                    value = self._value(part, data)
                    text.append("" if value in (None, UNDEFINED) else as_text(value))
                else:
                    text.append(part)
            return "".join(text)

    def _value(self, expression: Expression, data: Any) -> Any:
        try:
            return expression.evaluate(data)
        except (SyncError, LinksNotLoaded):
            raise
        except (ExpressionRuntimeError, HelperError) as exc:
            raise MappingError(f"template {self.source!r}: {exc}") from None
        except Exception as exc:  # jsonata-python can fail in odd ways on odd input
            raise MappingError(
                f"template {self.source!r}: evaluation failed ({type(exc).__name__}: {exc})"
            ) from None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


class TemplateSyntaxError(ValueError):
    """Unbalanced braces, or a placeholder whose expression does not parse."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


def compile_template(source: Any) -> Template:
    """Split ``source`` into text and compiled expressions. ``{{`` and ``}}`` are literal
    braces. Raises ``TemplateSyntaxError``."""
    if not isinstance(source, str):
        return Template(source)
    parts: list[str | Expression] = []
    text: list[str] = []
    i = 0
    while i < len(source):
        char = source[i]
        if char in "{}" and source[i : i + 2] in ("{{", "}}"):
            text.append(char)
            i += 2
            continue
        if char == "}":
            raise TemplateSyntaxError(f"unmatched '}}' at character {i + 1}", i + 1)
        if char != "{":
            text.append(char)
            i += 1
            continue
        end = _closing_brace(source, i)
        if end is None:
            raise TemplateSyntaxError(f"unclosed '{{' at character {i + 1}", i + 1)
        if text:
            parts.append("".join(text))
            text = []
        inner = source[i + 1 : end]
        if not inner.strip():
            raise TemplateSyntaxError(f"empty placeholder at character {i + 1}", i + 1)
        try:
            parts.append(compile_expression(inner))
        except ValueError as exc:
            raise TemplateSyntaxError(f"in placeholder {{{inner}}}: {exc}", i + 2) from None
        i = end + 1
    if text:
        parts.append("".join(text))
    return Template(source, tuple(parts))


def _closing_brace(source: str, start: int) -> int | None:
    depth = 0
    quote: str | None = None
    i = start
    while i < len(source):
        char = source[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None
