"""The chaos suite's own network faults: a TCP proxy in front of PostgreSQL and a raw
HTTP proxy in front of the third party, both on one asyncio loop in a thread of the
test process (:class:`NetworkLoop`).

* :class:`TcpProxy` (``tests/fixtures/tcp_proxy.py``) relays bytes both ways;
  :meth:`TcpProxy.cut` drops every connection at once, :meth:`TcpProxy.refuse_for`
  every new one for a while (PostgreSQL down).
* :class:`HttpFaultProxy` reads each HTTP/1.1 request (httptools) and, while a fault
  window is open (:meth:`HttpFaultProxy.open_window`), answers a share of them with
  what a hostile or broken third party sends: a 5xx without forwarding, an answer held
  past the client's read timeout after forwarding (the third party did the work, the
  client never hears), ``HTTP/1.1 999``, a garbage body after forwarding, or the
  connection closed without an answer. It works on bytes, not through an HTTP
  framework, so that it can send status lines no framework would.

Control methods are thread-safe; counters say what was injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
import time
from collections import Counter
from typing import Any

import httptools

from tests.fixtures.tcp_proxy import READ_SIZE, NetworkLoop

#: Third-party fault kinds, as the schedule names them.
HTTP_5XX = "http-5xx"
HTTP_TIMEOUT = "http-timeout"
HTTP_999 = "http-999"
HTTP_GARBAGE = "http-garbage"
HTTP_DROP = "http-drop"
HTTP_FAULTS = (HTTP_5XX, HTTP_TIMEOUT, HTTP_999, HTTP_GARBAGE, HTTP_DROP)

#: Bodies no client can use, whatever it asked. Not ``[]``: to a search that is a
#: plausible "nothing found", a lie no client could detect, not garbage.
GARBAGE_BODIES = (
    (b"text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    (b"application/json", b'{"id": 12, "name": "trunc'),
    (b"application/json", b"\x00\xff\xfe garbage \x80"),
    (b"application/json", b"{}"),
)


# --------------------------------------------------------------------------- HTTP


class _Message:
    """httptools callbacks collecting one request or response."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.raw = bytearray()
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def _read_message(reader: asyncio.StreamReader, request: bool) -> tuple[_Message, Any] | None:
    """One whole message from ``reader`` (None: the peer closed before one began)."""
    message = _Message()
    parser = (httptools.HttpRequestParser if request else httptools.HttpResponseParser)(message)
    while not message.done:
        data = await reader.read(READ_SIZE)
        if not data:
            if not message.raw:
                return None
            raise ConnectionResetError("the peer closed in the middle of a message")
        message.raw += data
        parser.feed_data(data)
    return message, parser


def _request_bytes(method: bytes, message: _Message) -> bytes:
    """The request re-serialised (Content-Length framing, keep-alive)."""
    lines = [method + b" " + message.url + b" HTTP/1.1"]
    for name, value in message.headers:
        if name.lower() not in (b"content-length", b"transfer-encoding", b"connection"):
            lines.append(name + b": " + value)
    lines.append(b"Content-Length: " + str(len(message.body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(message.body)


def _response(status: bytes, body: bytes = b"", content_type: bytes = b"application/json") -> bytes:
    head = [b"HTTP/1.1 " + status, b"Content-Length: " + str(len(body)).encode()]
    if body:
        head.append(b"Content-Type: " + content_type)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclasses.dataclass
class Window:
    """A third-party fault window: ``kind`` for a ``share`` of requests until ``until``."""

    kind: str
    share: float
    until: float


class HttpFaultProxy:
    """A byte-level reverse proxy to ``upstream`` (``host``, ``port``); see the module.

    ``hold_seconds`` must exceed the client's read timeout.
    """

    def __init__(self, network: NetworkLoop, upstream_host: str, upstream_port: int, *,
                 seed: int, hold_seconds: float) -> None:
        self.network = network
        self.upstream = (upstream_host, upstream_port)
        self.hold_seconds = hold_seconds
        self.port = 0
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._random = random.Random(seed)
        self._window: Window | None = None
        self._lock = threading.Lock()
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpFaultProxy:
        self._server = self.network.run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.network.call(self._server.close)

    def open_window(self, kind: str, share: float, seconds: float) -> None:
        """For ``seconds``, inject ``kind`` into a ``share`` of the requests."""
        with self._lock:
            self._window = Window(kind, share, time.monotonic() + seconds)

    def close_window(self) -> None:
        with self._lock:
            self._window = None

    def _fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            window = self._window
            if window is None or time.monotonic() >= window.until:
                return None
            if self._random.random() >= window.share:
                return None
            self.injected[window.kind] += 1
            return window.kind

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (got := await _read_message(reader, request=True)) is not None:
                message, parser = got
                fault = self._fault()
                if fault == HTTP_5XX:
                    status = self._random.choice((b"500 Internal Server Error",
                                                  b"502 Bad Gateway", b"503 Service Unavailable"))
                    writer.write(_response(status, b'{"message": "injected"}'))
                    await writer.drain()
                    continue
                if fault == HTTP_999:
                    writer.write(_response(b"999 Nonsense"))
                    await writer.drain()
                    continue
                upstream = upstream or await asyncio.open_connection(*self.upstream)
                upstream[1].write(_request_bytes(parser.get_method(), message))
                await upstream[1].drain()
                answer = await _read_message(upstream[0], request=False)
                if answer is None:
                    raise ConnectionResetError("the third party closed the connection")
                if fault == HTTP_DROP:
                    return
                if fault == HTTP_TIMEOUT:
                    await asyncio.sleep(self.hold_seconds)  # the injected fault itself
                    return
                if fault == HTTP_GARBAGE:
                    content_type, body = self._random.choice(GARBAGE_BODIES)
                    writer.write(_response(b"%d OK" % answer[1].get_status_code(), body,
                                           content_type))
                else:
                    writer.write(bytes(answer[0].raw))
                await writer.drain()
        except (ConnectionError, OSError, httptools.HttpParserError):
            pass
        finally:
            writer.transport.abort()
            if upstream is not None:
                upstream[1].transport.abort()


def close_quietly(*things: Any) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            thing.stop()
