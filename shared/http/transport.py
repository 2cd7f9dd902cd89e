"""A lean HTTP/1.1 transport for httpx: asyncio protocols + the httptools parser.

Why: on the push path every record costs three HTTP requests (read it from the
BSS, match, create), and httpx's default transport (httpcore over anyio) spent
about 600 µs of CPU per request here — syscalls for peer names and socket
liveness, layers of stream wrappers, a pure-Python parser. This transport keeps
httpx's API (requests, responses, exceptions, timeouts) and does the wire work in
about a third of that: one write per request, httptools (C) to parse, idle
connections known closed from ``connection_lost`` instead of polling.

Scope: HTTP/1.1 over TCP or TLS, keep-alive pools per origin, connect/read/write/
pool timeouts, streamed response bodies with flow control. Not: HTTP/2, proxies
(the third-party client never uses either).

``fetch(request, max_bytes)`` is the short way the bss-sync clients use: the whole
exchange, body read (within a size limit) and decoded, without the layers of
``httpx.AsyncClient.send`` (cookie jar, auth and redirect flows, stream wrappers),
which cost as much CPU as the exchange itself. Redirects, auth and cookies are the
callers' business there (the clients follow redirects themselves and keep no
cookies).

A pooled connection found closed, or closing, when a request would go on it — the
server closed it while idle, and ``connection_lost`` has not run yet (under uvloop
writing to it raises ``RuntimeError: unable to perform operation on <TCPTransport
closed=True …>``) — is dropped and the request goes on another connection: nothing
was sent, so this is safe for any method. A request that fails on a *reused*
connection after it was written and before any byte of the answer arrived (the
server closed the idle connection at that moment) is sent once more on a new
connection when that is safe: the method is idempotent, or the request carries an
``Idempotency-Key``.

``HTTP_TRANSPORT=httpx`` puts httpx's default transport in its place, behind the
same ``fetch``/``fetch_raw`` (:mod:`shared.http.httpx_transport`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httptools
import httpx

DEFAULT_KEEPALIVE_EXPIRY = 5.0
DEFAULT_MAX_CONNECTIONS = 100
HIGH_WATER = 1 << 20  # buffered body bytes before the socket stops being read
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
Origin = tuple[bytes, bytes, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    """A whole answer: status, headers, and the body (decoded if it came compressed)."""

    status: int
    headers: httpx.Headers
    content: bytes


MAX_STATUS_LINE_CHARS = 200


class NotHttpStatus(Exception):
    """The answer's status is no HTTP status (outside 100-599): ``HTTP/1.1 999 Weird``.
    ``status_line`` shows it printable (:func:`status_line`). The connection is not
    reused."""

    def __init__(self, status: int, status_line: str) -> None:
        super().__init__(f"the status line {status_line!r} is not HTTP")
        self.status = status
        self.status_line = status_line


def status_line(version: str | bytes, status: int, reason: bytes) -> str:
    """The status line of an answer, printable: ``HTTP/1.1 999 Weird``. Bytes that are
    not printable ASCII are shown as ``\\xNN``; cut at ``MAX_STATUS_LINE_CHARS``."""
    if isinstance(version, bytes):
        version = version.decode("ascii", "replace")
    if not version.startswith("HTTP/"):
        version = f"HTTP/{version}"
    text = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in reason)
    line = f"{version} {status:03d} {text}".rstrip()
    return line if len(line) <= MAX_STATUS_LINE_CHARS else line[: MAX_STATUS_LINE_CHARS - 1] + "…"


class BodyTooLarge(Exception):
    """The answer's body exceeds the caller's limit (declared or as it arrived)."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"the body of a {status} answer is over {limit} bytes")
        self.status = status
        self.limit = limit


class _Lost(Exception):
    """The connection closed; ``answered`` tells whether any response byte arrived,
    ``sent`` whether the request had been written to it."""

    def __init__(self, answered: bool, cause: BaseException | None, *,
                 sent: bool = True) -> None:
        super().__init__(str(cause) if cause else "connection closed")
        self.answered = answered
        self.cause = cause
        self.sent = sent


