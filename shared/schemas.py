"""The language-neutral contracts under ``schemas/``, loaded for Python.

Every ``*.schema.json`` under :func:`shared.paths.schemas_dir` is a draft 2020-12
JSON Schema with an ``$id`` under ``https://bss-sync.dev/schemas/`` that mirrors its
path, so relative ``$ref`` s between files (``common.schema.json#/$defs/address``)
resolve offline through :func:`registry`. ``bss-api.openapi.json`` is registered
too, so its ``#/components/schemas/...`` can be referenced like a schema.

Loaded documents, the registry and validators are cached per schemas directory.
The returned dicts are shared: treat them as read-only.

Names are paths relative to the schemas directory without the suffix:
``"bss-event"``, ``"sync-message"``, ``"connector"``, ``"entities/account"``,
``"bss-api.openapi"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from shared.paths import SCHEMAS_ENV, schemas_dir
from shared.schema_inline import inline_refs
from shared.settings import get_setting

__all__ = [
    "BASE_URI",
    "ENTITIES",
    "SchemaValidator",
    "entity_schema",
    "load_schema",
    "registry",
    "schema_uri",
    "validator",
]

ENTITIES: tuple[str, ...] = (
    "account",
    "contact",
    "order",
    "invoice",
    "product",
    "payment",
    "case",
    "subscription",
)
"""The 8 canonical entities, in the order bss-sync processes and lists them."""

BASE_URI = "https://bss-sync.dev/schemas/"
"""Base of every schema ``$id``; a file's URI is this plus its relative path."""

_SUFFIXES = (".schema.json", ".json")


def load_schema(name: str) -> dict[str, Any]:
    """The parsed document called ``name`` (``"bss-event"``, ``"entities/account"``).

    ``name`` is a ``/``-separated path relative to the schemas directory, with or
    without its ``.schema.json`` / ``.json`` suffix. Cached; do not mutate the result.

    Raises ``FileNotFoundError`` when no such document exists (or ``name`` tries to
    leave the schemas directory) and ``ValueError`` when the file is not a JSON object.
    """
    return _read(_resolve(schemas_dir(), name))


def entity_schema(entity: str) -> dict[str, Any]:
    """The canonical JSON Schema of ``entity`` (one of :data:`ENTITIES`).

    Raises ``KeyError`` naming the known entities when ``entity`` is not one of them.
    """
    if entity not in ENTITIES:
        raise KeyError(f"unknown entity {entity!r}; known entities: {', '.join(ENTITIES)}")
    return load_schema(f"entities/{entity}")


def schema_uri(name: str) -> str:
    """The URI the document ``name`` is registered under in :func:`registry`.

    Its ``$id`` when it declares one, else ``BASE_URI`` + its relative path.
    Raises like :func:`load_schema`.
    """
    directory = schemas_dir()
    return _uri_for(directory, _resolve(directory, name))


def registry() -> Registry:
    """A registry of every ``*.schema.json`` and ``*.openapi.json`` document, by ``$id``.

    Each file is also registered under ``BASE_URI`` + its relative path, so relative
    ``$ref`` s resolve even from a file without ``$id``, and ``$ref`` s into the
    OpenAPI document (``bss-api.openapi.json#/components/schemas/Problem``) work.
    Nothing is fetched over the network: an unknown URI raises
    ``referencing.exceptions.Unresolvable``.
    """
    return _registry(schemas_dir())


class SchemaValidator:
    """jsonschema's draft 2020-12 validator of one schema, answering "valid" sooner.

    ``iter_errors``, ``is_valid`` and ``validate`` first ask a quick validator: while
    ``SCHEMA_CHECKS`` is ``fast`` (the default), jsonschema-rs compiled from a copy of
    the schema with its references in place (:mod:`shared.schema_inline`; ~1 µs for
    an account, against ~70 µs), else jsonschema on that copy (about half the cost of
    the schema as written). A document the quick validator refuses — and any other use
    — goes to the validator of the schema as written (:attr:`checker`), whose errors
    are the ones reported: the quick one only ever says "valid" sooner, so it must never
    be more lenient (``tests/unit/test_schemas.py`` holds jsonschema-rs to that on the
    entity schemas). A schema whose references cannot be put in place is checked by
    ``checker`` alone.
    """

    __slots__ = ("checker", "quick")

    def __init__(self, checker: Draft202012Validator,
                 quick: Draft202012Validator | None) -> None:
        self.checker = checker
        self.quick = quick

    @property
    def schema(self) -> Any:
        return self.checker.schema

    def iter_errors(self, instance: Any) -> Iterator[ValidationError]:
        """Every error of ``instance`` (none when it is valid)."""
        if self.quick is not None and self.quick.is_valid(instance):
            return iter(())
        return self.checker.iter_errors(instance)

    def is_valid(self, instance: Any) -> bool:
        if self.quick is not None and self.quick.is_valid(instance):
            return True
        return self.checker.is_valid(instance)

    def validate(self, instance: Any) -> None:
        """Raise the ``ValidationError`` jsonschema raises when ``instance`` is invalid."""
        if self.quick is None or not self.quick.is_valid(instance):
            self.checker.validate(instance)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.checker, name)


