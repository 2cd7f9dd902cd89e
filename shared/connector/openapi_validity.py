"""Is a document valid OpenAPI 3.0 / 3.1? Every problem, each at its real JSON pointer.

Vendors publish large specs (megabytes) with defects in parts a connector never uses;
``bss-sync validate`` must list them all — the loader then makes those outside what the
connector reaches warnings (``shared.connector.reach``) — within a few seconds. So:

* the structure is checked against the OpenAPI meta-schema that openapi-spec-validator
  ships, by jsonschema-rs (compiled: ~40 ms for a 2 MB spec where jsonschema takes
  seconds); a failed ``oneOf``/``anyOf`` (Reference or Parameter…) is explained by the
  branch the value meant, not "is not valid under any of the given schemas";
* what a meta-schema cannot say is checked here, on the plain document: ``$ref``s that
  point at nothing, operationIds used twice, a parameter declared twice, a path
  parameter the path does not have (or a ``{name}`` no parameter declares), a
  ``default`` of another type than its schema's.

Nothing here raises on a malformed document: every finding is a ``Problem``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

from shared.connector.openapi import HTTP_METHODS, check_refs, deref
from shared.connector.problems import Problem
from shared.json_pointer import join_pointer

MAX_PROBLEMS = 2000
_MESSAGE_CHARS = 300
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,),
}


def version_problem(document: Any) -> Problem | None:
    """The one problem of a document that is not OpenAPI 3.0 / 3.1 at all, else ``None``."""
    if not isinstance(document, dict):
        return Problem("", "is not an OpenAPI document (the top level is not an object)")
    version = document.get("openapi")
    if isinstance(version, str) and re.match(r"^3\.[01]\.\d+", version):
        return None
    if "swagger" in document:
        return Problem("/swagger", "is Swagger 2.0; bss-sync needs OpenAPI 3.0 or 3.1 "
                                   "(convert it, e.g. with swagger2openapi)")
    return Problem("/openapi" if "openapi" in document else "",
                   f"is not OpenAPI 3.0/3.1 ('openapi' is {version!r}; "
                   'expected a version like "3.0.3" or "3.1.0")')


def openapi_problems(document: Any) -> list[Problem]:
    """Every problem of ``document`` as OpenAPI 3.0.x / 3.1.x, each at its JSON pointer
    (at most ``MAX_PROBLEMS``); only :func:`version_problem` when it is not OpenAPI 3."""
    wrong_version = version_problem(document)
    if wrong_version is not None:
        return [wrong_version]
    problems = check_refs(document)
    problems += _structure(document, str(document["openapi"]))
    problems += _semantics(document)
    return problems[:MAX_PROBLEMS]


# -- structure: the meta-schema -----------------------------------------------------------


@cache
def _meta_validator(minor: str) -> Any:
    import jsonschema_rs
    from openapi_spec_validator.schemas import schema_v30, schema_v31

    schema = json.loads(json.dumps(dict(schema_v31 if minor == "3.1" else schema_v30)))
    # formats (a contact's email…) are not checked, as jsonschema did not by default
    if minor == "3.1":
        return jsonschema_rs.validator_for(schema, validate_formats=False)
    return jsonschema_rs.Draft4Validator(schema, validate_formats=False)


def _structure(document: dict[str, Any], version: str) -> list[Problem]:
    validator = _meta_validator("3.1" if version.startswith("3.1") else "3.0")
    problems = []
    try:
        for error in validator.iter_errors(document):
            leaf = _explaining(error)
            pointer = join_pointer("", *[str(p) for p in leaf.instance_path])
            if type(leaf.kind).__name__ == "UniqueItems" and pointer.endswith("/parameters"):
                continue  # _parameter_list names the parameter declared twice
            problems.append(Problem(pointer, f"OpenAPI: {_sentence(leaf)}"))
            if len(problems) >= MAX_PROBLEMS:
                break
    except Exception as exc:  # the validator can fail on odd documents; never a traceback
        problems.append(Problem("", f"OpenAPI validation stopped: {_short(str(exc))}"))
    return problems


def _explaining(error: Any) -> Any:
    """For a failed ``oneOf``/``anyOf``, the error of the branch the value meant: not the
    Reference branch's "``$ref`` is required" (unless that is all there is), the branch
    complaining deepest, then with the fewest complaints."""
    branches = getattr(error.kind, "context", None)
    if type(error.kind).__name__ not in ("OneOfNotValid", "AnyOf") or not branches:
        return error
    meant = [b for b in branches if b and not _only_wants_ref(b)] or [b for b in branches if b]
    if not meant:
        return error
    best = max(meant, key=lambda b: (max(len(e.instance_path) for e in b), -len(b)))
    return _explaining(max(best, key=lambda e: len(e.instance_path)))


def _only_wants_ref(branch: list[Any]) -> bool:
    return all(type(e.kind).__name__ == "Required" and getattr(e.kind, "property", None)
               == "$ref" for e in branch)


def _sentence(error: Any) -> str:
    kind = type(error.kind).__name__
    if kind == "Required":
        return f"{getattr(error.kind, 'property', '?')!r} is a required property"
    return _short(error.message)


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 3] + "..."


# -- semantics: what the meta-schema cannot say ------------------------------------------------


def _semantics(document: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    seen_ids: dict[str, str] = {}
    paths = document.get("paths")
    for path, item, item_pointer in _path_items(paths):
        shared = _parameter_list(document, item.get("parameters"),
                                 join_pointer(item_pointer, "parameters"), problems)
        for method in HTTP_METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict):
                continue
            pointer = join_pointer(item_pointer, method)
            _operation_id(operation, pointer, seen_ids, problems)
            own = _parameter_list(document, operation.get("parameters"),
                                  join_pointer(pointer, "parameters"), problems)
            _path_parameters(path, method, {**shared, **own}, pointer, problems)
    for pointer, schema in _schemas(document):
        _default_type(schema, pointer, problems)
    return problems


def _path_items(paths: Any) -> Iterator[tuple[str, dict[str, Any], str]]:
    if not isinstance(paths, dict):
        return
    for path, item in paths.items():
        if isinstance(item, dict):
            yield str(path), item, join_pointer("/paths", path)


def _operation_id(operation: dict[str, Any], pointer: str, seen: dict[str, str],
                  problems: list[Problem]) -> None:
    operation_id = operation.get("operationId")
    if not isinstance(operation_id, str):
        return
    if operation_id in seen:
        problems.append(Problem(join_pointer(pointer, "operationId"),
                                f"OpenAPI: operationId {operation_id!r} is also the one of "
                                f"{seen[operation_id]}"))
    else:
        seen[operation_id] = pointer


def _parameter_list(document: dict[str, Any], parameters: Any, pointer: str,
                    problems: list[Problem]) -> dict[tuple[str, str], str]:
    """``(name, in)`` → pointer of each parameter of a list; a second of the same is a
    problem."""
    found: dict[tuple[str, str], str] = {}
    for index, candidate in enumerate(parameters if isinstance(parameters, list) else []):
        parameter = deref(document, candidate)
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            continue
        key = (parameter["name"], str(parameter.get("in")))
        where = join_pointer(pointer, index)
        if key in found:
            problems.append(Problem(where, f"OpenAPI: {key[1]} parameter {key[0]!r} is "
                                           f"declared twice (also at {found[key]})"))
        found[key] = where
    return found


def _path_parameters(path: str, method: str, declared: dict[tuple[str, str], str],
                     pointer: str, problems: list[Problem]) -> None:
    in_path = set(re.findall(r"{([^{}/]+)}", path))
    for (name, location), where in declared.items():
        if location == "path" and name not in in_path:
            problems.append(Problem(where, f"OpenAPI: path parameter {name!r} of "
                                           f"{method.upper()} {path} is not in the path"))
    names = {name for name, location in declared if location == "path"}
    for name in sorted(in_path - names):
        problems.append(Problem(pointer, f"OpenAPI: {{{name}}} of {method.upper()} {path} "
                                         "is declared by no path parameter"))


_SCHEMA_CHILDREN = frozenset({"items", "not", "additionalProperties"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})


def _schemas(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object of the document with its pointer: under a ``schema`` key, in
    ``components/schemas``, and the schemas nested in those (``properties``, ``items``,
    ``allOf``…)."""
    # what a node is: "schema", "map" (of schemas), "list" (of schemas) or "" (other)
    stack: list[tuple[Any, str, str]] = [(document, "", "")]
    while stack:
        node, pointer, what = stack.pop()
        if isinstance(node, list):
            inner = "schema" if what == "list" else ""
            stack += [(value, join_pointer(pointer, index), inner)
                      for index, value in enumerate(node) if isinstance(value, dict | list)]
            continue
        if not isinstance(node, dict):
            continue
        if what == "schema":
            yield pointer, node
        for key, value in node.items():
            if isinstance(value, dict | list):
                stack.append((value, join_pointer(pointer, key), _child(what, pointer, key)))


def _child(what: str, pointer: str, key: str) -> str:
    """What the value under ``key`` of a node that is ``what`` is."""
    if what == "map":
        return "schema"
    if what == "schema":
        if key in _SCHEMA_CHILDREN:
            return "schema"
        return "map" if key in _SCHEMA_MAPS else "list" if key in _SCHEMA_LISTS else ""
    if key == "schema":
        return "schema"
    return "map" if pointer == "/components" and key == "schemas" else ""


def _default_type(schema: dict[str, Any], pointer: str, problems: list[Problem]) -> None:
    if "default" not in schema or "$ref" in schema:
        return
    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared]
    types = [t for t in types if isinstance(t, str) and t in _JSON_TYPES]
    if not types:
        return
    value = schema["default"]
    if value is None and (schema.get("nullable") or "null" in types):
        return
    fits = any(isinstance(value, _JSON_TYPES[t]) and not (t != "boolean"
               and isinstance(value, bool)) and not (t == "integer" and isinstance(value, float)
               and not value.is_integer()) for t in types)
    if not fits:
        problems.append(Problem(join_pointer(pointer, "default"),
                                f"OpenAPI: the default {_short(json.dumps(value))} is not of "
                                f"type {' or '.join(repr(t) for t in types)}"))
