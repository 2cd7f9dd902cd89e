"""httpx's default transport behind our transport's interface, and the choice between
the two (``HTTP_TRANSPORT``).

The BSS and third-party clients send through ``fetch`` / ``fetch_raw``
(:class:`FetchTransport`). :class:`~shared.http.transport.Http1Transport` is ours
(asyncio protocols + httptools, a third of httpx's CPU per request);
:class:`HttpxTransport` is ``httpx.AsyncHTTPTransport`` — httpcore over anyio, what
``httpx.AsyncClient`` uses — with the same two methods: the same body limit,
decoding and errors (httpx's exceptions, :class:`~shared.http.transport.BodyTooLarge`,
:class:`~shared.http.transport.NotHttpStatus` — h11 refuses a status below 100 itself,
which is mapped back), so that turning our transport off changes nothing else. What
the library does its own way: it checks an idle connection's socket before reusing it,
and it sends ``Content-Length: 0`` with a bodiless POST. That check misses a connection
the server closes while the request is being sent (httpcore then raises "Server
disconnected without sending a response", or a ``ReadError``), so here, as in ours, a
request that is safe to resend — an idempotent method, or an ``Idempotency-Key`` — is
sent once more when its connection fails before any answer arrived.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable
from typing import Any, Literal, Protocol

import httpx

from shared.http.transport import (
    DEFAULT_KEEPALIVE_EXPIRY,
    IDEMPOTENT,
    BodyTooLarge,
    Fetched,
    Http1Transport,
    NotHttpStatus,
    Origin,
    fetched,
    refuse_line_breaks,
    status_line,
)
from shared.settings import get_setting

TransportKind = Literal["fast", "httpx"]
_ADDED_BY_THE_TRANSPORT = frozenset({"host", "content-length", "transfer-encoding"})
#: How httpcore reports a connection that died before any byte of the answer: a read or
#: write error, or this protocol error (other protocol errors are answers: not resent).
_UNANSWERED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_NO_ANSWER = "without sending a response"
#: How h11 refuses a status line below 100 (it reads it as an informational answer).
_H11_STATUS_BELOW_100 = re.compile(r"status_code should be in range \[100, 200\), not (\d+)$")


class FetchTransport(Protocol):
    """What the clients need of a transport (see ``Http1Transport.fetch``/``fetch_raw``)."""

    async def fetch(self, request: httpx.Request, max_bytes: int | None = None) -> Fetched: ...

    async def fetch_raw(self, origin: Origin, method: str, target: str,
                        headers: Iterable[tuple[str, str]], body: bytes | None,
                        timeouts: dict[str, Any], max_bytes: int | None = None) -> Fetched: ...

    async def aclose(self) -> None: ...


def open_transport(kind: TransportKind | None = None, *,
                   max_connections: int) -> FetchTransport:
    """Ours (``fast``) or httpx's (``httpx``) transport, at most ``max_connections`` per
    origin; ``kind=None`` takes ``HTTP_TRANSPORT`` from the process's settings."""
    if (kind or get_setting("http_transport")) == "httpx":
        return HttpxTransport(max_connections=max_connections)
    return Http1Transport(max_connections=max_connections)


class HttpxTransport:
    """``httpx.AsyncHTTPTransport`` with ``fetch`` and ``fetch_raw``. ``verify`` as in httpx."""

    def __init__(self, *, verify: bool | str | ssl.SSLContext = True,
                 max_connections: int = 100,
                 keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY) -> None:
        self._transport = httpx.AsyncHTTPTransport(verify=verify, limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry))

    async def fetch(self, request: httpx.Request, max_bytes: int | None = None) -> Fetched:
        """Send ``request`` and read the whole answer, within ``max_bytes`` (decoded).

        Raises httpx's exceptions, :class:`BodyTooLarge` and :class:`NotHttpStatus`.
        """
        try:
            response = await self._send(request)
        except httpx.RemoteProtocolError as exc:
            below = _H11_STATUS_BELOW_100.search(str(exc))
            if below is None:
                raise
            status = int(below[1])  # h11 keeps no reason phrase for it
            raise NotHttpStatus(status, status_line("HTTP/1.1", status, b"")) from exc
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        status = response.status_code
        if not 100 <= status <= 599:
            await stream.aclose()
            raise NotHttpStatus(status, status_line(
                response.extensions.get("http_version", b"HTTP/1.1"), status,
                response.extensions.get("reason_phrase", b"")))
        try:
            declared = response.headers.get("content-length", "")
            if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
                raise BodyTooLarge(status, max_bytes)
            chunks: list[bytes] = []
            size = 0
            async for chunk in stream:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise BodyTooLarge(status, max_bytes)
                chunks.append(chunk)
        finally:
            await stream.aclose()
        return await fetched(status, response.headers, b"".join(chunks), max_bytes)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The answer's head; a request safe to resend is sent once more when its
        connection died before any answer (see the module docstring)."""
        try:
            return await self._transport.handle_async_request(request)
        except _UNANSWERED as exc:
            unanswered = (not isinstance(exc, httpx.RemoteProtocolError)
                          or _NO_ANSWER in str(exc))
            if not (unanswered and resend_safe(request)):
                raise
        return await self._transport.handle_async_request(request)

    async def fetch_raw(self, origin: Origin, method: str, target: str,
                        headers: Iterable[tuple[str, str]], body: bytes | None,
                        timeouts: dict[str, Any], max_bytes: int | None = None) -> Fetched:
        """``fetch`` of ``method`` ``target`` (path and query, percent-encoded) on
        ``origin``; ``Host`` and ``Content-Length`` are httpx's. A header holding a line
        break is refused (``ValueError``)."""
        scheme, host, port = origin
        kept = []
        for name, value in headers:
            refuse_line_breaks(name, value)
            if name.lower() not in _ADDED_BY_THE_TRANSPORT:
                kept.append((name, value))
        url = httpx.URL(scheme=scheme.decode("ascii"), host=host.decode("ascii"), port=port,
                        raw_path=target.encode("ascii"))
        request = httpx.Request(method, url, headers=kept, content=body,
                                extensions={"timeout": timeouts})
        return await self.fetch(request, max_bytes)

    async def aclose(self) -> None:
        await self._transport.aclose()


def resend_safe(request: httpx.Request) -> bool:
    """Whether sending ``request`` twice does no harm: an idempotent method, or an
    ``Idempotency-Key`` the server deduplicates by."""
    return request.method.encode() in IDEMPOTENT or "idempotency-key" in request.headers
