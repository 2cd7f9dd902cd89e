"""The parts of an OpenAPI document a connector reaches (pure).

A vendor's spec is published whole; a connector uses a few of its operations. A defect
in a part the connector never reaches cannot break what it sends or reads, so the
loader reports it as a warning; in a part it reaches it stays an error (``--strict``:
every problem is one). Reached: the operations the connector's calls name, their path
item's parameters, everything their ``$ref``s lead to (transitively: schemas,
parameters, responses, request bodies), and what every request uses — ``openapi``,
``info``, ``servers``, ``security``, the security schemes — and ``x-synchronization``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from shared.connector.document import CallSpec, SyncObject
from shared.connector.source import resolve_pointer

ALWAYS_REACHED = ("/openapi", "/info", "/servers", "/security", "/components/securitySchemes",
                  "/x-synchronization")


class Reach:
    """Pointers of the reached parts: a pointer is reached when it is one of them or lies
    under one, or is the path item of a reached operation (itself, not its siblings)."""

    def __init__(self, parts: Iterable[str], items: Iterable[str]) -> None:
        self.parts = set(parts)
        self.items = set(items)

    def covers(self, pointer: str) -> bool:
        if pointer in self.items:
            return True
        while pointer:
            if pointer in self.parts:
                return True
            pointer = pointer.rsplit("/", 1)[0]
        return False


def reached(document: dict[str, Any], objects: Mapping[str, SyncObject]) -> Reach:
    """What the connector's ``objects`` reach in ``document`` (the bundle)."""
    operations = {call.operation.pointer for obj in objects.values() for call in _calls(obj)}
    items = {pointer.rsplit("/", 1)[0] for pointer in operations}
    parts = set(ALWAYS_REACHED)
    todo = [*operations, *(f"{item}/parameters" for item in items)]
    while todo:
        pointer = todo.pop()
        if pointer in parts and pointer not in operations:
            continue
        parts.add(pointer)
        try:
            node = resolve_pointer(document, pointer)
        except (KeyError, ValueError):
            continue
        for target in _local_refs(node):
            if target not in parts:
                todo.append(target)
    return Reach(parts, items)


def _calls(obj: SyncObject) -> Iterator[CallSpec]:
    pushed = [step for call in obj.push.values() for step in (call.steps or (call,))]
    for call in [*pushed, obj.pull_list, obj.pull_read, obj.pull_deleted_list]:
        while call is not None:
            yield call
            call = call.before


def _local_refs(node: Any) -> Iterator[str]:
    """The pointers of the local ``$ref``s anywhere under ``node`` (``#/a/b`` → ``/a/b``)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            ref = current.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                yield ref[1:]
            stack += [v for v in current.values() if isinstance(v, dict | list)]
        elif isinstance(current, list):
            stack += [v for v in current if isinstance(v, dict | list)]

