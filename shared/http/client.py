"""The third-party HTTP client: one per (process, instance) (docs/architecture.md §5 step 4).

``await client.send(plan)`` sends a :class:`~shared.connector.request.RequestPlan`
with the instance's credentials, within the instance's concurrency and rate limit,
and returns a :class:`Response` for any status below 400 — or raises one error of
``shared.errors`` that decides retry or dead-letter:

* ``UnsafeRequest`` — the URL (or a redirect, or a next-page URL given by the caller)
  leaves the instance's origin (scheme, host and port of its base URL);
* ``RemoteUnavailable`` — timeout, connection failure, 5xx, 408/425;
* ``RateLimited`` — 429 (or 503 with ``Retry-After``) not settled by one short inline
  wait; ``retry_after`` carries the server's delay;
* ``RemoteConflict`` — 409/423; ``RemoteRejected`` — other 4xx, with the status and a
  redacted body snippet;
* ``AuthenticationFailed`` — 401/403 (an OAuth2 token is refreshed once on a 401 first);
* ``RemoteProtocolError`` — a status outside 100-599 (``HTTP/1.1 999``: the status
  line is in the message), a body over the size limit, a non-JSON body where the
  operation promises JSON, too many redirects;
* ``ConfigurationError`` — no credentials fill the operation's security requirement;
* ``RemoteRejected`` too for an answer below 400 whose body carries an error by the
  call's ``errorPointer`` / ``errorWhen`` (``shared.connector.answer_errors``).

Redirects are followed here, not by httpx, and only within the instance's origin.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from shared.connector.answer_errors import AnswerErrorRule
from shared.connector.document import ConnectorDocument
from shared.connector.openapi import Operation, deref
from shared.connector.request import RequestPlan, server_url
from shared.credentials import resolve_credentials
from shared.errors import (
    ConfigurationError,
    MappingError,
    RemoteProtocolError,
    RemoteRejected,
    UnsafeRequest,
)
from shared.http.auth import Applied, Authenticator
from shared.http.httpx_transport import TransportKind, open_transport
from shared.http.outcome import (
    TRANSLATED,
    not_http_error,
    parse_retry_after,
    snippet,
    status_error,
    translate,
)
from shared.http.ratelimit import Throttle
from shared.http.settings import (
    USER_AGENT,
    ClientOptions,
    InstanceEndpoint,
    RateLimit,
    Timeouts,
)
from shared.http.tokens import MemoryTokenStore, SharedTokenStore, TokenCipher, TokenStore
from shared.http.transport import BodyTooLarge, NotHttpStatus
from shared.storage.db import Database
from shared.storage.oauth_tokens import SealedTokenStore
from shared.transform import UNDEFINED, ExpressionRuntimeError

log = structlog.get_logger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: What every request carries unless the plan says otherwise (httpx's defaults, ours).
DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept": "*/*",
                   "Accept-Encoding": "gzip, deflate", "Connection": "keep-alive"}
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


@dataclasses.dataclass(frozen=True)
class Response:
    """A third-party answer below 400.

    ``body`` is the parsed JSON (``None`` for an empty body, or a non-JSON one the
    operation does not promise as JSON); ``elapsed`` is seconds on the wire, redirects
    included; ``url`` is the final URL (query string included: may hold an API key);
    ``request`` is the request line as it went on the wire, without the query string
    (``PUT /things/%2E%2E``): what audit rows and errors name.
    """

    status: int
    headers: httpx.Headers
    body: Any
    elapsed: float
    url: str = dataclasses.field(repr=False)
    content: bytes = dataclasses.field(repr=False)
    request: str = ""


@dataclasses.dataclass(frozen=True)
class _Answer:
    status: int
    headers: httpx.Headers
    content: bytes
    url: str
    elapsed: float
    request: str  # the request line sent (method and path, no query)


def origin(url: str) -> Origin:
    """``(scheme, host, port)`` of an absolute http(s) URL; raises ``UnsafeRequest``."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeRequest(f"refused a URL that does not parse ({exc})") from exc
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.host:
        raise UnsafeRequest(f"refused {describe_url(url)}: only absolute http(s) URLs are sent")
    return scheme, parsed.host.lower(), parsed.port or _DEFAULT_PORTS[scheme]


