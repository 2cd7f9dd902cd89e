"""What a third-party answer or failure means for the record (docs/architecture.md §5 step 4). Pure.

* an HTTP status → :func:`status_error` (the class comes from
  :func:`shared.errors.classify_http_status`; the message names the request and shows
  a redacted snippet of the body: ``POST /companies answered 422: {"message": …}``);
* a status outside 100-599 → :func:`not_http_error`: the third party broke the
  protocol (permanent), the message shows the status line as it came;
* an httpx exception → :func:`translate` through :data:`HTTPX_ERRORS`, the one table
  of foreign exceptions this package maps (a unit test walks every httpx exception
  class and checks it is mapped or deliberately left alone);
* ``Retry-After`` → :func:`parse_retry_after` (delay-seconds or an HTTP date).
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime

import httpx

from shared.errors import (
    ConfigurationError,
    MappingError,
    RateLimited,
    RemoteProtocolError,
    RemoteUnavailable,
    SyncError,
    UnsafeRequest,
    classify_http_status,
)
from shared.logging import redact

SNIPPET_CHARS = 300

#: httpx exception → ours, most specific first (the first ``isinstance`` match wins).
HTTPX_ERRORS: tuple[tuple[type[Exception], type[SyncError]], ...] = (
    (httpx.TimeoutException, RemoteUnavailable),  # connect/read/write/pool timeouts
    (httpx.NetworkError, RemoteUnavailable),  # refused, reset, closed
    (httpx.ProxyError, RemoteUnavailable),  # the egress proxy failed
    # The server broke HTTP: almost always a keep-alive connection it closed under us.
    (httpx.RemoteProtocolError, RemoteUnavailable),
    # We built something that is not valid HTTP (a header value from the record).
    (httpx.LocalProtocolError, MappingError),
    (httpx.UnsupportedProtocol, ConfigurationError),  # the server URL is not http(s)
    (httpx.DecodingError, RemoteProtocolError),  # a body its Content-Encoding can't decode
    (httpx.TooManyRedirects, RemoteProtocolError),
    (httpx.InvalidURL, UnsafeRequest),  # we refuse a URL we cannot even parse
    (httpx.CookieConflict, RemoteProtocolError),
    (httpx.HTTPStatusError, RemoteProtocolError),  # refined by status in translate()
    (httpx.TransportError, RemoteUnavailable),
    (httpx.RequestError, RemoteUnavailable),
    (httpx.HTTPError, RemoteUnavailable),
)

#: What ``except`` clauses around httpx calls catch (and hand to :func:`translate`).
TRANSLATED: tuple[type[Exception], ...] = tuple(foreign for foreign, _ours in HTTPX_ERRORS)

#: Left untranslated on purpose: they mean bss-sync misused httpx (read a stream twice,
#: read a closed one). The consumer treats a foreign exception as a bug and logs its
#: traceback — hiding it behind a remote-sounding error would send us looking elsewhere.
NOT_TRANSLATED: tuple[type[Exception], ...] = (httpx.StreamError,)


def translate(exc: Exception, request: str) -> SyncError:
    """Our error for an httpx exception raised while doing ``request`` (``"GET /path"``).

    Raises ``TypeError`` when ``exc`` is not an httpx error we translate.
    """
    if isinstance(exc, httpx.HTTPStatusError):
        return status_error(request, exc.response.status_code, exc.response.content)
    for foreign, ours in HTTPX_ERRORS:
        if isinstance(exc, foreign):
            reason = redact(str(exc).strip()) or "no detail"
            return ours(f"{request} failed: {type(exc).__name__} ({reason})")
    raise TypeError(f"{type(exc).__name__} is not an httpx error bss-sync translates")


def status_error(
    request: str,
    status: int,
    content: bytes,
    *,
    retry_after: float | None = None,
    after_refresh: bool = False,
) -> SyncError:
    """The error for a non-2xx answer to ``request``.

    ``retry_after`` (seconds) turns a 429 or 503 into :class:`RateLimited` carrying it.
    """
    cls = classify_http_status(status) or RemoteProtocolError
    if retry_after is not None and status in (429, 503):
        cls = RateLimited
    message = f"{request} answered {status}"
    if after_refresh:
        message += " even after a token refresh"
    text = snippet(content)
    if text:
        message += f": {text}"
    details = {"status": status, "request": request}
    if cls is RateLimited:
        return RateLimited(message, retry_after=retry_after, http_status=status, details=details)
    return cls(message, http_status=status, details=details)


def not_http_error(request: str, status: int, status_line: str) -> RemoteProtocolError:
    """The error for an answer whose status is no HTTP status (outside 100-599, e.g.
    ``HTTP/1.1 999 Weird``): permanent, so the record is dead-lettered once, with the
    status line in its ``x-error``, instead of counting as a success or a 5xx."""
    line = status_line or f"status {status}"
    return RemoteProtocolError(
        f"{request} answered with a status line that is not HTTP: {line}",
        http_status=status, details={"status_line": line, "request": request})


def snippet(content: bytes, limit: int = SNIPPET_CHARS) -> str:
    """The start of a body as one redacted line of at most ``limit`` characters."""
    if not content:
        return ""
    text = content[: limit * 4].decode("utf-8", errors="replace")
    text = re.sub(r"\s+", " ", text).strip()
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (``"120"`` or an HTTP date), never
    negative; ``None`` when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())
