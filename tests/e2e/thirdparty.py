"""The third parties of the end-to-end tests, as real servers on free ports.

* The Acme CRM of ``connectors/acme-crm.json`` is the demo's json-server
  (:class:`demo.thirdparty.JsonServer`, started by the stack harness).
* :class:`FaultProxy` — an HTTP proxy in front of it (uvicorn in a thread of the test
  process) that injects the failures a test asks for — 5xx, responses held past the
  client's read timeout, 429 with ``Retry-After``, 422 for chosen bodies — and logs
  every request it saw (:class:`Seen`), to prove what was or was not sent.
* :class:`Prism` — ``prism mock -d`` (npm ``@stoplight/prism-cli``) serving a connector
  bundle: it validates requests against the vendor's schemas (422, 401).

Each is started and stopped by the fixtures of ``conftest.py``; processes write their
output to a file whose tail :meth:`~demo.thirdparty.NodeProcess.tail` returns for
failure reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from demo.thirdparty import REPO, STARTUP_TIMEOUT, STOP_TIMEOUT, NodeProcess, node_tool
from demo.waiting import wait_until
from sandbox.server import free_port

#: Headers a proxy must not copy from one hop to the next.
HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                         "keep-alive", "content-encoding"})


# --------------------------------------------------------------------------- the proxy


@dataclasses.dataclass
class Seen:
    """One request the proxy received, and what it answered."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    status: int = 0  # what the client was answered (0: not answered yet)
    upstream_status: int = 0  # what json-server answered (0: not forwarded, or not yet)
    forwarded_at: float | None = None  # time.monotonic() when json-server had answered
    answered_at: float | None = None  # time.monotonic() just before answering
    fault: str | None = None  # the injected fault, None for a pass-through

    @property
    def json(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


Predicate = Callable[[Seen], bool]


def _every(_seen: Seen) -> bool:
    return True


@dataclasses.dataclass
class Fault:
    """An injected failure: ``kind`` is ``status`` (answer ``status`` without forwarding),
    ``hold`` (forward, then hold the answer ``delay`` seconds) or ``rate_limit`` (429
    with ``Retry-After``). Active while ``remaining`` > 0 (``None``: unbounded) and
    before ``until`` (``None``: forever), for the requests ``when`` accepts."""

    kind: str
    when: Predicate = _every
    remaining: int | None = None
    until: float | None = None
    status: int = 500
    body: Any = None
    delay: float = 0.0
    retry_after: int = 1

    def applies(self, seen: Seen, now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.until is not None and now >= self.until:
            return False
        return self.when(seen)


class FaultProxy:
    """A reverse proxy to ``upstream`` that fails on demand; see the module docstring.

    Control methods are thread-safe and take effect for the next request.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._seen: list[Seen] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    # -- control ------------------------------------------------------------------------

    def reset(self) -> None:
        """Pass everything through again and forget the requests seen."""
        with self._lock:
            self._faults.clear()
            self._seen.clear()

    def clear_faults(self) -> None:
        """Pass everything through again (the requests seen are kept)."""
        with self._lock:
            self._faults.clear()

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def fail_next(self, count: int, status: int = 500, *, when: Predicate = _every) -> None:
        """Answer ``status`` (upstream not called) to the next ``count`` requests."""
        self._add(Fault("status", when, remaining=count, status=status,
                        body={"message": f"injected {status}"}))

    def fail_for(self, seconds: float, status: int = 500, *, when: Predicate = _every) -> None:
        """Answer ``status`` (upstream not called) to every request for ``seconds``."""
        self._add(Fault("status", when, until=time.monotonic() + seconds, status=status,
                        body={"message": f"injected {status}"}))

    def hold_for(self, seconds: float, delay: float, *, when: Predicate = _every) -> None:
        """For ``seconds``, forward each request and hold its answer ``delay`` seconds (past
        the client's read timeout: the third party did the work, the client never hears)."""
        self._add(Fault("hold", when, until=time.monotonic() + seconds, delay=delay))

    def slow_down(self, delay: float, *, when: Predicate = _every) -> None:
        """Until cleared, forward each request and hold its answer ``delay`` seconds."""
        self._add(Fault("hold", when, delay=delay))

    def hold_next(self, count: int, delay: float, *, when: Predicate = _every) -> None:
        """As :meth:`hold_for`, for the next ``count`` requests ``when`` accepts."""
        self._add(Fault("hold", when, remaining=count, delay=delay))

    def rate_limit_next(self, count: int, retry_after: int, *,
                        when: Predicate = _every) -> None:
        """Answer 429 with ``Retry-After: retry_after`` to the next ``count`` requests."""
        self._add(Fault("rate_limit", when, remaining=count, status=429,
                        retry_after=retry_after,
                        body={"message": "rate limit exceeded, slow down"}))

    def reject(self, when: Predicate, status: int = 422, body: Any = None) -> None:
        """Answer ``status`` (upstream not called) to every request ``when`` accepts."""
        self._add(Fault("status", when, status=status, body=body))

    def requests(self, predicate: Predicate = _every) -> list[Seen]:
        """The requests seen so far (arrival order) that ``predicate`` accepts."""
        with self._lock:
            return [s for s in self._seen if predicate(s)]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests had ``method`` and ``path`` (``None``: any)."""
        return len(self.requests(lambda s: (method is None or s.method == method)
                                 and (path is None or s.path == path)))

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        # A long keep-alive: the client (httpx, 5 s expiry) closes idle connections first,
        # so it never reuses one the proxy is closing (a spurious RemoteProtocolError).
        config = uvicorn.Config(self._app, log_level="warning", access_log=False,
                                lifespan="off", timeout_keep_alive=120, interface="asgi3",
                                server_header=False, date_header=False)
        self._server = uvicorn.Server(config)
        started = threading.Event()

        async def serve() -> None:
            self._client = httpx.AsyncClient(
                base_url=self.upstream, timeout=httpx.Timeout(30.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
            try:
                assert self._server is not None
                await self._server.serve(sockets=[sock])
            finally:
                await self._client.aclose()

        def run() -> None:
            started.set()
            asyncio.run(serve())

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        started.wait()
        server, thread = self._server, self._thread

        def check_alive() -> None:
            if not thread.is_alive():
                raise RuntimeError("the fault proxy's thread ended before it served")

        wait_until(lambda: server.started, timeout=STARTUP_TIMEOUT, interval=0.01,
                   between=check_alive, what="the fault proxy to listen")
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(STOP_TIMEOUT)
        self._server = self._thread = None

    # -- the ASGI app -----------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        content = await request.body()
        seen = Seen(time.monotonic(), request.method, request.url.path,
                    dict(request.query_params), dict(request.headers), _parse(content))
        with self._lock:
            self._seen.append(seen)
            fault = self._fault_for(seen)
        response = await self._answer(request, content, seen, fault)
        seen.answered_at = time.monotonic()
        seen.status = response.status_code
        await response(scope, receive, send)

    def _fault_for(self, seen: Seen) -> Fault | None:
        """The first active fault for ``seen``, consumed (caller holds the lock)."""
        now = time.monotonic()
        for fault in self._faults:
            if fault.applies(seen, now):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    async def _answer(self, request: Request, content: bytes, seen: Seen,
                      fault: Fault | None) -> Response:
        if fault is not None and fault.kind in ("status", "rate_limit"):
            seen.fault = str(fault.status)
            headers = {"Retry-After": str(fault.retry_after)} if fault.kind == "rate_limit" \
                else {}
            body = json.dumps(fault.body).encode() if fault.body is not None else b""
            return Response(body, fault.status, headers=headers,
                            media_type="application/json" if body else None)
        response = await self._forward(request, content)
        seen.upstream_status, seen.forwarded_at = response.status_code, time.monotonic()
        if fault is not None and fault.kind == "hold":
            seen.fault = f"held {fault.delay}s"
            await asyncio.sleep(fault.delay)  # not a wait: the injected latency itself
        return response

    async def _forward(self, request: Request, content: bytes) -> Response:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            upstream = await self._client.request(request.method, path, headers=headers,
                                                  content=content)
        except httpx.HTTPError as exc:
            return Response(json.dumps({"message": f"proxy: upstream failed: {exc!r}"}),
                            502, media_type="application/json")
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(upstream.content, upstream.status_code, headers=out)


def _parse(content: bytes) -> Any:
    if not content:
        return None
    with contextlib.suppress(ValueError):
        return json.loads(content)
    return None


# --------------------------------------------------------------------------- Prism


class Prism:
    """``prism mock -d`` serving ``document`` (a file) on a free port of 127.0.0.1."""

    def __init__(self, document: Path, workdir: Path) -> None:
        self.document = document
        self.workdir = workdir
        self.url = ""
        self._node: NodeProcess | None = None

    def start(self, attempts: int = 3) -> Prism:
        prism = node_tool("prism")
        for attempt in range(1, attempts + 1):
            port = free_port()
            self._node = NodeProcess(
                "prism", [str(prism), "mock", "-d", "-h", "127.0.0.1", "-p", str(port),
                          str(self.document)],
                self.workdir / f"prism-{attempt}.log", cwd=REPO)
            self._node.start()
            try:
                self._node.wait_for_output(r"Prism is listening on (http://\S+)", timeout=60)
            except RuntimeError:
                if attempt == attempts or "EADDRINUSE" not in self._node.output():
                    self._node.stop()
                    raise
                self._node.stop()  # the free port was taken meanwhile: another one
                continue
            self.url = f"http://127.0.0.1:{port}"
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self._node is not None:
            self._node.stop()

    def tail(self, lines: int = 40) -> str:
        return self._node.tail(lines) if self._node is not None else ""

    def output(self) -> str:
        return self._node.output() if self._node is not None else ""
