"""The HTTP/1.1 transport against raw TCP servers that send exactly the bytes we choose;
httpx's default transport in its place (``HTTP_TRANSPORT=httpx``) against the same."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from shared.bss import BssClient
from shared.connector import load_connector
from shared.connector.request import RequestPlan
from shared.errors import BssUnavailable, RemoteProtocolError
from shared.http import InstanceEndpoint, ThirdPartyClient
from shared.http.httpx_transport import open_transport
from shared.http.transport import BodyTooLarge, Http1Transport
from shared.settings import get_settings
from shared.transform import UNDEFINED
from tests.fixtures.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in connections:
            writer.close()
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head, body


def client(**kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Http1Transport(**kw), timeout=httpx.Timeout(2.0))


async def test_keep_alive_reuses_one_connection_and_sends_bodies():
    accepted = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        while True:
            head, body = await read_request(reader)
            payload = head.split(b"\r\n", 1)[0] + b"|" + body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload),
                                                                             payload))
            await writer.drain()

    async with raw_server(echo) as url, client() as http:
        for i in range(5):
            response = await http.post(f"{url}/things?x={i}", json={"i": i})
            assert response.status_code == 200
            assert response.content == f'POST /things?x={i} HTTP/1.1|{{"i":{i}}}'.encode()
    assert accepted == 1


async def test_chunked_and_eof_delimited_bodies():
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async with raw_server(chunked) as url, client() as http:
        assert (await http.get(url)).content == b"hello world"
        assert (await http.get(url)).content == b"until the end"


async def test_an_idle_connection_closed_by_the_server_is_replaced_for_safe_requests():
    served = 0
    forget, forgotten = asyncio.Event(), asyncio.Event()

    async def one_per_connection(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # the server forgets the connection without saying "Connection: close"
        await forget.wait()
        writer.transport.abort()
        forgotten.set()

    async with raw_server(one_per_connection) as url, client() as http:
        assert (await http.get(url)).content == b"ok"
        forget.set()  # the first connection sits idle in the pool now
        await asyncio.wait_for(forgotten.wait(), 10)
        await eventually(lambda: idle_connections_closed(http),
                         what="the client to see the server close its idle connection")
        assert (await http.get(url)).content == b"ok"  # the dead idle connection was skipped
        assert (await http.post(url, json={}, headers={"Idempotency-Key": "k"})).content == b"ok"
    assert served == 3


def idle_connections_closed(http: httpx.AsyncClient) -> bool:
    """Whether every connection idle in the transport's pools is known closed."""
    pools = http._transport._pools.values()  # type: ignore[attr-defined]
    return all(connection.closed for pool in pools for connection in pool.idle)


async def test_a_post_without_idempotency_key_is_not_resent_after_a_lost_connection():
    attempts = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        await read_request(reader)
        attempts += 1
        writer.transport.abort()

    async with raw_server(drop) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="closed the connection"):
            await http.post(url, json={"x": 1})
    assert attempts == 1


async def test_timeouts_and_refused_connections():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)  # not a wait: a server that does not answer within the timeout

    async with raw_server(silent) as url, httpx.AsyncClient(transport=Http1Transport(),
                                 timeout=httpx.Timeout(0.2)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(url)
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://127.0.0.1:9/")  # discard port: nothing listens


async def test_garbage_is_a_protocol_error():
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP at all\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(url)


async def test_large_bodies_stream_and_a_reader_may_stop_early():
    size = 5 * 1024 * 1024

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // 65536):
                writer.write(b"x" * 65536)
                await writer.drain()

    async with raw_server(large) as url, client() as http:
        response = await http.get(url)
        assert len(response.content) == size
        async with http.stream("GET", url) as streamed:
            seen = 0
            async for chunk in streamed.aiter_raw():
                seen += len(chunk)
                if seen > 100_000:
                    break  # the caller stops reading: the connection must not be reused
        assert (await http.get(url)).status_code == 200


async def test_connections_are_bounded_per_origin():
    in_flight = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        while True:
            await read_request(reader)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)  # not a wait: a slow answer, so that requests overlap
            in_flight -= 1
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    async with raw_server(slow) as url, client(max_connections=3) as http:
        responses = await asyncio.gather(*(http.get(url) for _ in range(12)))
    assert {r.status_code for r in responses} == {204}
    assert peak == 3


