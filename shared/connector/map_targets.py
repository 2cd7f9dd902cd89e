"""Checking a map transform's targets against the schema its payload must fit (pure).

Each target (``name``, ``billing.city``, ``data[0].Account_Name``) must be a place the
schema may hold (:func:`~shared.connector.openapi.schema_has_path`: ``properties``,
free keys, ``items`` for an index) — a target that forgot the array a vendor wraps its
record in is told the indexed target to write. A literal value — a constant, or an
expression that is one (``'workflow'``, ``5``, ``true``) — must be of a type its
schema declares. Expressions are not typed here: the request schema check at push and
in ``preview`` sees what they yield.

A transform serves several calls (create and update, push and pull): it is checked
against each schema, and each problem is reported once, at its map key, naming every
schema it breaks.
"""

from __future__ import annotations

import json
from typing import Any

from shared.connector.openapi import schema_has_path, schemas_at, value_types, with_index_added
from shared.connector.problems import Problem
from shared.json_pointer import join_pointer
from shared.transform import UNDEFINED, Transform, target_name
from shared.transform.transform import FieldRule

SYNC = "/x-synchronization"
_LITERALS = ("string", "number", "value")  # JSONata's literal nodes (value: true/false/null)


class TargetChecks:
    """Every target of the transforms given to :meth:`check`; read :meth:`problems`
    once all are checked."""

    def __init__(self) -> None:
        self._misses: dict[tuple[str, str], list[str]] = {}  # (transform, field) → schemas
        self._hints: dict[tuple[str, str], str] = {}  # data.name → data[0].name
        # (transform, field, value given, types wanted) → schemas
        self._types: dict[tuple[str, str, str, str], list[str]] = {}

    def check(self, document: dict[str, Any] | None, schema: Any, transform: Transform,
              what: str) -> None:
        """Check ``transform``'s fields against ``schema`` (``what`` names it in a
        sentence: "the request schema of POST /companies")."""
        for rule in transform.fields:
            key = (rule.origin or transform.name, rule.name)
            if not schema_has_path(document, schema, rule.target):
                _add(self._misses.setdefault(key, []), what)
                hint = _indexed_hint(document, schema, rule)
                if hint is not None:
                    self._hints.setdefault(key, hint)
                continue
            wrong = _wrong_type(document, schema, rule)
            if wrong is not None:
                _add(self._types.setdefault((*key, *wrong), []), what)

    def problems(self) -> list[Problem]:
        """One problem per target and kind of fault, in the order first met."""
        found = []
        for (transform, field), schemas in self._misses.items():
            hint = self._hints.get((transform, field))
            found.append(Problem(_at(transform, field),
                                 f"target field {field!r} is not in {' nor in '.join(schemas)}"
                                 + (f"; {hint}" if hint else "")))
        for (transform, field, given, wanted), schemas in self._types.items():
            wants = "wants" if len(schemas) == 1 else "want"
            found.append(Problem(_at(transform, field),
                                 f"target field {field!r} is given {given}, where "
                                 f"{' and '.join(schemas)} {wants} {wanted}"))
        return found


def _add(schemas: list[str], what: str) -> None:
    if what not in schemas:
        schemas.append(what)


def _at(transform: str, field: str) -> str:
    return join_pointer(SYNC, "transforms", transform, "map", field)


def _indexed_hint(document: dict[str, Any] | None, schema: Any, rule: FieldRule) -> str | None:
    indexed = with_index_added(document, schema, rule.target)
    if indexed is None:
        return None
    at = next(i for i, (mine, theirs) in enumerate(zip(rule.target, indexed, strict=False))
              if mine != theirs)
    return (f"{target_name(indexed[:at])} is an array there: did you mean "
            f"{target_name(indexed)!r}?")


def _wrong_type(document: dict[str, Any] | None, schema: Any,
                rule: FieldRule) -> tuple[str, str] | None:
    """``('"many", a string', "an integer")`` when ``rule`` is a literal no schema at its
    target takes; ``None`` when it is not a literal, or is one a schema there may take."""
    value = _literal(rule)
    if value is UNDEFINED or value is None:
        return None  # left out (or sent as null with keepNulls: not judged here)
    wanted: set[str] = set()
    for leaf in schemas_at(document, schema, rule.target):
        types = value_types(document, leaf)
        if types is None or _types_of(value) & types:
            return None
        wanted |= types
    if not wanted:
        return None
    return (f"{json.dumps(value, ensure_ascii=False)}, {_a(sorted(_types_of(value))[0])}",
            " or ".join(map(_a, sorted(wanted))))


def _literal(rule: FieldRule) -> Any:
    if rule.expression is None:
        return rule.constant
    ast = rule.expression.ast
    if getattr(ast, "type", None) in _LITERALS and not getattr(ast, "stages", None):
        return ast.value
    return UNDEFINED


def _types_of(value: Any) -> set[str]:
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    if isinstance(value, str):
        return {"string"}
    return {"array"} if isinstance(value, list) else {"object"}


def _a(json_type: str) -> str:
    return {"integer": "an integer", "array": "an array", "object": "an object",
            "null": "null"}.get(json_type, f"a {json_type}")
