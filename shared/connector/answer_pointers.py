"""Pointers into answers, checked against the operation's 2xx response schemas (pure).

A connector says where things are in what the third party answers: ``push.externalId``
(or a create's own ``externalId``) where a create answer holds the new record's id;
``records`` where a listing (or a match) holds its array; ``pull.externalId``, and a
match's or ``deletedList``'s ``externalId``, where one record holds its id. Mistyped
(``/data/id`` for ``/id``), each used to fail only at run time, record after record
("answered 201 without an id"). Each is checked here against every 2xx response schema
of its operation: one that no such schema could hold is a problem at the key that says
it (or at the call, for the default ``/id``).

A response that documents no schema says nothing and is not checked (vendors often
leave them out). An object whose schema lists ``properties`` holds only those, unless
``additionalProperties`` says otherwise — as for a map target (``schema_has_path``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from shared.connector.document import DEFAULT_EXTERNAL_ID, CallSpec
from shared.connector.openapi import Operation, schema_branches, success_schemas
from shared.connector.problems import Problem
from shared.json_pointer import join_pointer, split_pointer

_MAX_DEPTH = 64


def answer_pointer_problems(
    document: dict[str, Any],
    pointer: str,
    push: Mapping[str, CallSpec],
    push_spec: Mapping[str, Any],
    pull_calls: Mapping[str, CallSpec | None],
    pull_spec: Mapping[str, Any],
) -> list[Problem]:
    """Every pointer of one object (at ``pointer``) that its operation's answers cannot
    hold. ``pull_calls``: ``list``, ``read``, ``deletedList`` (those declared)."""
    problems: list[Problem] = []
    push_at = join_pointer(pointer, "push")
    push_id = push_spec.get("externalId")
    create = push.get("create")
    if create is not None and create.steps:
        create = create.id_step  # the step whose answer holds the id
    if create is not None:
        problems += _check(document, create.operation, [
            _place(create.options, "externalId", create.pointer,
                   inherited=(push_id, join_pointer(push_at, "externalId"), ""),
                   default_said="push.externalId, by default")])
    match = push.get("match")
    if match is not None:
        problems += _check(document, match.operation, [
            _place(match.options, "records", match.pointer, default=""),
            _place(match.options, "externalId", match.pointer,
                   inherited=(push_id, match.pointer, "push.externalId, as the match has none"),
                   default_said="push.externalId, by default"),
        ])
    pull_id = pull_spec.get("externalId")
    for name, call in pull_calls.items():
        if call is None:
            continue
        records = _place(call.options, "records", call.pointer, default="")
        if name == "deletedList":
            problems += _check(document, call.operation, [
                records, _place(call.options, "externalId", call.pointer)])
            continue
        own_id = _place(pull_spec, "externalId", join_pointer(pointer, "pull"))
        if pull_id is None:
            own_id = _Place("externalId", DEFAULT_EXTERNAL_ID, call.pointer,
                            "pull.externalId, by default")
        problems += _check(document, call.operation,
                           [own_id] if name == "read" else [records, own_id])
    return problems


@dataclasses.dataclass(frozen=True)
class _Place:
    """A pointer into an answer, and where the connector says it (or why it is used)."""

    what: str  # records | externalId
    value: str
    at: str
    said: str = ""  # how it came to be used when not written at ``at``


def _place(options: Mapping[str, Any], key: str, at: str, *, default: str = DEFAULT_EXTERNAL_ID,
           inherited: tuple[Any, str, str] | None = None,
           default_said: str = "by default") -> _Place:
    """``options[key]`` where written; else the ``inherited`` (value, at, said) when that
    is written; else ``default``, reported at the call ``at``."""
    value = options.get(key)
    if isinstance(value, str):
        return _Place(key, value, join_pointer(at, key))
    if inherited is not None and isinstance(inherited[0], str):
        return _Place(key, inherited[0], inherited[1], inherited[2])
    return _Place(key, default, at, default_said)


def _check(document: dict[str, Any], operation: Operation, places: list[_Place]) -> list[Problem]:
    """``places``: one pointer into the answer, or a listing's ``records`` and a pointer
    within one of its records."""
    schemas = success_schemas(document, operation)
    if not schemas:
        return []
    tokens: list[str] = []
    for index, place in enumerate(places):
        try:
            own = split_pointer(place.value)
        except ValueError:
            return []  # not a pointer: the meta-schema says so
        if index:  # within one record: the records pointer must lead to an array
            tokens.append("0")
            problem = _unheld(document, operation, schemas, places[index - 1], tokens)
            if problem is not None:
                return [problem]
        tokens += own
        problem = _unheld(document, operation, schemas, place, tokens)
        if problem is not None:
            return [problem]
    return []


def _unheld(document: dict[str, Any], operation: Operation, schemas: list[tuple[str, Any]],
            place: _Place, tokens: list[str]) -> Problem | None:
    missing = _first_missing(document, [s for _, s in schemas], tokens)
    if missing is None:
        return None
    statuses = ", ".join(status for status, _ in schemas)
    said = f" ({place.said})" if place.said else ""
    return Problem(place.at, f"{place.what} {place.value!r}{said}: what {operation.key} "
                             f"answers ({statuses}) cannot hold {join_pointer('', *tokens)}: "
                             f"its response schema has no {_describe(tokens, missing)}")


def _describe(tokens: list[str], missing: int) -> str:
    parent = join_pointer("", *tokens[:missing]) or "/"
    token = tokens[missing]
    return f"item at {parent} (not an array)" if token == "0" else f"{token!r} at {parent}"


def _first_missing(document: dict[str, Any], schemas: list[Any],
                   tokens: list[str]) -> int | None:
    """The index of the first token no schema of ``schemas`` holds, ``None`` if all are."""
    if any(may_hold(document, schema, tokens) for schema in schemas):
        return None
    low, high = 0, len(tokens)  # holds tokens[:low], not tokens[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if any(may_hold(document, schema, tokens[:middle]) for schema in schemas):
            low = middle
        else:
            high = middle
    return low


def may_hold(document: dict[str, Any], schema: Any, tokens: list[str], depth: int = 0) -> bool:
    """Whether a value valid against ``schema`` may have a value at ``tokens`` (a JSON
    pointer's tokens: property names and array indexes)."""
    if not tokens or depth > _MAX_DEPTH:
        return True
    return any(_branch_holds(document, branch, tokens, depth)
               for branch in schema_branches(document, schema))


def _branch_holds(document: dict[str, Any], schema: Any, tokens: list[str],
                  depth: int) -> bool:
    if not isinstance(schema, dict):
        return schema is not False
    token, rest = tokens[0], tokens[1:]
    declared = schema.get("type")
    types = set(declared) if isinstance(declared, list) else {declared} if declared else None
    composed = any(k in schema for k in ("allOf", "anyOf", "oneOf"))
    if "items" in schema or "prefixItems" in schema or (types and "array" in types):
        if token.isdigit():
            prefix = schema.get("prefixItems")
            index = int(token)
            if isinstance(prefix, list) and index < len(prefix):
                return may_hold(document, prefix[index], rest, depth + 1)
            items = schema.get("items", True)
            return may_hold(document, items if not isinstance(items, list) else True, rest,
                            depth + 1)
        if types is None or "object" not in types:
            return False
    if types is not None and "object" not in types:
        return False
    properties = schema.get("properties")
    if isinstance(properties, dict) and token in properties:
        return may_hold(document, properties[token], rest, depth + 1)
    additional = schema.get("additionalProperties")
    if additional is True:
        return True
    if isinstance(additional, dict):
        return may_hold(document, additional, rest, depth + 1)
    if isinstance(schema.get("patternProperties"), dict) and schema["patternProperties"]:
        return True
    return not isinstance(properties, dict) and additional is not False and not composed
