"""The quick validity check (``shared.schema_inline`` behind ``shared.schemas.validator``)
says "valid" exactly when jsonschema with the schema as written does: a differential
test over records of every entity made by the sandbox's factory, and many mutations of
each (wrong types, bad formats, values out of their enums, missing and unknown fields,
nested objects broken). The errors of an invalid record are the validator's own."""

from __future__ import annotations

import copy
import random
from datetime import date
from typing import Any

import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sandbox.factory import RecordFactory
from shared.schema_inline import inline_refs
from shared.schemas import ENTITIES, validator

WRONG_VALUES: list[Any] = [None, "", "not an email", "2025-13-45", -1, 1.5, 10**12, True,
                           [], {}, ["x"], {"type": "nope"}, "x" * 300]


def records(seed: int) -> dict[str, list[dict[str, Any]]]:
    make = RecordFactory(random.Random(seed), date(2025, 6, 30))
    found: dict[str, list[dict[str, Any]]] = {e: [] for e in ENTITIES}
    for i in range(2):
        product = {**make.product(i), "id": f"prd_{i}"}
        account = {**make.account(i), "id": f"acc_{i}"}
        contact = {**make.contact(account), "id": f"con_{i}"}
        order = {**make.order(account, contact, [product]), "id": f"ord_{i}"}
        invoice = {**make.invoice(account, contact, order, [product]), "id": f"inv_{i}"}
        found["product"].append(product)
        found["account"].append(account)
        found["contact"].append(contact)
        found["order"].append(order)
        found["invoice"].append(invoice)
        found["payment"].append(make.payment(invoice, account))
        found["subscription"].append(make.subscription(account, product))
        found["case"].append(make.case(account, contact))
    return found


def mutations(record: dict[str, Any], rng: random.Random) -> list[Any]:
    """The record with one thing broken (or changed) at a time, at the top and one
    level down (objects and the first item of arrays)."""
    out: list[Any] = [record, {}, [], "text", None]
    paths: list[tuple[Any, ...]] = [(key,) for key in record]
    for key, value in record.items():
        if isinstance(value, dict):
            paths += [(key, sub) for sub in value]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            paths += [(key, 0, sub) for sub in value[0]]
    for path in paths:
        for wrong in rng.sample(WRONG_VALUES, 5):
            changed = copy.deepcopy(record)
            target = changed
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = wrong
            out.append(changed)
        removed = copy.deepcopy(record)
        target = removed
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        out.append(removed)
    out.append({**record, "unknownField": 1})
    return out


@pytest.mark.parametrize("entity", ENTITIES)
def test_the_quick_check_says_valid_exactly_when_jsonschema_does(entity: str) -> None:
    check = validator(f"entities/{entity}")
    assert check.quick is not None, "entity schemas have their references put in place"
    rng = random.Random(entity)
    seen = {True: 0, False: 0}
    for record in records(len(entity))[entity]:
        for document in mutations(record, rng):
            expected = check.checker.is_valid(document)
            assert check.quick.is_valid(document) == expected, document
            assert check.is_valid(document) == expected
            errors = [e.message for e in check.iter_errors(document)]
            assert errors == [e.message for e in check.checker.iter_errors(document)]
            seen[expected] += 1
    assert seen[True] >= 4 and seen[False] >= 50, seen  # both kinds were tried


def test_a_schema_whose_references_cannot_be_put_in_place_is_checked_as_written() -> None:
    assert validator("connector").quick is None  # recursive / dynamic references
    known = Registry().with_resources([
        ("https://x.test/a.json", Resource.from_contents(
            {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
             "$ref": "#/$defs/n"}, default_specification=DRAFT202012))])
    schema = known.contents("https://x.test/a.json")
    assert inline_refs(schema, "https://x.test/a.json", known) is None
    assert inline_refs({"$ref": "missing.json"}, "https://x.test/a.json", known) is None
    assert inline_refs({"unevaluatedProperties": False}, "https://x.test/a.json", known) is None


def test_a_reference_beside_other_keywords_keeps_both() -> None:
    known = Registry().with_resources([
        ("https://x.test/common.json", Resource.from_contents(
            {"$defs": {"code": {"type": "string", "maxLength": 3}}},
            default_specification=DRAFT202012))])
    inlined = inline_refs({"properties": {"c": {"$ref": "common.json#/$defs/code",
                                                "minLength": 2}}},
                          "https://x.test/entity.json", known)
    assert inlined == {"properties": {"c": {"minLength": 2, "allOf": [
        {"type": "string", "maxLength": 3}]}}}
