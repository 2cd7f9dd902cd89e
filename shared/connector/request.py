"""Turning a configured call into the HTTP request to send (pure, no I/O).

Used by ``bss-sync preview`` and by the third-party client alike, so what the
preview shows is exactly what the pusher sends. Credentials are applied later,
by the client, from the instance's credential references.

Path parameters are percent-encoded as RFC 3986 path segment data: everything but
the unreserved characters is encoded (``/``, ``?``, ``#``, ``%`` included), and a
segment that a value turns into ``.`` or ``..`` has its dots encoded (``%2E``) —
otherwise the client, a proxy or the server would resolve it as a dot segment and
``PUT /things/{code}`` with the code ``..`` would become ``PUT /``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from shared.connector.answer_errors import AnswerErrorRule
from shared.connector.document import CallSpec, ConnectorDocument
from shared.connector.form_body import MULTIPART, encode_form, form_media
from shared.connector.openapi import Operation
from shared.errors import ConfigurationError, MappingError
from shared.transform import UNDEFINED, TransformContext
from shared.transform.expressions import as_text
from shared.uri import encode_value, no_dot_segment


@dataclasses.dataclass(frozen=True)
class RequestPlan:
    """A request ready to send, minus credentials."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any  # a JSON value, or UNDEFINED for no body
    operation: Operation
    # the body's bytes when they are not JSON (a form body, encoded per the operation's
    # ``encoding`` by ``plan_request``): what the client sends and ``preview`` shows
    content: bytes | None = None
    # the call's errorPointer / errorWhen: how an answer below 400 may still say "error"
    answer_error: AnswerErrorRule | None = None

    @property
    def has_body(self) -> bool:
        return self.body is not UNDEFINED

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


def server_url(
    document: ConnectorDocument,
    variables: Mapping[str, Any] | None = None,
    override: str | None = None,
) -> str:
    """The base URL for an instance: its override, else the document's first server
    with variables filled in (instance values over the document's defaults).

    Raises ``ConfigurationError`` when there is no server or a variable has no value.
    """
    if override:
        return override.rstrip("/")
    servers = document.servers()
    if not servers or not isinstance(servers[0].get("url"), str):
        raise ConfigurationError(
            "the connector declares no server and the instance gives no server URL"
        )
    server = servers[0]
    declared = server.get("variables") or {}
    values = {
        name: spec.get("default") for name, spec in declared.items() if isinstance(spec, dict)
    }
    values.update({k: v for k, v in (variables or {}).items() if k in declared})

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if values.get(name) is None:
            raise ConfigurationError(f"server variable {name!r} has no value")
        return str(values[name])

    return re.sub(r"{([^}]+)}", fill, server["url"]).rstrip("/")


def plan_request(
    call: CallSpec,
    *,
    base_url: str,
    data: Mapping[str, Any],
    context: TransformContext,
    body: Any = UNDEFINED,
    extra_headers: Mapping[str, str] | None = None,
) -> RequestPlan:
    """The request for ``call``: parameters rendered from ``data`` (the template input:
    record, externalId, since, cursor…), ``body`` as given (already transformed).

    A form body (``application/x-www-form-urlencoded``, ``multipart/form-data``) is
    encoded here, per the operation's ``encoding`` (``RequestPlan.content``).

    Raises ``MappingError`` when a path parameter has no value, ``SchemaViolation``
    for a body its form media type cannot carry, and whatever the templates raise
    (``MappingError``, ``DependencyPending``, ``LinksNotLoaded``).
    """
    operation = call.operation
    path_values: dict[str, str] = {}
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, template in call.params.items():
        value = template.render(data, context)
        param = operation.parameter(name) or {"in": "query"}
        location = param.get("in")
        if location == "path":
            if value in (None, UNDEFINED, ""):
                raise MappingError(f"path parameter {name!r} of {operation.key} has no value")
            path_values[name] = as_text(value)
        elif value in (None, UNDEFINED):
            continue
        elif location == "header":
            headers[name] = as_text(value)
        elif location == "cookie":
            cookies.append(f"{name}={quote(as_text(value), safe='')}")
        else:
            values = value if isinstance(value, list) else [value]
            query += [(name, as_text(v)) for v in values if v not in (None, UNDEFINED)]
    for name, template in call.headers.items():
        value = template.render(data, context)
        if value not in (None, UNDEFINED, ""):
            headers[name] = as_text(value)
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    if extra_headers:
        headers.update(extra_headers)
    content = None
    if body is not UNDEFINED:
        headers.setdefault(
            "Content-Type",
            operation.request_media_type
            if operation.request_media_type and "*" not in operation.request_media_type
            else "application/json",
        )
        content = _form_content(operation, headers, body)
    headers.setdefault("Accept", "application/json")
    url = base_url.rstrip("/") + fill_path(operation.path, path_values)
    if query:
        url += "?" + urlencode(query)
    return RequestPlan(operation.method, url, headers, body, operation, content,
                       call.answer_error)


