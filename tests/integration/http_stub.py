"""A real HTTP server for the third-party client's tests (stdlib ``http.server`` in a
thread, so it runs beside any event loop and never shares one with the client).

Routes (any method unless noted):

=============================  =========================================================
``/status/<code>``             that status; ``?retry_after=`` sets ``Retry-After``,
                               ``?message=`` the JSON body's message, ``?echo_header=X``
                               copies request header X into the body (a leaking server)
``/once/<key>/<code>``         that status the first time for ``key``, then an echo
``/sleep/<seconds>``           waits, then an echo
``/redirect?to=&status=``      a redirect (302 by default) to ``to``
``/loop``                      redirects to itself forever
``/huge?bytes=&chunked=``      a JSON string body of that many bytes
``/text``                      200 ``text/html``
``/v1/…``                      200 echo with an ``id`` (``rec-<n>``): a vendor's create
a path given to ``answer()``   the status and JSON body given for it
``/empty``                     204
``POST /oauth/token``          OAuth2 token endpoint: client_credentials, password,
                               refresh_token; counts calls, issues short-lived tokens
``/protected/…``, ``/crm/…``   401 unless ``Authorization: Bearer <a live issued token>``
anything else                  200 echo: method, path, query, headers, body
=============================  =========================================================

Every request is recorded (``requests``), with the most requests in flight at once
(``max_in_flight``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import json
import secrets
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from tests.fixtures.threaded_http import ThreadedHttpServer


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclasses.dataclass
class OAuthServer:
    """The token endpoint's configuration and what it saw."""

    client_id: str = "the-client"
    client_secret: str = "the-client-secret"
    username: str = "the-user"
    password: str = "the-password"
    lifetime: float = 3600.0  # seconds an access token lives
    rotate: bool = True  # issue a new refresh token with every grant that has one
    delay: float = 0.0  # seconds the endpoint takes to answer
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    access: dict[str, float] = dataclasses.field(default_factory=dict)  # token -> expiry
    refresh: set[str] = dataclasses.field(default_factory=set)

    def grants(self) -> list[str]:
        return [c["grant_type"] for c in self.calls]

    def revoke_all(self) -> None:
        self.access.clear()


class StubServer(ThreadedHttpServer):
    """Start with ``with StubServer() as stub:``; ``stub.url`` is ``http://127.0.0.1:PORT``
    and ``stub.other_url`` the same server under another origin (``localhost``)."""

    def __init__(self) -> None:
        self.oauth = OAuthServer()
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.once: Counter[str] = Counter()
        self.answers: dict[str, tuple[int, Any]] = {}
        self.lock = threading.Lock()
        super().__init__(_handler(self), _Server)

    @property
    def other_url(self) -> str:
        return f"http://localhost:{self.port}"

    def answer(self, path: str, status: int, body: Any) -> None:
        """Answer every request to ``path`` with ``status`` and the JSON ``body``."""
        with self.lock:
            self.answers[path] = (status, body)

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]



class _Server(ThreadingHTTPServer):
    request_queue_size = 128


def _handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def handle(self) -> None:
            # the client may give up mid-answer (a body over its limit, a timeout)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                super().handle()

        def do_GET(self) -> None:
            self._handle()

        do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = Recorded(
                self.command, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)),
                {k.lower(): v for k, v in self.headers.items()}, body,
            )
            with stub.lock:
                stub.requests.append(request)
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
            try:
                _route(stub, self, request)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                with stub.lock:
                    stub.in_flight -= 1

    return Handler