def describe_url(url: str) -> str:
    """Scheme, host and path of ``url`` — never its query string, which may hold a key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class ThirdPartyClient:
    """Sends requests to one instance's server. Build one per instance and process,
    share it between the tasks of the process, ``await aclose()`` at shutdown.

    Construction resolves the instance's credential references and does no network
    I/O. Raises ``ConfigurationError`` (no server URL, unreadable credential, bad rate
    limit). ``db`` shares OAuth2 tokens with the other processes through PostgreSQL;
    without it tokens are shared by this process's tasks only. ``http_transport``:
    ``fast`` (ours) or ``httpx`` (httpx's default transport); ``None`` takes
    ``HTTP_TRANSPORT`` from the process's settings.
    """

    def __init__(
        self,
        document: ConnectorDocument,
        endpoint: InstanceEndpoint,
        *,
        db: Database | None = None,
        token_store: TokenStore | None = None,
        options: ClientOptions | None = None,
        http_transport: TransportKind | None = None,
    ) -> None:
        self.document = document
        self.endpoint = endpoint
        self.options = options or ClientOptions()
        self.base_url = server_url(document, endpoint.variables, endpoint.server_url)
        try:
            self.origin = origin(self.base_url)
        except UnsafeRequest as exc:
            raise ConfigurationError(
                f"instance {endpoint.id}: server URL {describe_url(self.base_url)} "
                "is not an absolute http(s) URL"
            ) from exc
        self.timeouts = Timeouts.from_settings(document.settings, endpoint.setting("timeouts"))
        self.rate_limit = RateLimit.from_settings(document.settings, endpoint.setting("rateLimit"))
        self.throttle = Throttle(self.rate_limit)
        credentials = resolve_credentials(endpoint.credentials)
        if token_store is None:
            token_store = (
                SharedTokenStore(SealedTokenStore(db), endpoint.id,
                                 TokenCipher.derive(endpoint.id, credentials))
                if db is not None
                else MemoryTokenStore()
            )
        self._auth = Authenticator(
            document, endpoint, self.base_url, credentials, token_store,
            timeouts=self.timeouts, refresh_margin=self.options.refresh_margin,
        )
        # Requests go straight to the transport (``fetch``): redirects are followed here,
        # credentials placed by the authenticator, and no cookie jar is kept — a
        # third party's Set-Cookie does not leak into later requests of other records.
        self._transport = open_transport(http_transport,
                                         max_connections=self.rate_limit.concurrency)
        # The common case skips URL parsing: a URL that starts with the base URL's
        # scheme://host:port/ is on the instance's origin (see _within_origin).
        parts = urlsplit(self.base_url)
        scheme, host, port = self.origin
        self._prefix = (f"{parts.scheme}://{parts.netloc}/"
                        if "@" not in parts.netloc and host.isascii() else None)
        self._wire_origin = (scheme.encode(), host.encode("ascii", "replace"), port)
        self._timeout = {"connect": self.timeouts.connect, "read": self.timeouts.read,
                         "write": self.timeouts.read, "pool": self.timeouts.connect}

    def __repr__(self) -> str:
        base = describe_url(self.base_url)
        return f"ThirdPartyClient(instance={self.endpoint.id!r}, base_url={base!r})"

    async def __aenter__(self) -> ThirdPartyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections (the token endpoint's too); idempotent."""
        await self._transport.aclose()
        await self._auth.aclose()

    async def send(self, plan: RequestPlan, *, accept: Collection[int] = ()) -> Response:
        """Send ``plan`` and classify the answer (see the module docstring for errors).

        A status of 400 or more in ``accept`` is returned as a ``Response`` when its body
        is JSON (a create's 409 naming the record that exists), else raised as usual.
        A 401 with a refreshable OAuth2 token refreshes it once and retries once; a
        429/503 with ``Retry-After`` pauses the instance until then and, when that is
        at most ``options.inline_retry_max`` seconds, waits and retries once.
        """
        plan = self._within_origin(plan)
        applied = await self._auth.prepare(plan.operation)
        refreshed = waited = False
        while True:
            answer = await self._exchange(plan, applied)
            if answer.status == 401 and applied.refreshable and not refreshed:
                log.info("http.token_refused", instance_id=self.endpoint.id,
                         request=self.request_line(plan))
                refreshed = True
                applied = await self._auth.prepare(plan.operation, stale=applied.bearer)
                continue
            retry_after = (
                parse_retry_after(answer.headers.get("retry-after"))
                if answer.status in (429, 503)
                else None
            )
            if retry_after is not None:
                self.throttle.pause_for(min(retry_after, self.options.max_pause))
                if not waited and retry_after <= self.options.inline_retry_max:
                    waited = True
                    continue
            return self._outcome(plan, answer, retry_after, refreshed, accept)

    # -- one exchange: limits, redirects, bounded body -------------------------------

    async def _exchange(self, plan: RequestPlan, applied: Applied) -> _Answer:
        request = self.request_line(plan)
        elapsed = 0.0
        async with self.throttle.slot():
            for _hop in range(self.options.max_redirects + 1):
                await self.throttle.turn()
                placed = self._auth.place(plan, applied)
                answer = await self._round_trip(placed, self.request_line(placed))
                elapsed += answer.elapsed
                location = answer.headers.get("location")
                if answer.status not in REDIRECT_STATUSES or not location:
                    return dataclasses.replace(answer, elapsed=elapsed)
                plan = self._redirected(plan, answer.status, location)
        raise RemoteProtocolError(
            f"{request} was redirected more than {self.options.max_redirects} times"
        )

    async def _round_trip(self, plan: RequestPlan, request: str) -> _Answer:
        started = time.monotonic()
        limit = self.options.max_response_bytes
        _check_headers(plan.headers)
        target = self._wire_target(plan.url)
        try:
            if target is not None:
                given = {name.lower() for name in plan.headers}
                wire = [(k, v) for k, v in DEFAULT_HEADERS.items() if k.lower() not in given]
                wire += [(k, str(v)) for k, v in plan.headers.items()]
                answer = await self._transport.fetch_raw(
                    self._wire_origin, plan.method, target, wire, _encode(plan), self._timeout,
                    limit)
            else:  # a URL to normalise or encode: httpx does it
                headers = httpx.Headers(DEFAULT_HEADERS)
                headers.update(plan.headers)
                outgoing = httpx.Request(plan.method, plan.url, headers=headers,
                                         content=_encode(plan),
                                         extensions={"timeout": self._timeout})
                answer = await self._transport.fetch(outgoing, limit)
        except BodyTooLarge as exc:
            raise _too_large(request, exc.status, exc.limit) from None
        except NotHttpStatus as exc:
            raise not_http_error(request, exc.status, exc.status_line) from None
        except TRANSLATED as exc:
            raise translate(exc, request) from exc
        return _Answer(answer.status, answer.headers, answer.content, plan.url,
                       time.monotonic() - started, request)

    def request_line(self, plan: RequestPlan) -> str:
        """``METHOD /path`` as ``plan`` goes on the wire — percent-encoded, dot segments
        resolved where httpx resolves them — without the query string (it may hold a
        key). What errors and audit rows name."""
        target = self._wire_target(plan.url)
        if target is None:
            try:
                target = httpx.URL(plan.url).raw_path.decode("ascii")
            except (httpx.InvalidURL, UnicodeDecodeError):
                target = urlsplit(plan.url).path
        return f"{plan.method} {target.partition('?')[0] or '/'}"

    def _wire_target(self, url: str) -> str | None:
        """The request target of ``url`` when it can go on the wire as it is: on the
        origin, printable ASCII (percent-encoded), no fragment, no dot segment."""
        prefix = self._prefix
        if prefix is None or not url.startswith(prefix):
            return None
        target = url[len(prefix) - 1:]
        if _WIRE_TARGET.fullmatch(target) is None or "/." in target:
            return None
        return target

    def _within_origin(self, plan: RequestPlan) -> RequestPlan:
        """``plan`` with an absolute URL on the instance's origin; raises ``UnsafeRequest``."""
        if self._prefix is not None and plan.url.startswith(self._prefix):
            return plan  # absolute, and on the origin: the authority ends at that "/"
        url = urljoin(self.base_url + "/", plan.url)
        if origin(url) != self.origin:
            raise UnsafeRequest(
                f"{plan.method} {describe_url(url)} refused: it leaves the instance's server "
                f"{describe_url(self.base_url)}",
                details={"url": describe_url(url)},
            )
        return plan if url == plan.url else dataclasses.replace(plan, url=url)

    def _redirected(self, plan: RequestPlan, status: int, location: str) -> RequestPlan:
        """The request a redirect asks for (method rules as httpx and browsers)."""
        target = self._within_origin(dataclasses.replace(plan, url=urljoin(plan.url, location)))
        method = plan.method
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            headers = {k: v for k, v in plan.headers.items() if k.lower() != "content-type"}
            return dataclasses.replace(target, method="GET", body=UNDEFINED, content=None,
                                       headers=headers)
        return target

    # -- classification ---------------------------------------------------------------

    def _outcome(
        self, plan: RequestPlan, answer: _Answer, retry_after: float | None, refreshed: bool,
        accept: Collection[int] = (),
    ) -> Response:
        request = answer.request
        if answer.status >= 400:
            error = status_error(
                request, answer.status, answer.content,
                retry_after=retry_after, after_refresh=refreshed and answer.status == 401,
            )
            if answer.status not in accept:
                raise error
            try:
                body = self._parse(plan.operation, request, answer)
            except RemoteProtocolError:
                raise error from None
            if body is None:
                raise error
        else:
            body = self._parse(plan.operation, request, answer)
            if plan.answer_error is not None:
                _check_answer(plan.answer_error, request, answer, body)
        return Response(answer.status, answer.headers, body, answer.elapsed, answer.url,
                        answer.content, request)

    def _parse(self, operation: Operation, request: str, answer: _Answer) -> Any:
        if not answer.content.strip():
            return None
        media = answer.headers.get("content-type", "")
        if not (_is_json(media) or promises_json(self.document, operation, answer.status)):
            return None
        try:
            return json.loads(answer.content)
        except ValueError:
            raise RemoteProtocolError(
                f"{request} answered {answer.status} with a body that is not JSON "
                f"({media or 'no Content-Type'}): {snippet(answer.content)}",
                http_status=answer.status,
            ) from None


def _check_answer(rule: AnswerErrorRule, request: str, answer: _Answer, body: Any) -> None:
    """Raise ``RemoteRejected`` when an answer below 400 carries an error in its body
    (the call's ``errorPointer`` / ``errorWhen``), ``RemoteProtocolError`` when
    ``errorWhen`` cannot be evaluated on it."""
    try:
        found = rule.failure(body)
    except ExpressionRuntimeError as exc:
        raise RemoteProtocolError(
            f"{request} answered {answer.status}, and errorWhen failed on the answer: {exc}",
            http_status=answer.status) from None
    if found is None:
        return
    said = snippet(found.encode()) if found else snippet(answer.content)
    raise RemoteRejected(
        f"{request} answered {answer.status} with an error in its body"
        + (f": {said}" if said else ""),
        http_status=answer.status,
        details={"status": answer.status, "request": request, "errorRule": rule.describe()})


def promises_json(document: ConnectorDocument, operation: Operation, status: int) -> bool:
    """Whether the operation documents a JSON body for ``status`` (its own entry, else
    ``2XX``, else ``default``; a status it does not document: any 2xx entry)."""
    responses = operation.raw.get("responses")
    if not isinstance(responses, Mapping):
        return False
    for key in (str(status), f"{status // 100}XX", "default"):
        if key in responses:
            return _json_content(document, responses[key])
    return 200 <= status < 300 and any(
        _json_content(document, value)
        for key, value in responses.items()
        if str(key).startswith("2")
    )


def _json_content(document: ConnectorDocument, response: Any) -> bool:
    response = deref(document.document, response)
    content = response.get("content") if isinstance(response, dict) else None
    return isinstance(content, Mapping) and any(_is_json(str(m)) for m in content)


def _is_json(media: str) -> bool:
    media = media.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


_WIRE_TARGET = re.compile(r"/[!-\"$-~]*")  # printable ASCII but "#", no space
_LINE_BREAK = re.compile(r"[\r\n\x00]")


def _check_headers(headers: Mapping[str, Any]) -> None:
    """Header values made from record data must be ASCII and must not smuggle in
    another header; ``MappingError`` otherwise (the record, or the mapping, is wrong)."""
    for name, value in headers.items():
        text = str(value)
        if _LINE_BREAK.search(name) or _LINE_BREAK.search(text):
            raise MappingError(f"refused to send the header {name!r}: its value holds a "
                               "line break or NUL")
        if not (name.isascii() and text.isascii()):
            raise MappingError(f"refused to send the header {name!r}: HTTP header values "
                               "must be ASCII")


def _encode(plan: RequestPlan) -> bytes | None:
    if not plan.has_body:
        return None
    if plan.content is not None:
        return plan.content  # a form body, encoded when the request was planned
    body = plan.body
    if isinstance(body, bytes):
        return body
    media = next((v for k, v in plan.headers.items() if k.lower() == "content-type"), "")
    if isinstance(body, str) and not _is_json(media):
        return body.encode()
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _too_large(request: str, status: int, limit: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"{request} answered {status} with a body over the {limit}-byte limit",
        http_status=status,
    )