def validator(name: str) -> SchemaValidator:
    """A cached draft 2020-12 validator for the schema ``name``, with format checks.

    References resolve through :func:`registry`; ``date``, ``date-time`` and
    ``email`` formats are asserted (``date-time`` through ``rfc3339-validator``,
    which ``openapi-spec-validator`` installs). Raises like :func:`load_schema`, and
    ``jsonschema.exceptions.SchemaError`` when the schema itself is invalid.
    """
    key = (os.environ.get(SCHEMAS_ENV), name)
    found = _validators.get(key)
    if found is None:  # the directory and the file are looked up once per name
        directory = schemas_dir()
        found = _validators[key] = _validator(directory, _resolve(directory, name))
    return found


#: ``validator``'s answers by (``BSS_SYNC_SCHEMAS``, name): a call per pulled record
#: would otherwise stat the directory and the file each time (~25 µs).
_validators: dict[tuple[str | None, str], SchemaValidator] = {}


@cache
def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a schema document must be a JSON object")
    return document


def _resolve(directory: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise FileNotFoundError(f"invalid schema name {name!r}: use a path like 'entities/account'")
    candidates = [name] if name.endswith(".json") else [name + s for s in _SUFFIXES]
    for candidate in candidates:
        path = directory.joinpath(*PurePosixPath(candidate).parts)
        if path.is_file():
            return path
    known = ", ".join(_name_of(directory, p) for p in _documents(directory))
    raise FileNotFoundError(f"no schema named {name!r} under {directory} (known: {known})")


def _documents(directory: Path) -> list[Path]:
    found = {*directory.rglob("*.schema.json"), *directory.rglob("*.openapi.json")}
    return sorted(p for p in found if p.is_file())


def _name_of(directory: Path, path: Path) -> str:
    relative = path.relative_to(directory).as_posix()
    return relative.removesuffix(".schema.json").removesuffix(".json")


def _uri_for(directory: Path, path: Path) -> str:
    declared = _read(path).get("$id")
    if isinstance(declared, str) and declared:
        return declared
    return BASE_URI + path.relative_to(directory).as_posix()


@cache
def _registry(directory: Path) -> Registry:
    resources: dict[str, Resource[Any]] = {}
    for path in _documents(directory):
        resource = Resource.from_contents(_read(path), default_specification=DRAFT202012)
        resources[_uri_for(directory, path)] = resource
        resources.setdefault(BASE_URI + path.relative_to(directory).as_posix(), resource)
    return Registry().with_resources(resources.items()).crawl()


@cache
def _validator(directory: Path, path: Path) -> SchemaValidator:
    schema = _read(path)
    Draft202012Validator.check_schema(schema)
    known = _registry(directory)
    checker = Draft202012Validator(
        schema, registry=known, format_checker=Draft202012Validator.FORMAT_CHECKER)
    inlined = inline_refs(schema, _uri_for(directory, path), known)
    if inlined is None:
        return SchemaValidator(checker, None)
    quick = _rust_validator(inlined) if get_setting("schema_checks") == "fast" else None
    if quick is None:
        quick = Draft202012Validator(
            inlined, registry=known, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return SchemaValidator(checker, quick)


def _rust_validator(inlined: dict[str, Any]) -> Any:
    """jsonschema-rs's validator of a self-contained schema; None when it cannot compile
    it (jsonschema alone then). Formats are asserted by jsonschema's own format
    functions: jsonschema-rs's differ (it takes ``23:59:60`` for a valid time)."""
    import jsonschema_rs

    try:
        return jsonschema_rs.Draft202012Validator(
            inlined, validate_formats=True, formats=_jsonschema_formats())
    except Exception:  # a schema jsonschema-rs does not support: the slower path
        return None


@cache
def _jsonschema_formats() -> dict[str, Any]:
    """Every format ``Draft202012Validator.FORMAT_CHECKER`` asserts, as ``str → bool``."""
    def asserting(check: Any, raises: Any) -> Any:
        def conforms(value: str) -> bool:
            try:
                return bool(check(value))
            except raises:
                return False
        return conforms

    return {name: asserting(check, raises) for name, (check, raises)
            in Draft202012Validator.FORMAT_CHECKER.checkers.items()}
