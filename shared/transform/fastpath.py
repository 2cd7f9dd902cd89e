"""A fast evaluator for the path expressions mappings are made of, with JSONata's
semantics, for the inputs it is sure about.

jsonata-python takes ~25 µs for ``addresses[isBilling][0].city`` — most of a
record's transform. :func:`compile_path` turns such an expression (from its
parsed AST) into a Python function when the expression is only:

* field steps (``a.b.c``), each with optional stages that are either an integer
  index (``[0]``, ``[-1]``) or a filter on a field path (``[isBilling]``,
  ``[address.primary]``).

:func:`compile_expression` adds what mappings build from such paths
(``billingAddress ? [{'type': 'billing', 'city': billingAddress.city}] : []``,
``$bssId('account', parentCompanyId)``): string, number, ``true``/``false``/``null``
literals, a condition (``c ? a : b``), an array constructor, an object constructor
with literal keys, and a call of one of bss-sync's helper functions; its parts
are these or paths. jsonata-python takes ~100 to 400 µs for the first, ~50 µs for
the second.

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


def _evaluate(steps: tuple[Step, ...], data: Any, *, objects: bool = False) -> Any:
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
    if isinstance(result, _SCALARS) or (objects and isinstance(result, dict)):
        return result
    return FALLBACK


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


# -- expressions built of paths ---------------------------------------------------------

Node = Callable[[dict[str, Any]], Any]  # the record → a value, _MISSING or FALLBACK


def compile_expression(ast: Any, undefined: Any, functions: dict[str, Callable[..., Any]],
                       null: Any) -> Callable[[Any], Any] | None:
    """The fast function for an expression made of literals, conditions, array and
    object constructors, calls of ``functions`` and paths (it returns ``undefined``
    when the expression yields nothing, ``None`` for JSON null), or ``None`` when the
    expression is outside that subset. ``null`` is jsonata-python's null, which a
    function is given for a ``null`` literal as jsonata-python gives it."""
    node = _node(ast, functions, null)
    if node is None:
        return None

    def evaluate(data: Any) -> Any:
        if not isinstance(data, dict):
            return FALLBACK
        result = node(data)
        return undefined if result is _MISSING else result

    return evaluate


def _node(ast: Any, functions: dict[str, Callable[..., Any]], null: Any) -> Node | None:
    kind = getattr(ast, "type", None)
    if kind == "path":
        steps = _path_steps(ast, allow_stages=True)
        if steps is None:
            return None
        frozen = tuple(steps)
        return lambda data: _evaluate(frozen, data, objects=True)
    if kind in ("string", "number") and _plain(ast):
        value = ast.value
        if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)
                                 or not math.isfinite(value)):
            return None
        return lambda data: value
    if kind == "value" and _plain(ast):
        if ast.value is None:
            return lambda data: None
        if isinstance(ast.value, bool):
            constant = ast.value
            return lambda data: constant
        return None
    if kind == "condition" and _plain(ast, "condition", "then", "_else"):
        return _condition(ast, functions, null)
    if kind == "unary" and ast.value == "[" and _plain(ast, "expressions", "consarray"):
        return _array(ast, functions, null)
    if kind == "unary" and ast.value == "{" and _plain(ast, "lhs_object"):
        return _object(ast, functions, null)
    if kind == "function" and _plain(ast, "procedure", "arguments"):
        return _call(ast, functions, null)
    return None


def _condition(ast: Any, functions: dict[str, Callable[..., Any]], null: Any) -> Node | None:
    test = _node(ast.condition, functions, null)
    then = _node(ast.then, functions, null)
    otherwise = (lambda data: _MISSING) if ast._else is None \
        else _node(ast._else, functions, null)
    if test is None or then is None or otherwise is None:
        return None

    def condition(data: dict[str, Any]) -> Any:
        truth = _truth(test(data))
        if truth is FALLBACK:
            return FALLBACK
        return then(data) if truth else otherwise(data)

    return condition


def _truth(value: Any) -> Any:
    """JSONata's ``$boolean`` for the values this module produces (FALLBACK for arrays:
    true when any member is, a rule not worth repeating here)."""
    if value is FALLBACK or isinstance(value, list):
        return FALLBACK
    if value is _MISSING or value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | str | dict):
        return bool(value)
    return FALLBACK


def _array(ast: Any, functions: dict[str, Callable[..., Any]], null: Any) -> Node | None:
    members = [_node(e, functions, null) for e in ast.expressions or ()]
    if any(m is None for m in members):
        return None

    def array(data: dict[str, Any]) -> Any:
        out = []
        for member in members:
            value = member(data)  # type: ignore[misc]
            if value is FALLBACK or isinstance(value, list):
                return FALLBACK  # JSONata splices arrays in: not ours
            if value is not _MISSING:
                out.append(value)
        return out

    return array


def _object(ast: Any, functions: dict[str, Callable[..., Any]], null: Any) -> Node | None:
    pairs: list[tuple[str, Node, bool]] = []
    for pair in ast.lhs_object or ():
        if len(pair) != 2 or getattr(pair[0], "type", None) != "string" or not _plain(pair[0]):
            return None
        key, value = pair[0].value, _node(pair[1], functions, null)
        if value is None or any(key == k for k, _, _ in pairs):
            return None  # a repeated key is JSONata's error to word
        built = getattr(pair[1], "type", None) == "unary" and pair[1].value == "["
        pairs.append((key, value, built))

    def construct(data: dict[str, Any]) -> Any:
        out = {}
        for key, member, built in pairs:
            value = member(data)
            if value is FALLBACK or (isinstance(value, list) and not built):
                return FALLBACK
            if value is not _MISSING:
                out[key] = value
        return out

    return construct


def _call(ast: Any, functions: dict[str, Callable[..., Any]], null: Any) -> Node | None:
    procedure = ast.procedure
    if getattr(procedure, "type", None) != "variable" or not _plain(procedure):
        return None
    function = functions.get(procedure.value)
    if function is None:
        return None
    arguments = []
    for argument in ast.arguments or ():
        if getattr(argument, "type", None) == "value" and argument.value is None:
            arguments.append(lambda data: null)  # JSONata hands a function its null
            continue
        compiled = _node(argument, functions, null)
        if compiled is None or getattr(argument, "type", None) not in (
                "path", "string", "number", "value"):
            return None
        arguments.append(compiled)

    def call(data: dict[str, Any]) -> Any:
        values = []
        for argument in arguments:
            value = argument(data)
            if value is FALLBACK or isinstance(value, list | dict):
                return FALLBACK
            values.append(None if value is _MISSING else value)
        result = function(*values)
        if result is None:
            return _MISSING
        if result is null:
            return None
        return result if isinstance(result, _SCALARS) else FALLBACK

    return call
