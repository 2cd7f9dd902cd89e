"""Classifying third-party answers and failures (pure): Retry-After, statuses, snippets,
and the translation of every httpx exception."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from shared.errors import (
    AuthenticationFailed,
    ConfigurationError,
    MappingError,
    RateLimited,
    RemoteConflict,
    RemoteProtocolError,
    RemoteRejected,
    RemoteUnavailable,
    SyncError,
    UnsafeRequest,
)
from shared.http.outcome import (
    HTTPX_ERRORS,
    NOT_TRANSLATED,
    TRANSLATED,
    parse_retry_after,
    snippet,
    status_error,
    translate,
)
from shared.logging import register_secret

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

# -- Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 5 ", 5.0), ("0", 0.0), ("1.5", 1.5), ("-3", 0.0),
     (None, None), ("", None), ("soon", None), ("nan", None), ("inf", None)],
)
def test_retry_after_seconds(value, seconds) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_http_date() -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, NOW) == 90.0
    earlier = format_datetime(NOW - timedelta(minutes=5), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0.0
    assert parse_retry_after("Sat, 01 Mar 2025 12:02:00 GMT", NOW) == 120.0


# -- statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, RemoteUnavailable), (503, RemoteUnavailable), (408, RemoteUnavailable),
     (425, RemoteUnavailable), (409, RemoteConflict), (423, RemoteConflict),
     (429, RateLimited), (401, AuthenticationFailed), (403, AuthenticationFailed),
     (400, RemoteRejected), (404, RemoteRejected), (422, RemoteRejected)],
)
def test_status_error_classes(status, error) -> None:
    exc = status_error("GET /x", status, b"")
    assert type(exc) is error
    assert exc.http_status == status
    assert str(exc) == f"GET /x answered {status}"


def test_a_retry_after_makes_429_and_503_rate_limited() -> None:
    exc = status_error("POST /companies", 503, b"maintenance", retry_after=600)
    assert isinstance(exc, RateLimited) and exc.retry_after == 600
    assert isinstance(status_error("GET /x", 429, b"", retry_after=7), RateLimited)
    assert status_error("GET /x", 429, b"").retry_after is None
    assert type(status_error("GET /x", 500, b"", retry_after=7)) is RemoteUnavailable


def test_status_error_message_shows_a_redacted_snippet() -> None:
    register_secret("sk_live_do_not_show")
    body = b'{"message": "name is required",\n "key": "sk_live_do_not_show"}'
    exc = status_error("POST /companies", 422, body)
    assert str(exc) == (
        'POST /companies answered 422: {"message": "name is required", "key": "***"}')
    assert exc.details == {"status": 422, "request": "POST /companies"}


def test_after_refresh_is_said() -> None:
    exc = status_error("GET /x", 401, b"", after_refresh=True)
    assert str(exc) == "GET /x answered 401 even after a token refresh"


def test_snippet_is_one_line_of_at_most_300_characters() -> None:
    text = snippet(b"a\n\n  b" + b"c" * 1000)
    assert text.startswith("a b")
    assert len(text) == 300 and text.endswith("…")
    assert snippet(b"") == ""
    assert snippet("é".encode() * 10 + b"\xff") == "é" * 10 + "\ufffd"


# -- httpx exceptions ------------------------------------------------------------------------


def _httpx_exception_classes() -> set[type[Exception]]:
    found: set[type[Exception]] = set()
    stack = [obj for obj in vars(httpx).values()
             if inspect.isclass(obj) and issubclass(obj, Exception)]
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith("httpx") and cls not in found:
            found.add(cls)
            stack.extend(cls.__subclasses__())
    return found


def _instance(cls: type[Exception]) -> Exception:
    request = httpx.Request("GET", "https://crm.example.test/companies?api_key=s3cr3t-k3y")
    if issubclass(cls, httpx.HTTPStatusError):
        response = httpx.Response(502, request=request, content=b"bad gateway")
        return cls("boom", request=request, response=response)
    if issubclass(cls, httpx.RequestError):
        return cls("boom", request=request)
    return cls("boom")


def test_every_httpx_exception_is_translated_or_deliberately_left_alone() -> None:
    classes = _httpx_exception_classes()
    assert len(classes) >= 25, "the walk found httpx's exception tree"
    for cls in classes:
        if issubclass(cls, NOT_TRANSLATED):
            assert not issubclass(cls, TRANSLATED), cls
            continue
        exc = _instance(cls)
        assert isinstance(exc, TRANSLATED), f"{cls.__name__} escapes the except clause"
        ours = translate(exc, "GET /companies")
        assert isinstance(ours, SyncError), cls
        assert str(ours).startswith("GET /companies"), cls


@pytest.mark.parametrize(
    ("foreign", "ours"),
    [(httpx.ConnectTimeout, RemoteUnavailable), (httpx.ReadTimeout, RemoteUnavailable),
     (httpx.WriteTimeout, RemoteUnavailable), (httpx.PoolTimeout, RemoteUnavailable),
     (httpx.ConnectError, RemoteUnavailable), (httpx.ReadError, RemoteUnavailable),
     (httpx.WriteError, RemoteUnavailable), (httpx.CloseError, RemoteUnavailable),
     (httpx.ProxyError, RemoteUnavailable), (httpx.RemoteProtocolError, RemoteUnavailable),
     (httpx.LocalProtocolError, MappingError), (httpx.UnsupportedProtocol, ConfigurationError),
     (httpx.DecodingError, RemoteProtocolError), (httpx.TooManyRedirects, RemoteProtocolError),
     (httpx.InvalidURL, UnsafeRequest), (httpx.HTTPStatusError, RemoteUnavailable)],
)
def test_httpx_translation_table(foreign, ours) -> None:
    translated = translate(_instance(foreign), "GET /companies")
    assert type(translated) is ours


def test_translation_keeps_the_reason_and_masks_secrets() -> None:
    register_secret("s3cr3t-k3y")
    exc = httpx.ConnectError("connect to https://crm.example.test/?api_key=s3cr3t-k3y failed")
    message = str(translate(exc, "GET /companies"))
    assert message.startswith("GET /companies failed: ConnectError (connect to")
    assert "s3cr3t-k3y" not in message


def test_the_table_lists_specific_classes_before_their_bases() -> None:
    seen: list[type[Exception]] = []
    for foreign, _ours in HTTPX_ERRORS:
        assert not any(issubclass(foreign, earlier) for earlier in seen), foreign
        seen.append(foreign)


def test_a_foreign_non_httpx_exception_is_refused() -> None:
    with pytest.raises(TypeError):
        translate(ValueError("x"), "GET /x")


# -- statuses that are not HTTP ---------------------------------------------------------------


def test_a_status_outside_100_to_599_is_a_permanent_protocol_error_showing_the_line() -> None:
    from shared.http.outcome import not_http_error

    exc = not_http_error("POST /companies", 999, "HTTP/1.1 999 Weird")
    assert type(exc) is RemoteProtocolError and not exc.retryable
    assert str(exc) == ("POST /companies answered with a status line that is not HTTP: "
                        "HTTP/1.1 999 Weird")
    assert exc.http_status == 999 and exc.details["status_line"] == "HTTP/1.1 999 Weird"
    assert "status 0" in str(not_http_error("GET /x", 0, ""))


def test_the_status_line_is_shown_printable_and_short() -> None:
    from shared.http.transport import MAX_STATUS_LINE_CHARS, status_line

    assert status_line("1.1", 999, b"Weird") == "HTTP/1.1 999 Weird"
    assert status_line(b"HTTP/1.0", 0, b"") == "HTTP/1.0 000"
    assert status_line("1.1", 999, b"We\x00ird\xff") == "HTTP/1.1 999 We\\x00ird\\xff"
    assert len(status_line("1.1", 999, b"x" * 5000)) == MAX_STATUS_LINE_CHARS
