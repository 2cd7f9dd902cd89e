"""Checking payloads against the schema they must satisfy.

Outbound bodies are checked against the operation's request schema (so a record
that would break the vendor's API is dead-lettered with a clear reason instead
of being sent); pulled records, once transformed, against the canonical entity
schema. Validators are built once per schema and cached.
"""

from __future__ import annotations

import functools
from typing import Any

from jsonschema.exceptions import ValidationError
from openapi_schema_validator import (
    OAS30WriteValidator,
    OAS31Validator,
    oas30_format_checker,
    oas31_format_checker,
)
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT202012

from shared.connector.document import ConnectorDocument
from shared.connector.openapi import Operation
from shared.json_pointer import join_pointer
from shared.schema_errors import explaining_branch
from shared.schemas import validator as schema_validator

_DOC_URI = "urn:bss-sync:connector"
MAX_ERRORS = 10


class PayloadChecker:
    """Validates bodies against one connector's request schemas."""

    def __init__(self, connector: ConnectorDocument) -> None:
        self._connector = connector
        is_31 = connector.openapi_version.startswith("3.1")
        spec = DRAFT202012 if is_31 else DRAFT4
        self._registry: Registry = Registry().with_resource(
            _DOC_URI, Resource.from_contents(connector.document, default_specification=spec)
        )
        self._validator_class = OAS31Validator if is_31 else OAS30WriteValidator
        self._format_checker = oas31_format_checker if is_31 else oas30_format_checker
        self._cache: dict[str, Any] = {}

    def request_errors(self, operation: Operation, body: Any) -> list[str]:
        """Readable violations of ``operation``'s request schema (empty when valid)."""
        validator = self._validator(operation)
        return [] if validator is None else describe_errors(validator.iter_errors(body))

    def request_violations(self, operation: Operation, body: Any) -> list[tuple[str, str]]:
        """``(pointer, sentence)`` of each violation of ``operation``'s request schema."""
        validator = self._validator(operation)
        return [] if validator is None else located_errors(validator.iter_errors(body))

    def _validator(self, operation: Operation) -> Any:
        pointer = operation.request_schema_pointer
        if pointer is None or operation.request_schema is None:
            return None
        validator = self._cache.get(pointer)
        if validator is None:
            validator = self._validator_class(
                {"$ref": f"{_DOC_URI}#{pointer}"},
                registry=self._registry,
                format_checker=self._format_checker,
            )
            self._cache[pointer] = validator
        return validator


def entity_errors(entity: str, record: Any) -> list[str]:
    """Readable violations of the canonical ``entity`` schema (empty when valid)."""
    return describe_errors(_entity_validator(entity).iter_errors(record))


def entity_violations(entity: str, record: Any) -> list[tuple[str, str]]:
    """``(pointer, sentence)`` of each violation of the canonical ``entity`` schema."""
    return located_errors(_entity_validator(entity).iter_errors(record))


@functools.cache
def _entity_validator(entity: str) -> Any:
    return schema_validator(f"entities/{entity}")


def describe_errors(errors: Any) -> list[str]:
    """``at /lines/0/quantity: -1 is less than the minimum of 0`` — one per error; a
    value failing a nullable field is told what the non-null schema wants."""
    return [f"at {where or '/'}: {message}" for where, message in located_errors(errors)]


def located_errors(errors: Any) -> list[tuple[str, str]]:
    """``(pointer, sentence)`` of each error (at most ``MAX_ERRORS``), as
    :func:`describe_errors` words them; the document's root is ``""``."""
    out = []
    for error in errors:
        leaf = _leaf(error)
        out.append((join_pointer("", *[str(p) for p in leaf.absolute_path]), _message(leaf)))
        if len(out) >= MAX_ERRORS:
            break
    return out


def _leaf(error: ValidationError) -> ValidationError:
    if error.validator in ("anyOf", "oneOf") and error.context:
        best = explaining_branch(error)
        if best is not None:
            return _leaf(best)
    return error


def _message(error: ValidationError) -> str:
    """jsonschema's message, without ``'null'`` among the types a value that is not
    null failed (``type: [string, null]``: the value is not a string)."""
    types = error.validator_value
    if (error.validator == "type" and isinstance(types, list) and "null" in types
            and error.instance is not None and len(types) > 1):
        wanted = ", ".join(repr(t) for t in types if t != "null")
        return f"{error.instance!r} is not of type {wanted}"
    return error.message