async def test_a_reused_connection_dying_under_a_safe_request_is_retried_once_fresh():
    connections = 0

    async def first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the second request on this connection: hang up on it
        writer.transport.abort()

    async with raw_server(first_only) as url, client() as http:
        assert (await http.get(url)).content == b"ok"
        assert (await http.get(url)).content == b"ok"  # sent twice, answered on a new one
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url, content=b"{}")  # not safe to resend
    assert connections == 2  # the POST went on the second one, which hung up on it


async def test_fetch_raw_writes_host_and_length_and_reads_the_whole_answer():
    heads: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            heads.append(head)
            writer.write(b"HTTP/1.1 201 Created\r\nX-Seen: yes\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()

    transport = Http1Transport()
    async with raw_server(echo) as url:
        port = int(url.rsplit(":", 1)[1])
        origin = (b"http", b"127.0.0.1", port)
        for i in range(3):
            answer = await transport.fetch_raw(
                origin, "POST", f"/things?x={i}", [("Content-Type", "application/json")],
                b'{"i":%d}' % i, {"read": 2.0}, max_bytes=100)
            assert (answer.status, answer.content) == (201, b'{"i":%d}' % i)
            assert answer.headers["x-seen"] == "yes"
        with pytest.raises(ValueError, match="line break"):
            await transport.fetch_raw(origin, "GET", "/", [("X-A", "b\r\nX-B: c")], None, {})
    await transport.aclose()
    first = heads[0].split(b"\r\n")
    assert first[0] == b"POST /things?x=0 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}".encode() in first
    assert b"Content-Length: 7" in first
    assert len(heads) == 3


# -- httpx's default transport in ours' place (HTTP_TRANSPORT) ----------------------------

KINDS = ["fast", "httpx"]


async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes the request (head | body); ``/gzip`` gzipped, ``/declared-big`` announcing
    more than it sends, ``/chunked-big`` 64 KiB in chunks, ``/slow`` never."""
    while True:
        head, body = await read_request(reader)
        path = head.split(b" ", 2)[1]
        payload = head + b"|" + body
        if path == b"/slow":
            await asyncio.sleep(5)  # not a wait: a server that never answers in time
        elif path == b"/gzip":
            packed = gzip.compress(b"z" * 50_000)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(packed), packed))
        elif path == b"/declared-big":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nshort")
            writer.close()
            return
        elif path == b"/chunked-big":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"1000\r\n" + b"c" * 4096 + b"\r\n" * 1)
            for _ in range(15):
                writer.write(b"1000\r\n" + b"c" * 4096 + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 201 Created\r\nX-Seen: yes\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(payload), payload))
        await writer.drain()


@pytest.mark.parametrize("kind", KINDS)
async def test_both_transports_fetch_alike(kind: str) -> None:
    transport = open_transport(kind, max_connections=4)  # type: ignore[arg-type]
    try:
        async with raw_server(answering) as url:
            port = int(url.rsplit(":", 1)[1])
            origin = (b"http", b"127.0.0.1", port)
            raw = await transport.fetch_raw(
                origin, "POST", "/things?x=%C3%A9", [("Content-Type", "application/json"),
                                                     ("Host", "ignored.example")],
                b'{"i":1}', {"read": 2.0}, max_bytes=1000)
            head, body = raw.content.split(b"|")
            lines = head.split(b"\r\n")
            assert (raw.status, raw.headers["x-seen"], body) == (201, "yes", b'{"i":1}')
            assert lines[0] == b"POST /things?x=%C3%A9 HTTP/1.1"
            assert {f"Host: 127.0.0.1:{port}".encode(), b"Content-Length: 7"} <= set(
                lines), lines
            with pytest.raises(ValueError, match="line break"):
                await transport.fetch_raw(origin, "GET", "/", [("X-A", "b\r\nX-B: c")],
                                          None, {})
            request = httpx.Request("GET", f"{url}/gzip", extensions={"timeout": {"read": 2.0}})
            assert (await transport.fetch(request, 60_000)).content == b"z" * 50_000
            with pytest.raises(BodyTooLarge):  # the limit holds after decoding too
                await transport.fetch(httpx.Request("GET", f"{url}/gzip"), 10_000)
            with pytest.raises(BodyTooLarge):  # as declared
                await transport.fetch(httpx.Request("GET", f"{url}/declared-big"), 1000)
            with pytest.raises(BodyTooLarge):  # as it arrives
                await transport.fetch(httpx.Request("GET", f"{url}/chunked-big"), 10_000)
            again = await transport.fetch(httpx.Request("GET", f"{url}/after"), 1000)
            assert again.status == 201  # the pool is still usable after a refused answer
            with pytest.raises(httpx.ReadTimeout):
                await transport.fetch(httpx.Request(
                    "GET", f"{url}/slow", extensions={"timeout": {"read": 0.2}}))
        with pytest.raises(httpx.ConnectError):
            await transport.fetch(httpx.Request("GET", "http://127.0.0.1:9/"))
    finally:
        await transport.aclose()


@pytest.fixture
def senders(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the requests each transport sends: ours (``fast``) and httpx's."""
    sent: Counter[str] = Counter()
    ours = Http1Transport._exchange
    theirs = httpx.AsyncHTTPTransport.handle_async_request

    async def exchange(self: Http1Transport, *args: Any) -> Any:
        sent["fast"] += 1
        return await ours(self, *args)

    async def handle(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> Any:
        sent["httpx"] += 1
        return await theirs(self, request)

    monkeypatch.setattr(Http1Transport, "_exchange", exchange)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle)
    return sent


@pytest.fixture
def http_transport(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    def choose(kind: str) -> None:
        monkeypatch.setenv("HTTP_TRANSPORT", kind)
        get_settings.cache_clear()
    yield choose
    get_settings.cache_clear()


@pytest.mark.parametrize("kind", KINDS)
async def test_http_transport_decides_who_carries_the_clients_requests(
        kind: str, senders: Counter[str], http_transport: Callable[[str], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Observable, not read back: which transport sent the BSS client's and the
    third-party client's requests."""
    http_transport(kind)

    async def json_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 11\r\n\r\n{\"id\":\"r1\"}")
            await writer.drain()

    monkeypatch.setenv("T_APIKEY", "k3y")
    acme = load_connector(ROOT / "connectors" / "acme-crm.json")
    async with raw_server(json_answers) as url:
        port = url.rsplit(":", 1)[1]
        async with BssClient(url, batch_reads=False) as bss:
            assert await bss.get("org", "account", "r1") == {"id": "r1"}
        endpoint = InstanceEndpoint("acme-1", variables={"port": port},
                                    credentials={"apiKey": "env:T_APIKEY"})
        async with ThirdPartyClient(acme, endpoint) as crm:
            plan = RequestPlan("GET", f"{url}/companies/7", {}, UNDEFINED,
                               acme.operations["getCompany"])
            assert (await crm.send(plan)).body == {"id": "r1"}
    other = "httpx" if kind == "fast" else "fast"
    assert (senders[kind], senders[other]) == (2, 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prefix", ["", "/bss/v1"])
async def test_the_bss_clients_requests_on_the_wire(
        kind: str, prefix: str, http_transport: Callable[[str], None]) -> None:
    """What the BSS client writes, byte for byte where it matters, however the request
    is built (straight to the wire, or through an httpx.Request for a base URL that
    needs it): the request line under the base URL's path, the headers, the JSON body
    (an integer beyond 64 bits included)."""
    http_transport(kind)
    heads: list[bytes] = []
    bodies: list[bytes] = []

    async def created(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            heads.append(head)
            bodies.append(body)
            answer = (b'{"items":[],"nextCursor":null}' if head.startswith(b"GET")
                      else b'{"id":"r1"}')
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()

    async with raw_server(created) as url:
        bss = BssClient(url + prefix + "/", token="t0k", batch_reads=False)
        async with bss:
            record = {"name": "Zoë & Co", "big": 2**70}
            assert await bss.create("org 1", "account", record, origin="inst-1",
                                    idempotency_key="msg-1") == {"id": "r1"}
            assert await bss.list_changed("org 1", "account", None, limit=5) is not None
    request_line, *header_lines = heads[0].decode("latin-1").strip().split("\r\n")
    assert request_line == f"POST {prefix}/organizations/org%201/account HTTP/1.1"
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    assert headers["host"] == url.removeprefix("http://")
    assert (headers["authorization"], headers["x-sync-origin"], headers["idempotency-key"],
            headers["content-type"]) == ("Bearer t0k", "inst-1", "msg-1", "application/json")
    assert json.loads(bodies[0]) == {"name": "Zoë & Co", "big": 2**70}
    assert int(headers["content-length"]) == len(bodies[0])
    assert heads[1].startswith(f"GET {prefix}/organizations/org%201/account?".encode())


def test_a_base_url_the_wire_cannot_take_as_it_is_goes_through_httpx() -> None:
    from shared.bss.client import _wire_parts

    assert _wire_parts("http://127.0.0.1:8080") == ((b"http", b"127.0.0.1", 8080), "")
    assert _wire_parts("https://bss.example/api") == ((b"https", b"bss.example", 443), "/api")
    for url in ("http://[::1]:8080", "http://user:pw@bss.example", "http://bss.example/a b",
                "http://bücher.example", "ftp://bss.example", "http://bss.example:99999"):
        assert _wire_parts(url) == (None, ""), url


# -- connections the server closes (both transports, both event loops) --------------------

LOOPS = ["asyncio", "uvloop"]


def run_on(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    """``main()`` on a fresh event loop of the kind the services run (``EVENT_LOOP``)."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def one_answer_per_connection(seen: list[bytes]) -> Handler:
    """A server that answers the first request of a connection with keep-alive, then
    hangs up on the next one without answering: it had closed the idle connection while
    that request was on its way."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        seen.append(head.split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)
        writer.transport.abort()
    return serve


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_request_the_server_hangs_up_on_is_sent_once_more_when_that_is_safe(
        kind: str, loop: str) -> None:
    """Each request after the first goes on a connection the server has closed: a GET, a
    PUT and a POST with an Idempotency-Key are sent once more on a new connection and
    answered; a POST without a key is not sent twice (the server may have acted on it)."""
    seen: list[bytes] = []
    timeouts = {"connect": 2.0, "read": 2.0, "pool": 2.0}

    async def main() -> None:
        transport = open_transport(kind, max_connections=4)  # type: ignore[arg-type]
        try:
            async with raw_server(one_answer_per_connection(seen)) as url:
                origin = (b"http", b"127.0.0.1", int(url.rsplit(":", 1)[1]))
                await transport.fetch_raw(origin, "GET", "/first", [], None, timeouts)
                for method, path, headers in (("GET", "/get", []), ("PUT", "/put", []),
                                              ("POST", "/keyed", [("Idempotency-Key", "k")])):
                    answer = await transport.fetch_raw(origin, method, path, headers, b"{}"
                                                       if method != "GET" else None, timeouts)
                    assert answer.content == b"ok", (method, path)
                with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                    await transport.fetch_raw(origin, "POST", "/unkeyed", [], b"{}", timeouts)
        finally:
            await transport.aclose()

    run_on(loop, main)
    assert seen == [b"GET /first HTTP/1.1", b"GET /get HTTP/1.1", b"PUT /put HTTP/1.1",
                    b"POST /keyed HTTP/1.1"]


class ClosedUnderUs:
    """A transport as uvloop leaves it when the peer's close has been handled and the
    protocol's ``connection_lost`` has not run yet: not closing as far as it says, and
    every write refused."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True "
                           "reading=False 0x7f00>; the handler is closed")

    def close(self) -> None:
        self._transport.close()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["closing", "closed-under-us"])
def test_a_pooled_connection_found_closed_is_not_used_even_for_a_post(how: str,
                                                                      loop: str) -> None:
    """The connection waiting in the pool turns out to be closed when a request would go
    on it — its transport closing, or (uvloop) refusing the write: nothing was sent, so
    even a POST without an Idempotency-Key goes on a new connection, once."""
    seen: list[bytes] = []

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            seen.append(head.split(b"\r\n", 1)[0])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def main() -> None:
        transport = Http1Transport()
        try:
            async with raw_server(keep_alive) as url:
                origin = (b"http", b"127.0.0.1", int(url.rsplit(":", 1)[1]))
                await transport.fetch_raw(origin, "GET", "/first", [], None, {"read": 2.0})
                (idle,) = [c for pool in transport._pools.values() for c in pool.idle]
                if how == "closing":
                    idle.transport.abort()  # closing now; connection_lost runs later
                else:
                    idle.transport = ClosedUnderUs(idle.transport)  # type: ignore[assignment]
                answer = await transport.fetch_raw(origin, "POST", "/create", [], b"{}",
                                                   {"read": 2.0})
                assert answer.content == b"ok"
        finally:
            await transport.aclose()

    run_on(loop, main)
    assert seen == [b"GET /first HTTP/1.1", b"POST /create HTTP/1.1"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_real_server_closing_idle_connections_costs_no_request(kind: str) -> None:
    """uvicorn with a 20 ms keep-alive timeout, asked one request at a time with pauses
    around that timeout (under uvloop, as the services run): every request that is safe
    to resend is answered, whichever side of the server's close it falls on."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off",
                                           log_level="warning", timeout_keep_alive=0.02))
    failures: list[str] = []

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        await eventually(lambda: server.started, what="uvicorn to listen")
        port = server.servers[0].sockets[0].getsockname()[1]
        origin = (b"http", b"127.0.0.1", port)
        transport = open_transport(kind, max_connections=4)  # type: ignore[arg-type]
        requests = [("GET", [], None), ("PUT", [], b"{}"),
                    ("POST", [("Idempotency-Key", "k")], b"{}")]
        try:
            for i in range(90):
                method, headers, body = requests[i % 3]
                # not a wait: pacing around the server's keep-alive timeout
                await asyncio.sleep(0.015 + (i % 7) * 0.002)
                try:
                    await transport.fetch_raw(origin, method, "/", headers, body,
                                              {"connect": 2.0, "read": 2.0, "pool": 2.0})
                except httpx.HTTPError as exc:
                    failures.append(f"{method}: {type(exc).__name__} {exc}")
        finally:
            await transport.aclose()
            server.should_exit = True
            await serving

    run_on("uvloop", main)
    assert failures == []


# -- a status that is not HTTP (docs/architecture.md §5 step 4) ----------------------------

NOT_HTTP = [b"HTTP/1.1 999 Weird", b"HTTP/1.1 600 Beyond", b"HTTP/1.1 000 Zero",
            b"HTTP/1.1 099 Early"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_status_that_is_not_http_is_a_protocol_error_naming_its_status_line(
        kind: str, http_transport: Callable[[str], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw server answers ``HTTP/1.1 999 Weird`` and friends: never a success, never a
    5xx to retry — a permanent RemoteProtocolError showing the line, one request each."""
    http_transport(kind)
    lines = {f"/companies/{n}".encode(): line for n, line in enumerate(NOT_HTTP)}
    lines[b"/companies/ok"] = b"HTTP/1.1 200 OK"
    seen: list[bytes] = []

    async def weird(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            path = head.split(b" ", 2)[1].split(b"?")[0]
            seen.append(path)
            writer.write(lines.get(path, b"HTTP/1.1 999 Weird") + b"\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 11\r\n\r\n{\"id\":\"r1\"}")
            await writer.drain()

    monkeypatch.setenv("T_APIKEY", "k3y")
    acme = load_connector(ROOT / "connectors" / "acme-crm.json")
    async with raw_server(weird) as url:
        endpoint = InstanceEndpoint("acme-1", variables={"port": url.rsplit(":", 1)[1]},
                                    credentials={"apiKey": "env:T_APIKEY"})
        async with ThirdPartyClient(acme, endpoint) as crm:
            for n, line in enumerate(NOT_HTTP):
                plan = RequestPlan("GET", f"{url}/companies/{n}", {}, UNDEFINED,
                                   acme.operations["getCompany"])
                with pytest.raises(RemoteProtocolError) as caught:
                    await crm.send(plan)
                shown = line.decode() if kind == "fast" else line.decode()[:12]  # h11: no reason
                assert str(caught.value).startswith(
                    f"GET /companies/{n} answered with a status line that is not HTTP: {shown}")
                assert not caught.value.retryable
            ok = RequestPlan("GET", f"{url}/companies/ok", {}, UNDEFINED,
                             acme.operations["getCompany"])
            assert (await crm.send(ok)).body == {"id": "r1"}  # the client carries on
        async with BssClient(url, batch_reads=False) as bss:
            with pytest.raises(BssUnavailable, match=r"not HTTP: HTTP/1\.1 999"):
                await bss.get("org", "account", "r1")
    assert seen[:len(NOT_HTTP)] == [f"/companies/{n}".encode() for n in range(len(NOT_HTTP))]
    assert len(seen) == len(NOT_HTTP) + 2  # each answer taken once: nothing sent again
