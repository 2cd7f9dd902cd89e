"""Validation of records against the canonical entity schemas, as located problems.

Every problem is reported (not just the first), each with a JSON pointer into the
record and a plain sentence — the ``errors`` of a 422 problem+json. Validators are
compiled once per entity (:func:`shared.schemas.validator` caches them).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jsonschema import ValidationError
from jsonschema.exceptions import best_match

from shared.json_pointer import join_pointer
from shared.schema_errors import sentence_for
from shared.schemas import ENTITIES, validator


@dataclasses.dataclass(frozen=True, slots=True)
class FieldProblem:
    """One reason a record is invalid: where (JSON pointer) and why."""

    pointer: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail}


def warm_up() -> None:
    """Compile every entity validator now, so no request pays for it."""
    for entity in ENTITIES:
        validator(f"entities/{entity}")


def record_problems(entity: str, record: Any) -> list[FieldProblem]:
    """Every way ``record`` breaks ``entity``'s schema; empty when it is valid."""
    if not isinstance(record, dict):
        return [FieldProblem("", "the record must be a JSON object")]
    check = validator(f"entities/{entity}")
    problems: list[FieldProblem] = []
    seen: set[tuple[str, str]] = set()
    errors = sorted(check.iter_errors(record), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        for problem in _problems_of(_leaf(error), entity):
            key = (problem.pointer, problem.detail)
            if key not in seen:
                seen.add(key)
                problems.append(problem)
    return problems


def _leaf(error: ValidationError) -> ValidationError:
    """For ``anyOf [definition, null]`` the definition's own complaint, not "no branch"."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        relevant = [e for e in error.context
                    if not (e.validator == "type" and e.validator_value == "null")]
        deepest = best_match(relevant or error.context)
        if deepest is not None:
            return _leaf(deepest)
    return error


def _problems_of(error: ValidationError, entity: str) -> list[FieldProblem]:
    base = join_pointer("", *error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        missing = [n for n in error.validator_value if n not in instance]
        return [FieldProblem(join_pointer(base, n), "is required") for n in missing]
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = (error.schema.get("properties") or {}).keys()
        return [FieldProblem(join_pointer(base, k), _unknown_field(k, entity, base))
                for k in instance if k not in allowed]
    if error.validator == "format":
        return [FieldProblem(base, f"{instance!r} is not a valid {error.validator_value}")]
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        return [FieldProblem(base, f"{json.dumps(instance)} is not one of: {allowed}")]
    return [FieldProblem(base, sentence_for(error, {}))]


def _unknown_field(key: str, entity: str, base: str) -> str:
    if base:
        return f"unknown field {key!r}"
    return f"unknown field {key!r}: {entity} has no such property"

