"""JSONata expressions, compiled once per connector document load.

``Expression`` wraps one compiled JSONata expression. Plain field paths
(``name``, ``billing.city``), which make up most of a field map, are evaluated by
a direct dictionary walk instead of the JSONata interpreter, and filtered paths
(``addresses[isBilling][0].city``) by :mod:`shared.transform.fastpath` — same
result, a fraction of the cost. Anything else goes through jsonata-python, and
everything does with ``TRANSFORM_PATHS=jsonata`` (read when an expression is
compiled, never per record).

Results distinguish JSON ``null`` (``None``) from "no value" (``UNDEFINED``): a map
leaves a field out when its expression yields nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

import jsonata
from jsonata import jexception
from jsonata.parser import Parser
from jsonata.utils import Utils

from shared.settings import get_setting
from shared.transform.fastpath import FALLBACK, compile_expression, compile_path


class _Undefined:
    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = _Undefined()
JSONATA_NULL: Final = Utils.NULL_VALUE

_SIMPLE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_KEYWORDS = frozenset({"true", "false", "null", "and", "or", "in", "function"})


class ExpressionSyntaxError(ValueError):
    """A JSONata expression that does not parse; ``position`` is 1-based (character)."""

    def __init__(self, message: str, position: int | None) -> None:
        where = f" at character {position}" if position is not None else ""
        super().__init__(f"JSONata syntax error{where}: {message}")
        self.reason = message
        self.position = position


class ExpressionRuntimeError(ValueError):
    """A JSONata expression failed on a given input (wrong type, bad argument…)."""


def to_python(value: Any) -> Any:
    """Convert a raw jsonata-python result: JSONata null → None, undefined → UNDEFINED."""
    if value is None:
        return UNDEFINED
    if value is JSONATA_NULL:
        return None
    if isinstance(value, dict | list):
        return Utils.convert_nulls(value)
    return value


def as_text(value: Any) -> str:
    """A JSON value as text for URLs, headers and keys: ``true``, ``5`` (not ``5.0``),
    objects and arrays as compact JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def from_python(value: Any) -> Any:
    """Convert a helper's argument as jsonata-python passes it: JSONata null → None."""
    return None if value is JSONATA_NULL else value


class Expression:
    """One compiled expression. ``evaluate`` never raises a foreign exception type except
    the ones helper functions raise on purpose (``shared.errors`` classes).

    ``fast``: evaluate field paths in Python (see the module docstring); ``None`` takes
    ``TRANSFORM_PATHS`` from the process's settings."""

    __slots__ = ("_compiled", "_fast", "_path", "source")

    def __init__(self, source: str, functions: dict[str, Any] | None = None, *,
                 fast: bool | None = None) -> None:
        self.source = source
        stripped = source.strip()
        if fast is None:
            fast = get_setting("transform_paths") == "fast"
        self._path: tuple[str, ...] | None = None
        self._compiled: jsonata.Jsonata | None = None
        if fast and _SIMPLE_PATH.match(stripped) and not set(stripped.split(".")) & _KEYWORDS:
            self._path = tuple(stripped.split("."))
        self._compiled = _compile(source)
        for name, implementation in (functions or {}).items():
            self._compiled.register_lambda(name, implementation)
        # paths with filters and indexes (addresses[isBilling][0].city), and what is
        # built of them with literals, conditions, constructors, helper calls: fastpath
        self._fast = None
        if fast and self._path is None:
            ast = self._compiled.ast
            self._fast = compile_path(ast, UNDEFINED) or compile_expression(
                ast, UNDEFINED, functions or {}, JSONATA_NULL)

    @property
    def ast(self) -> Any:
        return self._compiled.ast if self._compiled is not None else None

    def evaluate(self, data: Any, bindings: dict[str, Any] | None = None) -> Any:
        """The value of the expression over ``data``; ``UNDEFINED`` when it yields nothing.

        Raises ``ExpressionRuntimeError`` for JSONata evaluation errors.
        """
        if self._path is not None and bindings is None:
            node = data
            for key in self._path:
                if isinstance(node, dict):
                    if key not in node:
                        return UNDEFINED
                    node = node[key]
                elif node is None:
                    return UNDEFINED
                else:
                    break  # arrays (and odd inputs) get JSONata's mapping semantics
            else:
                return node
        elif self._fast is not None and bindings is None:
            result = self._fast(data)
            if result is not FALLBACK:
                return result
        assert self._compiled is not None
        try:
            raw = self._compiled.evaluate(data, bindings)
        except jexception.JException as exc:
            raise ExpressionRuntimeError(_describe(exc)) from None
        except RecursionError:
            raise ExpressionRuntimeError("expression recursed too deeply") from None
        return to_python(raw)


