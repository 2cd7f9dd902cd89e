"""A fast evaluator for the path expressions mappings are made of, with JSONata's
semantics, for the inputs it is sure about.

jsonata-python takes ~25 µs for ``addresses[isBilling][0].city`` — most of a
record's transform. :func:`compile_path` turns such an expression (from its
parsed AST) into a Python function when the expression is only:

* field steps (``a.b.c``), each with optional stages that are either an integer
  index (``[0]``, ``[-1]``) or a filter on a field path (``[isBilling]``,
  ``[address.primary]``).

The function walks the record and returns the result, or :data:`FALLBACK` as soon
as it meets something whose JSONata semantics it does not reproduce — a ``null``,
a number or object as a filter value (JSONata reads numbers as indexes there), an
array where an object was expected, several results — and the caller then asks
jsonata itself. A differential test compares the two on generated records.
``TRANSFORM_PATHS=jsonata`` leaves every expression to jsonata
(:class:`shared.transform.expressions.Expression`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

FALLBACK: Any = object()
_MISSING: Any = object()  # "no value" inside this module; the caller's UNDEFINED outside

Stage = tuple[str, Any]  # ("index", int) or ("filter", tuple of field names)
Step = tuple[str, tuple[Stage, ...]]
_NODE_KEYS = frozenset({"_outer_instance", "id", "type", "value", "position"})
_SCALARS = (str, int, float, bool)


def compile_path(ast: Any, undefined: Any) -> Callable[[Any], Any] | None:
    """The fast function for ``ast`` (it returns ``undefined`` when the path yields
    nothing), or ``None`` when the expression is outside the subset."""
    steps = _path_steps(ast, allow_stages=True)
    if steps is None:
        return None
    frozen = tuple(steps)

    def evaluate(data: Any) -> Any:
        result = _evaluate(frozen, data)
        return undefined if result is _MISSING else result

    return evaluate


def _plain(node: Any, *extra: str) -> bool:
    """The node has no attribute beyond the basic ones and ``extra`` (no keep-array,
    grouping, focus, index binding, tuple stream, predicate…)."""
    attributes = getattr(node, "__dict__", None)
    if attributes is None:
        return False
    allowed = _NODE_KEYS.union(extra)
    return all(key in allowed for key, value in attributes.items() if value not in (None, False))


def _path_steps(node: Any, *, allow_stages: bool) -> list[Step] | None:
    if getattr(node, "type", None) != "path" or not _plain(node, "steps"):
        return None
    steps: list[Step] = []
    for step in node.steps or ():
        if (getattr(step, "type", None) != "name" or not isinstance(step.value, str)
                or not _plain(step, "stages")):
            return None
        stages: list[Stage] = []
        for stage in getattr(step, "stages", None) or ():
            if not allow_stages or getattr(stage, "type", None) != "filter" \
                    or not _plain(stage, "expr"):
                return None
            compiled = _stage(stage.expr)
            if compiled is None:
                return None
            stages.append(compiled)
        steps.append((step.value, tuple(stages)))
    return steps or None


def _stage(expr: Any) -> Stage | None:
    if getattr(expr, "type", None) == "number" and _plain(expr):
        value = expr.value
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            return None
        return ("index", math.floor(value))
    predicate = _path_steps(expr, allow_stages=False)
    if predicate is None:
        return None
    return ("filter", tuple(name for name, _ in predicate))


def _evaluate(steps: tuple[Step, ...], data: Any) -> Any:
    if not isinstance(data, dict):
        return FALLBACK
    sequence: list[Any] = [data]
    last = len(steps) - 1
    for number, (name, stages) in enumerate(steps):
        found: list[Any] = []
        for item in sequence:
            if not isinstance(item, dict):
                return FALLBACK
            if name not in item:
                continue
            value = item[name]
            if stages:
                if isinstance(value, dict):
                    value = [value]
                elif not isinstance(value, list):
                    return FALLBACK
                for stage in stages:
                    value = _apply(stage, value)
                    if value is FALLBACK:
                        return FALLBACK
                found.extend(value)
            elif value is None:
                return FALLBACK
            elif isinstance(value, list):
                if number == last:
                    return FALLBACK  # JSONata keeps a last-step array whole: not ours
                found.extend(value)
            else:
                found.append(value)
        if not found:
            return _MISSING
        sequence = found
    if len(sequence) != 1:
        return FALLBACK  # a sequence of several values
    result = sequence[0]
    return result if isinstance(result, _SCALARS) else FALLBACK


def _apply(stage: Stage, items: list[Any]) -> Any:
    kind, argument = stage
    if kind == "index":
        index = argument + len(items) if argument < 0 else argument
        if not 0 <= index < len(items):
            return []
        item = items[index]
        return FALLBACK if isinstance(item, list) else [item]
    kept = []
    for item in items:
        if not isinstance(item, dict):
            return FALLBACK
        value: Any = item
        for key in argument:
            if not isinstance(value, dict):
                return FALLBACK
            if key not in value:
                value = _MISSING
                break
            value = value[key]
        if value is _MISSING:
            continue
        if isinstance(value, bool | str):
            if value:
                kept.append(item)
        else:  # numbers are indexes in JSONata filters; null, arrays, objects: not ours
            return FALLBACK
    return kept