def _form_content(operation: Operation, headers: dict[str, str], body: Any) -> bytes | None:
    """A form body's bytes (its ``Content-Type`` set, with the multipart boundary);
    ``None`` for any other media type. Raises ``SchemaViolation`` for a body the form
    cannot carry."""
    name = next(k for k in headers if k.lower() == "content-type")
    media = form_media(headers[name])
    if media is None or isinstance(body, bytes):
        return None
    encoded = encode_form(media, body, operation.request_encoding)
    headers[name] = encoded.content_type if media == MULTIPART else headers[name]
    return encoded.content


_PLACEHOLDER = re.compile(r"{([^{}/]+)}")


def fill_path(template: str, values: Mapping[str, str]) -> str:
    """``template`` (``/things/{code}``) with each ``{name}`` replaced by its value,
    percent-encoded as path segment data (RFC 3986 §3.3, ``shared.uri``). A segment the
    values make ``.`` or ``..`` is sent as ``%2E`` / ``%2E%2E``, never as a dot segment;
    a placeholder without a value is left as it is."""
    segments = []
    for segment in template.split("/"):
        filled = _PLACEHOLDER.sub(
            lambda m: encode_value(values[m.group(1)]) if m.group(1) in values
            else m.group(0), segment)
        segments.append(no_dot_segment(filled) if filled != segment else filled)
    return "/".join(segments)


def with_parameters(plan: RequestPlan, params: Mapping[str, Any], *,
                    query: bool = True) -> RequestPlan:
    """``plan`` with ``params`` (pagination and incremental values) set where its
    operation declares each: a header, a cookie, else the query string (replacing values
    of the same names; left alone with ``query=False``, for a next-page URL that
    carries its own)."""
    headers = dict(plan.headers)
    cookies: list[str] = []
    in_query: dict[str, Any] = {}
    for name, value in params.items():
        location = (plan.operation.parameter(name) or {}).get("in")
        if value in (None, UNDEFINED):
            continue
        if location == "header":
            headers[name] = as_text(value)
        elif location == "cookie":
            cookies.append(f"{name}={quote(as_text(value), safe='')}")
        else:
            in_query[name] = value
    if cookies:
        headers["Cookie"] = "; ".join(
            [*([headers["Cookie"]] if headers.get("Cookie") else []), *cookies])
    url = with_query(plan.url, in_query) if query and in_query else plan.url
    return dataclasses.replace(plan, url=url, headers=headers)


def with_query(url: str, params: Mapping[str, Any]) -> str:
    """``url`` with ``params`` set (replacing existing values of the same names)."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in _parse_qsl(parts.query) if k not in params]
    kept += [(k, as_text(v)) for k, v in params.items() if v not in (None, UNDEFINED)]
    query = urlencode(kept)
    return parts._replace(query=query).geturl()


def _parse_qsl(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True)