def _compile(source: str) -> jsonata.Jsonata:
    try:
        compiled = jsonata.Jsonata(source)
    except jexception.JException as exc:
        position = exc.location if isinstance(exc.location, int) else None
        raise ExpressionSyntaxError(_reason(exc), position) from None
    except (RecursionError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise ExpressionSyntaxError(f"cannot parse ({type(exc).__name__})", None) from None
    compiled.set_validate_input(False)
    compiled.set_output_convert_nulls(False)
    return compiled


def _reason(exc: jexception.JException) -> str:
    message = str(exc)
    return message[:1].lower() + message[1:] if message else exc.error


def _describe(exc: jexception.JException) -> str:
    located = isinstance(exc.location, int) and exc.location >= 0
    position = f" (at character {exc.location})" if located else ""
    return f"{_reason(exc)}{position}"


# -- static analysis ------------------------------------------------------------------

_CHILD_ATTRIBUTES = (
    "lhs",
    "rhs",
    "steps",
    "arguments",
    "procedure",
    "expressions",
    "condition",
    "then",
    "_else",
    "stages",
    "predicate",
    "lhs_object",
    "rhs_object",
    "terms",
    "rhs_terms",
    "body",
    "group",
    "expression",
    "update",
    "delete",
    "input",
    "expr",
    "pattern",
)  # expr: a filter stage [..]; pattern: |pattern|update|


def _walk(node: Any, seen: set[int] | None = None) -> Iterator[Any]:
    if seen is None:
        seen = set()
    if node is None or id(node) in seen:
        return
    if isinstance(node, list | tuple):
        for item in node:
            yield from _walk(item, seen)
        return
    if not isinstance(node, Parser.Symbol):
        return
    seen.add(id(node))
    yield node
    for attribute in _CHILD_ATTRIBUTES:
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, str | int | float | bool):
            yield from _walk(child, seen)


def function_calls(expression: Expression) -> list[tuple[str, list[Any], int | None]]:
    """``(name, literal arguments, position)`` of every ``$name(...)`` call.

    A literal argument is its value when it is a string/number literal, else ``UNDEFINED``.
    """
    calls = []
    for node in _walk(expression.ast):
        if node.type in ("function", "partial") and getattr(node, "procedure", None) is not None:
            procedure = node.procedure
            if procedure.type != "variable":
                continue
            literals = [
                a.value if a.type in ("string", "number") else UNDEFINED
                for a in (node.arguments or [])
            ]
            calls.append((procedure.value, literals, node.position))
    return calls


def bound_names(expression: Expression) -> set[str]:
    """Variable names an expression binds itself (``$x := …``, lambda parameters)."""
    names: set[str] = set()
    for node in _walk(expression.ast):
        if node.type == "bind" and getattr(node.lhs, "value", None):
            names.add(node.lhs.value)
        elif node.type == "lambda":
            names.update(a.value for a in (node.arguments or []) if getattr(a, "value", None))
    return names


def builtin_function_names() -> frozenset[str]:
    """Names of JSONata's standard library functions."""
    frame = jsonata.Jsonata.static_frame
    return frozenset(frame.bindings.keys()) if frame is not None else frozenset()


def path_names(expression: Expression) -> list[tuple[str, ...]]:
    """The leading plain names of every path of an expression, a bare name being a
    path of one: ``$string(steps.customer.id)`` → ``[("steps", "customer", "id")]``
    (a path stops at its first step that is not a plain name)."""
    found: list[tuple[str, ...]] = []
    inner: set[int] = set()
    for node in _walk(expression.ast):
        if node.type == "path":
            names: list[str] = []
            for step in node.steps or ():
                inner.add(id(step))
                if step.type != "name" or not isinstance(step.value, str):
                    break
                names.append(step.value)
            if names:
                found.append(tuple(names))
        elif node.type == "name" and id(node) not in inner and isinstance(node.value, str):
            found.append((node.value,))
    return found


def free_variables(expression: Expression) -> set[str]:
    """The ``$names`` an expression reads and does not bind itself, functions called
    left out: ``$steps.customer.id & $lookup('t', a)`` → ``{"steps"}``."""
    procedures = {id(node.procedure) for node in _walk(expression.ast)
                  if node.type in ("function", "partial")
                  and getattr(node, "procedure", None) is not None}
    names = {node.value for node in _walk(expression.ast)
             if node.type == "variable" and id(node) not in procedures
             and isinstance(node.value, str) and node.value}
    return names - bound_names(expression)


def variable_paths(expression: Expression, name: str) -> list[tuple[str, ...]]:
    """The plain names after ``$name`` in each path that starts with it:
    ``$steps.customer.id`` → ``[("customer", "id")]``; ``$steps`` alone → ``[()]``."""
    found: list[tuple[str, ...]] = []
    inner: set[int] = set()
    for node in _walk(expression.ast):
        if node.type == "path" and node.steps and node.steps[0].type == "variable" \
                and node.steps[0].value == name:
            inner.add(id(node.steps[0]))
            names: list[str] = []
            for step in node.steps[1:]:
                if step.type != "name" or not isinstance(step.value, str):
                    break
                names.append(step.value)
            found.append(tuple(names))
        elif node.type == "variable" and node.value == name and id(node) not in inner:
            found.append(())
    return found
