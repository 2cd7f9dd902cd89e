"""References between canonical records (``invoice.accountId`` → an account).

The entity schemas mark reference fields with ``"x-references": "<entity>"``; this
module reads those marks once and finds the referenced ids in a record, including
in arrays of objects (``invoice.lines[].productId``). The pusher uses it to push
a record's parents first and to load the links a transform will ask for.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from shared.connector.loader import inlined_entity_schema

# (path of field names, where "[]" means "each item of this array") → referenced entity
ReferencePath = tuple[tuple[str, ...], str]


@cache
def reference_paths(entity: str) -> tuple[ReferencePath, ...]:
    """Where ``entity`` records hold references, e.g. ``((("lines", "[]", "productId"),
    "product"), …)``."""
    found: list[ReferencePath] = []
    _collect(inlined_entity_schema(entity), (), found, depth=0)
    return tuple(dict.fromkeys(found))


def _collect(schema: Any, path: tuple[str, ...], found: list[ReferencePath], depth: int) -> None:
    if not isinstance(schema, dict) or depth > 8:
        return
    target = schema.get("x-references")
    if isinstance(target, str) and path:
        found.append((path, target))
    for keyword in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(keyword) or []:
            _collect(branch, path, found, depth + 1)
    for name, sub in (schema.get("properties") or {}).items():
        _collect(sub, (*path, name), found, depth + 1)
    if isinstance(schema.get("items"), dict):
        _collect(schema["items"], (*path, "[]"), found, depth + 1)


def references(entity: str, record: dict[str, Any]) -> list[tuple[str, str]]:
    """``(entity, id)`` of every record ``record`` refers to, in schema order, no repeats."""
    out: dict[tuple[str, str], None] = {}
    for path, target in reference_paths(entity):
        for value in _values(record, path):
            if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
                out[(target, str(value))] = None
    return list(out)


def _values(node: Any, path: tuple[str, ...]) -> list[Any]:
    if not path:
        return [node]
    head, rest = path[0], path[1:]
    if head == "[]":
        return [v for item in node for v in _values(item, rest)] if isinstance(node, list) else []
    if isinstance(node, dict) and head in node:
        return _values(node[head], rest)
    return []
