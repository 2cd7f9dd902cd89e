"""Map targets: where a field map puts each value in the payload it builds.

A target is a dotted path of field names (``billing.city``: nested objects), and a
name may carry indices (``data[0].Account_Name``, ``Contacts[0].Addresses[1].City``,
``tags[0]``: arrays), so that a vendor that wraps one record in an array (Zoho's
``{"data": [{…}]}``, Xero's ``{"Contacts": [{…}]}``) is still written field by field —
and each field checked against the request schema — instead of as one expression.

A target is parsed once, when the connector is loaded, into a tuple of segments: a
``str`` is a field name, an ``int`` an index. The map as a whole must give every path
one shape (:func:`shape_problems`): an object or an array, never both; an array set
whole (``tags``) or element by element (``tags[0]``), not both; the indices of one
array numbered from 0 without a gap. A path set whole *and* extended field by field
stays allowed, as it always was for objects (``billing`` copied from the record,
``billing.country`` added).

Building (:func:`assign`, then :func:`closed`): as a nested object with no field
left is left out, an element none of whose fields yields a value is left out and
the array closes up (indices give the elements' order, not their final position); an
array left without elements is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

Segment = str | int
Target = tuple[Segment, ...]


class TargetError(ValueError):
    """A map target that is not ``name(.name)*`` with optional ``[n]`` after a name, or
    (from :func:`~shared.transform.build_transform`) whose shape another contradicts."""


def parse_target(text: str) -> Target:
    """``"data[0].Account_Name"`` → ``("data", 0, "Account_Name")``. Field names are any
    characters but ``.``, ``[`` and ``]`` (the meta-schema narrows them); an index is a
    whole number from 0, without leading zeros. Raises ``TargetError`` saying
    where the text goes wrong."""
    segments: list[Segment] = []
    i, end = 0, len(text)
    while True:
        start = i
        while i < end and text[i] not in ".[]":
            i += 1
        if i == start:
            raise TargetError(_no_name(text, i))
        segments.append(text[start:i])
        while i < end and text[i] == "[":
            close = text.find("]", i)
            if close == -1:
                raise TargetError(f"unclosed '[' at character {i + 1}")
            segments.append(_index(text[i + 1 : close], i + 2))
            i = close + 1
        if i == end:
            return tuple(segments)
        if text[i] != ".":
            raise TargetError(f"unexpected {text[i]!r} at character {i + 1} "
                                    "(an index follows a field name: name[0])")
        i += 1


def _no_name(text: str, i: int) -> str:
    if i < len(text) and text[i] == "[":
        return (f"an index at character {i + 1} follows no field name (the body is an "
                "object: start with a field, e.g. data[0].name)")
    if i == len(text):
        return f"a field name is missing at character {i + 1}" if text else "empty target"
    return f"a field name is missing before {text[i]!r} at character {i + 1}"


def _index(inner: str, position: int) -> int:
    if not inner.isascii() or not inner.isdigit():
        raise TargetError(f"index [{inner}] at character {position} is not a whole "
                                "number from 0 (write [0], [1]…)")
    if len(inner) > 1 and inner.startswith("0"):
        raise TargetError(f"index [{inner}] at character {position}: write it "
                                f"without leading zeros ([{int(inner)}])")
    return int(inner)


def target_name(target: Target) -> str:
    """The target as written in the map: ``("data", 0, "Account_Name")`` →
    ``"data[0].Account_Name"``."""
    text = ""
    for segment in target:
        if isinstance(segment, int):
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


def is_indexed(target: Target) -> bool:
    return any(isinstance(segment, int) for segment in target)


def shape_problems(targets: Sequence[Target]) -> list[tuple[int, str]]:
    """``(position in targets, sentence)`` for each target that gives a path a shape
    another target contradicts (see the module docstring); one problem per path."""
    kinds: dict[Target, tuple[str, int]] = {}  # path → ("object"|"array", first target)
    leaves = {target: number for number, target in enumerate(targets)}
    indices: dict[Target, dict[int, int]] = {}  # array path → index → first target
    problems: list[tuple[int, str]] = []
    contradicted: set[Target] = set()
    for number, target in enumerate(targets):
        for depth in range(1, len(target)):
            path, segment = target[:depth], target[depth]
            kind = "array" if isinstance(segment, int) else "object"
            seen = kinds.setdefault(path, (kind, number))
            if seen[0] != kind:
                if path not in contradicted:
                    contradicted.add(path)
                    problems.append((number, f"{target_name(path)} is {_a(kind)} here but "
                                             f"{_a(seen[0])} in "
                                             f"{target_name(targets[seen[1]])!r}"))
                break
            if isinstance(segment, int):
                indices.setdefault(path, {}).setdefault(segment, number)
    for path, numbers in indices.items():
        if path in leaves:
            problems.append((leaves[path], f"{target_name(path)} is set whole here and "
                                           "element by element in "
                                           f"{target_name(targets[min(numbers.values())])!r}: "
                                           "choose one"))
        missing = next((i for i in range(len(numbers)) if i not in numbers), None)
        if missing is not None:
            after = min(i for i in numbers if i > missing)
            problems.append((numbers[after], f"{target_name(path)}[{missing}] is not mapped: "
                                             "the elements of an array are numbered from 0 "
                                             "without a gap"))
    return problems


def _a(kind: str) -> str:
    return "an array" if kind == "array" else "an object"


class _Elements(dict[int, Any]):
    """An array being built: index → element, made a list by :func:`closed`."""


def assign(out: dict[str, Any], target: Target, value: Any) -> None:
    """Put ``value`` at ``target`` in ``out``, making the objects and arrays on the way.
    An object already there is copied before it is extended: it may be the input
    record's own (``"billing": "address"``, then ``"billing.country"``)."""
    node: Any = out
    for segment, following in pairwise(target):
        child = node.get(segment)
        if isinstance(following, int):
            child = child if isinstance(child, _Elements) else _Elements()
        else:
            child = dict(child) if isinstance(child, dict) and not isinstance(
                child, _Elements) else {}
        node[segment] = child
        node = child
    node[target[-1]] = value


def closed(value: Any) -> Any:
    """``value`` with every array :func:`assign` built made a list of its elements in
    index order (an index no field filled is no element: the array closes up)."""
    if isinstance(value, _Elements):
        return [closed(value[index]) for index in sorted(value)]
    if isinstance(value, dict):
        return {key: closed(item) for key, item in value.items()}
    return value
