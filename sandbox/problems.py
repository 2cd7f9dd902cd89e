"""``application/problem+json`` answers (RFC 9457) and bearer-token checking.

Handlers raise :class:`ApiProblem`; the app's exception handlers turn it, and
Starlette's own 404/405, into problem documents. :class:`BearerAuth` is plain
ASGI middleware (no per-request allocation beyond a header scan).
"""

from __future__ import annotations

import hmac
import http
import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

PROBLEM_JSON = "application/problem+json"
OPEN_PATHS = frozenset({"/health"})


class ApiProblem(Exception):
    """An HTTP error answer: status, one-sentence detail, optional field errors."""

    def __init__(self, status: int, detail: str, *,
                 errors: Sequence[Mapping[str, str]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})


def problem_response(status: int, detail: str, *,
                     errors: Sequence[Mapping[str, str]] | None = None,
                     headers: Mapping[str, str] | None = None,
                     instance: str | None = None) -> Response:
    """A problem+json response."""
    body: dict[str, Any] = {"type": "about:blank", "title": _title(status), "status": status,
                            "detail": detail}
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = list(errors)
    return Response(json.dumps(body), status, headers=dict(headers or {}),
                    media_type=PROBLEM_JSON)


def _title(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def on_api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers,
                            instance=request.url.path)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's 404 (no such route) and 405 (method not allowed), as problems."""
    status = getattr(exc, "status_code", 500)
    headers = getattr(exc, "headers", None) or {}
    detail = {404: f"no resource at {request.url.path}",
              405: f"{request.method} is not allowed on {request.url.path}"}.get(
        status, getattr(exc, "detail", None) or _title(status))
    return problem_response(status, detail, headers=headers, instance=request.url.path)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    return problem_response(500, "the sandbox failed to handle the request; see its log",
                            instance=request.url.path)


class BearerAuth:
    """Require ``Authorization: Bearer <token>`` on every path but ``/health``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS \
                and not self._authorized(scope["headers"]):
            response = problem_response(
                401, "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="sandbox-bss"'},
                instance=scope["path"])
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False