class _Connection(asyncio.Protocol):
    """One TCP/TLS connection carrying one exchange at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.answered = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.error: BaseException | None = None
        self._event: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(f"malformed HTTP response: {exc}")
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        if self.headers_done and not self.complete and not self._length_delimited():
            self.complete = True  # a body delimited by the end of the connection
            self.keep_alive = False
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = _Lost(self.answered, exc)
        self._wake()

    def pause_writing(self) -> None:  # pragma: no cover - bodies here are small
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    # -- httptools callbacks ------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason  # the reason phrase, in as many pieces as it arrived

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()

    # -- driving ------------------------------------------------------------------------

    def _length_delimited(self) -> bool:
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (lowered == b"transfer-encoding"
                                                and b"chunked" in value.lower()):
                return True
        return False

    def _wake(self) -> None:
        if self._event is not None and not self._event.done():
            self._event.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        self._event = event = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await event
            else:
                async with asyncio.timeout(timeout):
                    await event
        finally:
            self._event = None

    @property
    def usable(self) -> bool:
        """Open as far as this side knows: not closed, and its transport not closing
        (the peer's FIN or a reset seen, ``connection_lost`` still to come)."""
        return (not self.closed and self.transport is not None
                and not self.transport.is_closing())

    def send(self, raw: bytes) -> None:
        """Write the request; ``_Lost(sent=False)`` when the connection turns out to be
        closed before a byte of it went out."""
        if not self.usable:
            raise _Lost(False, None, sent=False)
        self._reset()
        assert self.transport is not None
        try:
            self.transport.write(raw)
        except RuntimeError as exc:  # uvloop: "unable to perform operation on <…closed=True>"
            self.closed = True
            raise _Lost(False, exc, sent=False) from None

    async def read_head(self, timeout: float | None) -> None:
        while not self.headers_done:
            self._raise_if_failed()
            await self._wait(timeout)
        self._raise_if_failed(headers_only=True)

    async def read_chunk(self, timeout: float | None) -> bytes | None:
        """The next body chunk, or ``None`` at the end of the body."""
        while not self.chunks:
            if self.complete:
                return None
            self._raise_if_failed()
            await self._wait(timeout)
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self._paused and self.buffered < HIGH_WATER // 2 and self.usable:
            assert self.transport is not None
            self.transport.resume_reading()
            self._paused = False
        return chunk

    def _raise_if_failed(self, headers_only: bool = False) -> None:
        if self.error is not None and not (headers_only and self.headers_done):
            raise self.error

    @property
    def reusable(self) -> bool:
        return (not self.closed and self.complete and self.keep_alive and self.error is None
                and not self.chunks)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class _Pool:
    """Idle connections of one origin, and the permits bounding connections in use."""

    def __init__(self, max_connections: int) -> None:
        self.idle: collections.deque[_Connection] = collections.deque()
        self.permits = asyncio.Semaphore(max_connections)


class _Body(httpx.AsyncByteStream):
    def __init__(self, transport: Http1Transport, pool: _Pool, conn: _Connection,
                 read_timeout: float | None, request: httpx.Request) -> None:
        self._transport = transport
        self._pool = pool
        self._conn = conn
        self._timeout = read_timeout
        self._request = request
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await self._conn.read_chunk(self._timeout)
            except TimeoutError:
                raise httpx.ReadTimeout("timed out reading the response body",
                                        request=self._request) from None
            except _Lost as exc:
                raise httpx.ReadError(f"connection lost mid-response: {exc}",
                                      request=self._request) from exc.cause
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        self._transport._release(self._pool, self._conn)


class Http1Transport(httpx.AsyncBaseTransport):
    """See the module docstring. ``verify`` as in httpx (bool, path, or SSLContext)."""

    def __init__(self, *, verify: bool | str | ssl.SSLContext = True,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY) -> None:
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._pools: dict[Origin, _Pool] = {}
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if isinstance(self._verify, ssl.SSLContext):
                self._ssl = self._verify
            elif self._verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                self._ssl = context
            elif isinstance(self._verify, str):
                self._ssl = ssl.create_default_context(cafile=self._verify)
            else:
                self._ssl = ssl.create_default_context()
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin, raw, retry_safe, timeouts = await self._prepare(request)
        pool, conn = await self._exchange(origin, raw, retry_safe, timeouts, request)
        return httpx.Response(
            conn.status, headers=conn.headers,
            stream=_Body(self, pool, conn, timeouts.get("read"), request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
            request=request)

    async def fetch(self, request: httpx.Request, max_bytes: int | None = None) -> Fetched:
        """Send ``request`` and read the whole answer (see the module docstring).

        Raises what ``handle_async_request`` raises, :class:`BodyTooLarge`, and
        :class:`NotHttpStatus`.
        """
        origin, raw, retry_safe, timeouts = await self._prepare(request)
        pool, conn = await self._exchange(origin, raw, retry_safe, timeouts, request)
        return await self._read_all(pool, conn, timeouts.get("read"), max_bytes, request)

    async def fetch_raw(self, origin: Origin, method: str, target: str,
                        headers: Iterable[tuple[str, str]], body: bytes | None,
                        timeouts: dict[str, Any], max_bytes: int | None = None) -> Fetched:
        """``fetch`` without building an ``httpx.Request`` (URL parsing and header
        normalisation cost as much as the exchange). ``target`` is the request target
        (path and query), printable ASCII already percent-encoded; a header holding a
        line break is refused (``ValueError``). Adds ``Host`` and ``Content-Length``.
        """
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        raw, retry_safe = _raw_request(origin, method, target, headers, body)
        pool, conn = await self._exchange(origin, raw, retry_safe, timeouts, None)
        return await self._read_all(pool, conn, timeouts.get("read"), max_bytes, None)

    async def _prepare(self, request: httpx.Request
                       ) -> tuple[Origin, bytes, bool, dict[str, Any]]:
        """Origin, bytes, resend safety and timeouts of an ``httpx.Request``."""
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}",
                                            request=request)
        origin = (scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80))
        raw = _serialize(request, await request.aread())
        retry_safe = (request.method.encode() in IDEMPOTENT
                      or "idempotency-key" in request.headers)
        return origin, raw, retry_safe, request.extensions.get("timeout", {})

    async def _read_all(self, pool: _Pool, conn: _Connection, read: float | None,
                        max_bytes: int | None, request: httpx.Request | None) -> Fetched:
        """The whole body of the answer whose head ``conn`` has read (within
        ``max_bytes``, decoded); the connection goes back to the pool."""
        try:
            status = conn.status
            if not 100 <= status <= 599:
                conn.close()  # a server that breaks HTTP: its connection is not reused
                line = status_line(conn.parser.get_http_version(), status, conn.reason)
                raise NotHttpStatus(status, line)
            headers = httpx.Headers(conn.headers)
            declared = headers.get("content-length", "")
            if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
                raise BodyTooLarge(status, max_bytes)
            chunks: list[bytes] = []
            size = 0
            while True:
                try:
                    chunk = await conn.read_chunk(read)
                except TimeoutError:
                    raise httpx.ReadTimeout("timed out reading the response body",
                                            request=request) from None
                except _Lost as exc:
                    raise httpx.ReadError(f"connection lost mid-response: {exc}",
                                          request=request) from exc.cause
                if chunk is None:
                    break
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise BodyTooLarge(status, max_bytes)
                chunks.append(chunk)
        finally:
            self._release(pool, conn)
        return await fetched(status, headers, b"".join(chunks), max_bytes)

    async def _exchange(self, origin: Origin, raw: bytes, retry_safe: bool,
                        timeouts: dict[str, Any],
                        request: httpx.Request | None) -> tuple[_Pool, _Connection]:
        """Send ``raw`` and read the answer's head; the caller reads the body and hands
        the connection back with ``_release`` (which also frees the pool permit)."""
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self._max_connections)
        if pool.permits.locked():
            try:
                await asyncio.wait_for(pool.permits.acquire(), timeouts.get("pool"))
            except TimeoutError:
                raise httpx.PoolTimeout("no connection free in time", request=request) from None
        else:
            await pool.permits.acquire()  # free: returns at once
        try:
            while True:
                conn, reused = await self._connection(pool, origin, timeouts.get("connect"),
                                                      request)
                try:
                    conn.send(raw)
                    await conn.read_head(timeouts.get("read"))
                except TimeoutError:
                    conn.close()
                    raise httpx.ReadTimeout("timed out waiting for the response",
                                            request=request) from None
                except _Lost as exc:
                    conn.close()
                    if reused and not exc.answered and (retry_safe or not exc.sent):
                        continue  # the server had closed the idle connection: once more
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without answering", request=request,
                    ) from exc.cause
                except BaseException:
                    conn.close()
                    raise
                return pool, conn
        except BaseException:
            pool.permits.release()
            raise

    async def _connection(self, pool: _Pool, origin: Origin, timeout: float | None,
                          request: httpx.Request | None) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while pool.idle:
            conn = pool.idle.pop()  # most recently used first
            if conn.usable and now - conn.idle_since < self._keepalive_expiry:
                return conn, True
            conn.close()
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(origin), host.decode("ascii"), port,
                ssl=self._ssl_context() if scheme == b"https" else None,
                server_hostname=host.decode("ascii") if scheme == b"https" else None),
                timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS handshake failed: {exc}", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect: {exc.strerror or exc}",
                                     request=request) from exc
        return conn, False

    def _release(self, pool: _Pool, conn: _Connection) -> None:
        pool.permits.release()
        if conn.reusable and not self._closed:
            conn.idle_since = time.monotonic()
            pool.idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().close()


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    url = request.url
    target = url.raw_path or b"/"
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    has_length = False
    for name, value in request.headers.raw:
        if name.lower() == b"content-length":
            has_length = True
        lines.append(name + b": " + value)
    if body and not has_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    # httpx sets Transfer-Encoding: chunked only for streams of unknown length; the body
    # has been read into memory here, so it always goes with a length.
    lines = [line for line in lines if not line.lower().startswith(b"transfer-encoding:")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_HEADER_BREAK = re.compile(r"[\r\n\x00]")


def _raw_request(origin: Origin, method: str, target: str, headers: Iterable[tuple[str, str]],
                 body: bytes | None) -> tuple[bytes, bool]:
    """The request's bytes, and whether resending it on a fresh connection is safe."""
    scheme, host, port = origin
    default = 443 if scheme == b"https" else 80
    host_header = host.decode("ascii") if port == default else f"{host.decode('ascii')}:{port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
    retry_safe = method.encode() in IDEMPOTENT
    for name, value in headers:
        refuse_line_breaks(name, value)
        lowered = name.lower()
        if lowered in ("host", "content-length", "transfer-encoding"):
            continue
        if lowered == "idempotency-key":
            retry_safe = True
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head, retry_safe


def refuse_line_breaks(name: str, value: str) -> None:
    """Raise ``ValueError`` when a header's name or value holds a line break or NUL."""
    if _HEADER_BREAK.search(name) or _HEADER_BREAK.search(value):
        raise ValueError(f"the header {name!r} holds a line break or NUL")


async def fetched(status: int, headers: httpx.Headers, content: bytes,
                  max_bytes: int | None) -> Fetched:
    """The answer, its body decoded when it came compressed (gzip, deflate…), the limit
    applied again to what decoding gives. Raises :class:`BodyTooLarge`."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity" and content:
        # compressed: httpx's decoders, and the limit again on what they give
        decoded = httpx.Response(status, headers=headers, stream=httpx.ByteStream(content))
        content = await decoded.aread()
        if max_bytes is not None and len(content) > max_bytes:
            raise BodyTooLarge(status, max_bytes)
    return Fetched(status, headers, content)
