"""The fast path evaluator gives JSONata's answer whenever it answers at all.

Differential: generated records of every shape (arrays, objects, scalars, nulls,
missing fields) through generated path expressions, the fast result compared with
jsonata-python's. The fast path may decline (FALLBACK); it may never differ.
"""

from __future__ import annotations

import random
from typing import Any

import jsonata
import pytest

from shared.settings import get_settings
from shared.transform import TransformContext, build_transform
from shared.transform.expressions import JSONATA_NULL, UNDEFINED, Expression, to_python
from shared.transform.fastpath import FALLBACK

EXPRESSIONS = [
    "a.b", "a.b.c", "a[0]", "a[-1]", "a[1].b", "a[5].b", "a[flag]", "a[flag][0]",
    "a[flag][0].b", "a[flag].b", "a[b.flag][0].c", "a[0][0]", "a[flag][1].name",
    "a.b[flag].c", "a[0.5].b", "a[-2].name", "a[flag][-1].name", "a.b[0].c",
    "addresses[isBilling][0].line1", "a[flag][flag].b", "a[0].b[flag][0].c",
]
KEYS = ["a", "b", "c", "flag", "name", "isBilling", "addresses", "line1"]


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.35:
        return rng.choice([None, True, False, 0, 1, 2, -1, 1.5, "", "x", "false", "0"])
    if roll < 0.7:
        return _object(rng, depth + 1)
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _object(rng: random.Random, depth: int) -> dict[str, Any]:
    return {key: _value(rng, depth) for key in rng.sample(KEYS, rng.randint(0, len(KEYS)))}


def _jsonata(expression: Expression, data: Any) -> Any:
    try:
        return to_python(expression._compiled.evaluate(data))
    except Exception as exc:
        return ("raised", type(exc).__name__)


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_the_fast_path_agrees_with_jsonata(source: str) -> None:
    expression = Expression(source, fast=True)
    # plain field paths (a.b.c) have a fast path of their own, inside evaluate()
    fast_path = expression._fast or expression.evaluate
    assert expression._fast is not None or expression._path is not None
    rng = random.Random(source)
    answered = 0
    for _ in range(1500):
        record = _object(rng, 0)
        if rng.random() < 0.5:  # the shapes mappings meet most: lists of objects
            record["a"] = [_object(rng, 2) for _ in range(rng.randint(0, 3))]
        fast = fast_path(record)
        if fast is FALLBACK:
            continue
        answered += 1
        expected = _jsonata(expression, record)
        assert fast == expected and type(fast) is type(expected), (source, record)
    assert answered > 150, f"the fast path answered only {answered} times"


def test_expressions_outside_the_subset_are_left_to_jsonata() -> None:
    for source in ["a[b=1]", "a.b[]", "$lowercase(a)", "a#$i.b", "a@$x.b", "a^(b)",
                   "a{'b': c}", "a[[0..1]]", "a[$x]", "a.(b)", "a.*", "a.**.b", "$.a[0]",
                   "a[flag or b]", "a[-flag]"]:
        assert Expression(source, fast=True)._fast is None, source
    assert Expression("name", fast=True)._fast is None  # plain fields have their own path


def test_a_mapping_with_filters_gives_the_same_payload() -> None:
    record = {"addresses": [{"type": "shipping", "line1": "1 Dock Road"},
                            {"isBilling": True, "line1": "2 Main St", "city": "Paris"},
                            {"isBilling": True, "line1": "3 Other St"}]}
    assert Expression("addresses[isBilling][0].line1").evaluate(record) == "2 Main St"
    assert Expression("addresses[isBilling][-1].line1").evaluate(record) == "3 Other St"
    assert Expression("addresses[isBilling][0].state").evaluate(record) is UNDEFINED
    assert Expression("addresses[isBilling].line1").evaluate(record) == ["2 Main St",
                                                                          "3 Other St"]


@pytest.mark.parametrize(("setting", "through_jsonata"), [("fast", 1), ("jsonata", 4)])
def test_transform_paths_decides_who_evaluates_a_mapping(
        setting: str, through_jsonata: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Observable, not read back: how many of a mapping's expressions reach jsonata."""
    monkeypatch.setenv("TRANSFORM_PATHS", setting)
    get_settings.cache_clear()
    try:
        transform = build_transform("AccountToCompany", {"map": {
            "name": "name", "city": "billing.city",
            "street": "addresses[isBilling][0].line1", "web": "$lowercase(web)"}})
    finally:
        get_settings.cache_clear()
    evaluated: list[str] = []
    real = jsonata.Jsonata.evaluate
    monkeypatch.setattr(jsonata.Jsonata, "evaluate",
                        lambda self, *a: evaluated.append("jsonata") or real(self, *a))
    record = {"name": "ACME", "billing": {"city": "Paris"}, "web": "ACME.example",
              "addresses": [{"line1": "1 Dock Road"}, {"isBilling": True, "line1": "2 Main St"}]}
    assert transform.apply(record, TransformContext()) == {
        "name": "ACME", "city": "Paris", "street": "2 Main St", "web": "acme.example"}
    assert len(evaluated) == through_jsonata


# -- what mappings build of paths: literals, conditions, constructors, helper calls ----

BUILT = [
    "a ? 1 : 2", "a.b ? 'yes' : 'no'", "flag ? name", "b ? b : 'none'", "a ? a : 0",
    "a ? [{'k': a.b, 'n': null, 't': true, 'f': false, 'm': 2}] : []",
    "[a.b, c, 'x']", "[a[0], b]", "{'k': a.b, 'l': [c], 'o': b}", "{'a': a}", "[{}]",
    "$f('t', a.b, null)", "$f(name)", "$f(c, 1.5)", "flag ? $f('x', b) : null",
    "addresses[isBilling][0] ? [{'line1': addresses[isBilling][0].line1}] : []",
]


def _probe(*args: Any) -> Any:
    """A helper's contract: undefined in, nothing out; otherwise a scalar, or JSONata's
    null (the fast path must hand it the same arguments jsonata-python does)."""
    if any(a is None for a in args):
        return None
    if args and args[0] == 0:
        return JSONATA_NULL
    return "|".join(f"{type(a).__name__}:{a}" for a in args)


@pytest.mark.parametrize("source", BUILT)
def test_what_mappings_build_of_paths_agrees_with_jsonata(source: str) -> None:
    expression = Expression(source, {"f": _probe}, fast=True)
    assert expression._fast is not None, source
    rng = random.Random(source)
    answered = 0
    for _ in range(1500):
        record = _object(rng, 0)
        if rng.random() < 0.5:
            record["a"] = [_object(rng, 2) for _ in range(rng.randint(0, 3))]
        fast = expression._fast(record)
        if fast is FALLBACK:
            continue
        answered += 1
        expected = _jsonata(expression, record)
        assert fast == expected, (source, record)
        if not isinstance(expected, list | dict):
            assert type(fast) is type(expected), (source, record)
    assert answered > 150, f"the fast path answered only {answered} times"


def test_calls_of_functions_it_was_not_given_are_left_to_jsonata() -> None:
    for source in ["$string(a)", "$f(a)", "a ? $lowercase(b) : c", "{'k': $f(a)}",
                   "{a: 1}", "$f($g(a))", "a and b ? 1 : 2", "[1..3]"]:
        assert Expression(source, {"g": _probe}, fast=True)._fast is None, source