def _route(stub: StubServer, h: BaseHTTPRequestHandler, r: Recorded) -> None:
    with stub.lock:
        scripted = stub.answers.get(r.path)
    if scripted is not None:
        return _json(h, scripted[0], scripted[1])
    segments = [s for s in r.path.split("/") if s]
    head = segments[0] if segments else ""
    if head == "status" and len(segments) >= 2:
        body: dict[str, Any] = {"message": r.query.get("message", "as you asked")}
        if r.query.get("echo_header"):
            body["you_sent"] = r.headers.get(r.query["echo_header"].lower())
        if r.query.get("echo_query"):
            body["you_sent"] = r.query.get(r.query["echo_query"])
        headers = {"Retry-After": r.query["retry_after"]} if "retry_after" in r.query else {}
        return _json(h, int(segments[1]), body, headers)
    if head == "once" and len(segments) >= 3:
        with stub.lock:
            stub.once[segments[1]] += 1
            first = stub.once[segments[1]] == 1
        if first:
            headers = {"Retry-After": r.query["retry_after"]} if "retry_after" in r.query else {}
            return _json(h, int(segments[2]), {"message": "not now"}, headers)
        return _json(h, 200, _echo(r))
    if head == "sleep" and len(segments) >= 2:
        time.sleep(float(segments[1]))  # not a wait: the latency this endpoint simulates
        return _json(h, 200, _echo(r))
    if head == "redirect":
        return _send(h, int(r.query.get("status", 302)), b"", {"Location": r.query["to"]})
    if head == "loop":
        return _send(h, 302, b"", {"Location": "/loop"})
    if head == "huge":
        return _huge(h, int(r.query["bytes"]), r.query.get("chunked") == "1")
    if head == "gzip":  # a JSON string of ``bytes`` x's, gzip-compressed (tiny on the wire)
        content = gzip.compress(json.dumps("x" * int(r.query["bytes"])).encode())
        return _send(h, 200, content, {"Content-Type": "application/json",
                                       "Content-Encoding": "gzip"})
    if head == "cookie":
        return _send(h, 200, json.dumps(_echo(r)).encode(),
                     {"Content-Type": "application/json", "Set-Cookie": "session=s1; Path=/"})
    if head == "v1":
        with stub.lock:
            number = len(stub.requests)
        return _json(h, 200, {**_echo(r), "id": f"rec-{number}"})
    if head == "text":
        return _send(h, 200, b"<html><body>Welcome to our login page</body></html>",
                     {"Content-Type": "text/html"})
    if head == "empty":
        return _send(h, 204, b"", {})
    if head == "oauth" and r.method == "POST":
        return _token(stub, h, r)
    if head in ("protected", "crm"):
        auth = r.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        with stub.lock:
            expiry = stub.oauth.access.get(token or "")
        if expiry is None or expiry < time.time():
            return _json(h, 401, {"message": "invalid or expired token"},
                         {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return _json(h, 200, _echo(r))


def _echo(r: Recorded) -> dict[str, Any]:
    try:
        body: Any = json.loads(r.body) if r.body else None
    except ValueError:
        body = r.body.decode(errors="replace")
    return {"method": r.method, "path": r.path, "query": r.query, "headers": r.headers,
            "body": body}


def _token(stub: StubServer, h: BaseHTTPRequestHandler, r: Recorded) -> None:
    oauth = stub.oauth
    form = {k: v[0] for k, v in parse_qs(r.body.decode()).items()}
    client_id, client_secret, client_auth = form.get("client_id"), form.get("client_secret"), "body"
    if r.headers.get("authorization", "").startswith("Basic "):
        decoded = base64.b64decode(r.headers["authorization"][6:]).decode()
        client_id, _, client_secret = decoded.partition(":")
        client_auth = "basic"
    grant = form.get("grant_type", "")
    with stub.lock:
        oauth.calls.append({"grant_type": grant, "client_auth": client_auth,
                            "scope": form.get("scope")})
    if oauth.delay:
        time.sleep(oauth.delay)  # not a wait: a slow token endpoint, simulated
    if (client_id, client_secret) != (oauth.client_id, oauth.client_secret):
        return _json(h, 401, {"error": "invalid_client"})
    with stub.lock:
        answer = _grant(oauth, grant, form)
    if answer is None:
        return _json(h, 400, {"error": "invalid_grant"})
    return _json(h, 200, answer)


def _grant(oauth: OAuthServer, grant: str, form: dict[str, str]) -> dict[str, Any] | None:
    if grant == "password":
        ok = (form.get("username"), form.get("password")) == (oauth.username, oauth.password)
    elif grant == "refresh_token":
        ok = form.get("refresh_token") in oauth.refresh
        if ok and oauth.rotate:
            oauth.refresh.discard(form["refresh_token"])
    else:
        ok = grant == "client_credentials"
    if not ok:
        return None
    access = "at-" + secrets.token_urlsafe(16)
    oauth.access[access] = time.time() + oauth.lifetime
    answer: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                              "expires_in": oauth.lifetime}
    if grant == "password" or (grant == "refresh_token" and oauth.rotate):
        answer["refresh_token"] = "rt-" + secrets.token_urlsafe(16)
        oauth.refresh.add(answer["refresh_token"])
    return answer


def _huge(h: BaseHTTPRequestHandler, size: int, chunked: bool) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    if chunked:
        h.send_header("Transfer-Encoding", "chunked")
    else:
        h.send_header("Content-Length", str(size))
    h.end_headers()
    block = b"x" * 65536
    sent = 0
    while sent < size:  # a JSON string: a quote, x's, a quote
        piece = block[: min(len(block), size - sent)]
        if sent == 0:
            piece = b'"' + piece[1:]
        if sent + len(piece) == size:
            piece = piece[:-1] + b'"'
        h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
        sent += len(piece)
    if chunked:
        h.wfile.write(b"0\r\n\r\n")


def _json(h: BaseHTTPRequestHandler, status: int, body: Any,
          headers: dict[str, str] | None = None) -> None:
    _send(h, status, json.dumps(body).encode(),
          {"Content-Type": "application/json", **(headers or {})})


def _send(h: BaseHTTPRequestHandler, status: int, content: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    for name, value in headers.items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(content)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(content)
