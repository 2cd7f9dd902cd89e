"""Reading what bss-sync needs from an OpenAPI 3.0/3.1 document.

Vendor specs are messy: operationIds with ``/`` and ``{}`` (or none), ``$ref``
with siblings, ``nullable`` (3.0) and type arrays (3.1), parameters declared on
the path item. This module copes with those and nothing here raises on a
malformed document: callers get ``None`` or a ``Problem``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

from shared.connector.problems import Problem
from shared.connector.source import resolve_pointer
from shared.json_pointer import join_pointer

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_METHOD_PATH = re.compile(r"^\s*([A-Za-z]+)\s+(/\S*)\s*$")
_MAX_REF_HOPS = 64


def deref(document: dict[str, Any], node: Any) -> Any:
    """``node`` with local ``$ref``s followed. Siblings of a ``$ref`` (3.1 allows them,
    vendors put them in 3.0 too) are merged over the target. Unresolvable → ``None``."""
    hops = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if not ref.startswith("#") or hops > _MAX_REF_HOPS:
            return None
        try:
            target = resolve_pointer(document, ref[1:])
        except (KeyError, ValueError):
            return None
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if siblings and isinstance(target, dict):
            target = {
                **target,
                **{k: v for k, v in siblings.items() if k not in ("description", "summary")},
            }
        node = target
        hops += 1
    return node


def check_refs(document: Any) -> list[Problem]:
    """Every local ``$ref`` (``#/…``) must point at something. Others are
    ``shared.connector.external_refs``' business: the loader resolves them to files."""
    problems: list[Problem] = []
    for pointer, ref in _iter_refs(document, ""):
        if not isinstance(ref, str):
            problems.append(Problem(pointer, "$ref must be a string"))
        elif not ref.startswith("#"):
            continue  # another document's: resolved, or reported, by external_refs
        else:
            try:
                resolve_pointer(document, ref[1:])
            except (KeyError, ValueError):
                problems.append(Problem(pointer, f"$ref {ref!r} points at nothing"))
    return problems


def _iter_refs(node: Any, pointer: str) -> Iterator[tuple[str, Any]]:
    stack = [(node, pointer)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, dict):
            if "$ref" in current:
                yield join_pointer(where, "$ref"), current["$ref"]
            for key, value in current.items():
                if isinstance(value, dict | list):
                    stack.append((value, join_pointer(where, key)))
        elif isinstance(current, list):
            for index, value in enumerate(current):
                if isinstance(value, dict | list):
                    stack.append((value, join_pointer(where, index)))


@dataclasses.dataclass(frozen=True)
class Operation:
    """One operation of the document, with what a request needs resolved."""

    method: str  # upper case
    path: str
    pointer: str  # /paths/~1companies/post
    operation_id: str | None
    raw: dict[str, Any]
    parameters: tuple[dict[str, Any], ...]
    request_body: dict[str, Any] | None
    request_media_type: str | None
    request_schema: Any
    request_schema_pointer: str | None
    # the request media type's ``encoding`` (form bodies: per property style, explode,
    # contentType); a multipart property of ``format: binary`` without a contentType
    # gets application/octet-stream, as OpenAPI says
    request_encoding: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def parameter(self, name: str) -> dict[str, Any] | None:
        """The parameter ``name`` declares; a header's name matches in any case (HTTP
        header names are case-insensitive: ``x-since`` is ``X-Since``)."""
        for param in self.parameters:
            if param.get("name") == name:
                return param
        folded = name.lower()
        for param in self.parameters:
            if param.get("in") == "header" and str(param.get("name")).lower() == folded:
                return param
        return None

    def path_parameter_names(self) -> list[str]:
        declared = [p["name"] for p in self.parameters if p.get("in") == "path" and "name" in p]
        in_template = re.findall(r"{([^}]+)}", self.path)
        return list(dict.fromkeys(in_template + declared))

    def response_schema(self, document: dict[str, Any], status: int | None = None) -> Any:
        """The JSON schema of a success response (the given status, else the first 2xx)."""
        responses = self.raw.get("responses") or {}
        keys = [str(status)] if status else sorted(k for k in responses if str(k).startswith("2"))
        for key in keys:
            response = deref(document, responses.get(key))
            if isinstance(response, dict):
                _media, schema, _ptr = _json_content(document, response.get("content"), "")
                if schema is not None:
                    return schema
        return None


def success_schemas(document: dict[str, Any], operation: Operation) -> list[tuple[str, Any]]:
    """``(status, schema)`` of each 2xx response (``201``, ``2XX``) documenting a schema."""
    responses = operation.raw.get("responses")
    found = []
    for status in sorted(str(k) for k in responses) if isinstance(responses, dict) else []:
        if not status.startswith("2"):
            continue
        response = deref(document, responses.get(status))
        if isinstance(response, dict):
            _media, schema, _ptr = _json_content(document, response.get("content"), "")
            if schema is not None:
                found.append((status, schema))
    return found


def index_operations(document: dict[str, Any]) -> dict[str, Operation]:
    """Every operation, keyed both by ``"METHOD /path"`` and by its operationId."""
    index: dict[str, Operation] = {}
    paths = document.get("paths") if isinstance(document, dict) else None
    if not isinstance(paths, dict):
        return index
    for path, item in paths.items():
        item_pointer = join_pointer("/paths", path)
        item = deref(document, item)
        if not isinstance(item, dict):
            continue
        shared_params = item.get("parameters") if isinstance(item.get("parameters"), list) else []
        for method in HTTP_METHODS:
            raw = item.get(method)
            if not isinstance(raw, dict):
                continue
            op = _build_operation(
                document, method, path, join_pointer(item_pointer, method), raw, shared_params
            )
            index[op.key] = op
            if op.operation_id:
                index.setdefault(op.operation_id, op)
    return index


def _build_operation(
    document: dict[str, Any],
    method: str,
    path: str,
    pointer: str,
    raw: dict[str, Any],
    shared_params: list[Any],
) -> Operation:
    params: dict[tuple[str, str], dict[str, Any]] = {}
    own = raw.get("parameters") if isinstance(raw.get("parameters"), list) else []
    for candidate in [*shared_params, *own]:
        param = deref(document, candidate)
        if isinstance(param, dict) and isinstance(param.get("name"), str):
            params[(param["name"], str(param.get("in")))] = param
    body = deref(document, raw.get("requestBody"))
    media = schema = schema_pointer = None
    encoding: dict[str, Any] = {}
    if isinstance(body, dict):
        media, schema, schema_pointer = _json_content(
            document, body.get("content"), join_pointer(pointer, "requestBody", "content")
        )
        encoding = _request_encoding(document, body.get("content"), media, schema)
    operation_id = raw.get("operationId") if isinstance(raw.get("operationId"), str) else None
    return Operation(
        method.upper(),
        path,
        pointer,
        operation_id,
        raw,
        tuple(params.values()),
        body if isinstance(body, dict) else None,
        media,
        schema,
        schema_pointer,
        encoding,
    )


def _request_encoding(
    document: dict[str, Any], content: Any, media: str | None, schema: Any
) -> dict[str, Any]:
    """The ``encoding`` of the chosen request media type, with multipart's default
    content type for binary properties filled in."""
    entry = deref(document, content.get(media)) if isinstance(content, dict) and media else None
    declared = entry.get("encoding") if isinstance(entry, dict) else None
    encoding = {
        name: dict(value)
        for name, value in (declared if isinstance(declared, dict) else {}).items()
        if isinstance(value, dict)
    }
    if not str(media).lower().startswith("multipart/"):
        return encoding
    properties = deref(document, schema)
    properties = properties.get("properties") if isinstance(properties, dict) else None
    for name, prop in (properties if isinstance(properties, dict) else {}).items():
        prop = deref(document, prop)
        if isinstance(prop, dict) and prop.get("type") == "array":
            prop = deref(document, prop.get("items"))
        if isinstance(prop, dict) and prop.get("format") == "binary":
            encoding.setdefault(name, {}).setdefault("contentType", "application/octet-stream")
    return encoding


def _json_content(
    document: dict[str, Any], content: Any, pointer: str
) -> tuple[str | None, Any, str | None]:
    if not isinstance(content, dict) or not content:
        return None, None, None
    ranked = sorted(content, key=_media_rank)
    media = ranked[0]
    entry = deref(document, content[media])
    schema = entry.get("schema") if isinstance(entry, dict) else None
    return media, schema, join_pointer(pointer, media, "schema")


def _media_rank(media: str) -> int:
    media = media.lower().split(";")[0].strip()
    if media == "application/json":
        return 0
    if media.endswith("+json"):
        return 1
    if media in ("*/*", "application/*"):
        return 2
    return 3


def find_operation(index: dict[str, Operation], reference: str) -> Operation | None:
    """Resolve an operation reference: an operationId, or ``"METHOD /path"``."""
    if reference in index:
        return index[reference]
    match = _METHOD_PATH.match(reference)
    if match:
        return index.get(f"{match.group(1).upper()} {match.group(2)}")
    return None


def schema_has_path(
    document: dict[str, Any] | None, schema: Any, path: tuple[str | int, ...],
    resolve: Any = None,
) -> bool:
    """Whether an object valid against ``schema`` may hold a value at ``path`` (a map
    target's segments: field names, and ``int`` array indices).

    ``properties`` are followed; a schema-valued ``additionalProperties`` (a map of
    free keys), an explicit ``additionalProperties: true`` (any key, anything under it)
    and a schema without ``properties`` admit any key; ``allOf``/``anyOf``/``oneOf``
    admit a key any branch admits. An index goes through ``prefixItems`` (its own
    position) or ``items``. A schema whose ``type`` says it is no object admits no key,
    one that says it is no array no index (``data.name`` where ``data`` is an array is
    refused, as ``data[0].name`` where it is an object). ``resolve(ref) -> schema``
    resolves non-local references (entity schemas); local ones use ``document``.
    """
    return next(schemas_at(document, schema, path, resolve), None) is not None


def schemas_at(
    document: dict[str, Any] | None, schema: Any, path: tuple[str | int, ...],
    resolve: Any = None,
) -> Iterator[Any]:
    """The schemas a value at ``path`` must satisfy, by way of each branch that holds
    ``path`` (see :func:`schema_has_path`); ``True`` where anything goes. Nothing when
    no branch holds it."""
    if not path:
        yield schema
        return
    key, rest = path[0], path[1:]
    for candidate in _branches(document, schema, resolve, 0):
        if not isinstance(candidate, dict):
            if candidate is not False:
                yield True  # True/{} schema: anything goes
            continue
        if isinstance(key, int):
            element = _element_schema(candidate, key)
            if element is not None:
                yield from schemas_at(document, element, rest, resolve)
            continue
        types = _declared_types(candidate)
        props = candidate.get("properties")
        if types is None and not isinstance(props, dict) and (
                "items" in candidate or "prefixItems" in candidate):
            types = {"array"}  # an array that does not say so
        if types is not None and "object" not in types:
            continue
        if isinstance(props, dict) and key in props:
            yield from schemas_at(document, props[key], rest, resolve)
            continue
        additional = candidate.get("additionalProperties", None)
        if additional is True:
            yield True  # said explicitly: the vendor takes keys it does not list
        elif isinstance(additional, dict):
            yield from schemas_at(document, additional, rest, resolve)
        elif _free_key(candidate, key):
            yield True


def _free_key(schema: dict[str, Any], key: str) -> bool:
    """Whether ``schema`` (no ``additionalProperties`` schema) takes ``key`` as a free
    key: a ``patternProperties`` pattern matches it, or it lists no properties and does
    not close itself (``additionalProperties: false``) nor compose branches."""
    patterns = schema.get("patternProperties")
    if isinstance(patterns, dict) and any(re.search(p, key) for p in patterns):
        return True
    return (not isinstance(schema.get("properties"), dict)
            and schema.get("additionalProperties") is not False
            and not any(k in schema for k in ("allOf", "anyOf", "oneOf")))


def value_types(document: dict[str, Any] | None, schema: Any) -> set[str] | None:
    """The JSON types ``schema`` declares a value may have (``nullable`` adds ``null``),
    ``None`` when it does not say (no ``type``, or a composition whose branches would
    have to be weighed: such a schema is not second-guessed)."""
    first = next(_branches(document, schema, None, 0), True)
    if not isinstance(first, dict) or any(k in first for k in ("allOf", "anyOf", "oneOf")):
        return None
    types = _declared_types(first)
    if types is not None and first.get("nullable") is True:
        types.add("null")
    return types


def with_index_added(
    document: dict[str, Any] | None, schema: Any, path: tuple[str | int, ...],
    resolve: Any = None,
) -> tuple[str | int, ...] | None:
    """``path`` with ``[0]`` after the first field that needs one for ``schema`` to hold
    it (``data.name`` → ``data[0].name`` when ``data`` is an array), ``None`` when no
    single ``[0]`` does: the hint for a map target that forgot a wrapping array."""
    for depth in range(1, len(path)):
        if isinstance(path[depth], str):
            candidate = (*path[:depth], 0, *path[depth:])
            if schema_has_path(document, schema, candidate, resolve):
                return candidate
    return None


def _element_schema(schema: dict[str, Any], index: int) -> Any:
    """The schema of element ``index`` of an array valid against ``schema`` (``True``:
    anything), ``None`` when ``schema`` is no array or has no such element."""
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list) and index < len(prefix):
        return prefix[index]
    items = schema.get("items", True if isinstance(prefix, list) else None)
    if isinstance(items, list):  # draft 4's tuple form
        items = items[index] if index < len(items) else schema.get("additionalItems", True)
    if items is not None:
        return None if items is False else items
    types = _declared_types(schema)
    if types is not None:
        return True if "array" in types else None
    shaped = any(k in schema for k in ("properties", "additionalProperties", "allOf",
                                       "anyOf", "oneOf"))
    return None if shaped else True


def _declared_types(schema: dict[str, Any]) -> set[str] | None:
    """The ``type``(s) a schema declares, ``None`` when it declares none."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {t for t in declared if isinstance(t, str)}
    return None


def schema_branches(document: dict[str, Any] | None, schema: Any) -> Iterator[Any]:
    """``schema`` and the branches of its ``allOf``/``anyOf``/``oneOf``, transitively,
    local ``$ref``s followed (one that leads nowhere yields ``True``: anything)."""
    return _branches(document, schema, None, 0)


def _branches(
    document: dict[str, Any] | None, schema: Any, resolve: Any, depth: int
) -> Iterator[Any]:
    if depth > 32:
        return
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        ref = schema["$ref"]
        target = (
            deref(document, {"$ref": ref})
            if ref.startswith("#") and document is not None
            else resolve(ref)
            if resolve
            else None
        )
        if target is None:
            yield True
            return
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        yield from _branches(document, target, resolve, depth + 1)
        if siblings.get("properties"):
            yield siblings
        return
    yield schema
    if isinstance(schema, dict):
        for keyword in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(keyword) or []:
                yield from _branches(document, sub, resolve, depth + 1)
