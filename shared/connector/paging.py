"""Pagination and incremental filters of list operations (pure).

A list call declares how pages follow each other (``link``, ``next-url``,
``cursor``, ``page``, ``offset`` or ``none``) and how to ask only for records
changed since the last pull (``incremental``). ``PageRequest`` is what varies
from one request to the next; ``first_page`` and ``next_page`` compute it, and
``list_request`` turns it into the request — for pull discovery and for
``bss-sync preview --direction pull`` alike, so the preview shows what is sent. A page or
since parameter goes where the operation declares it: the query string, a header or a
cookie.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

from shared.connector.document import CallSpec
from shared.connector.request import RequestPlan, plan_request, with_parameters
from shared.connector.source import resolve_pointer
from shared.transform import UNDEFINED, TransformContext

DEFAULT_PAGE_SIZE = 100
#: How far before the stored cursor an incremental listing starts (docs/decisions.md).
OVERLAP = timedelta(seconds=60)
#: The cursor of an object's ``pull.deletedList`` is stored as ``<object>#deleted``
#: (object names are identifiers: it never meets another object's cursor).
DELETED_CURSOR_SUFFIX = "#deleted"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class PageRequest:
    """The varying part of one list request."""

    query: dict[str, Any]  # extra query parameters
    body_fields: dict[str, Any]  # top-level fields set in the list body
    url: str | None = None  # an absolute next-page URL (link, next-url)
    cursor: Any = None  # what the body transform sees as {cursor}
    number: int = 1  # page number, 1-based, for limits and logs


def page_state(page: PageRequest) -> dict[str, Any]:
    """``page`` as JSON (what a cursor stores to resume a listing)."""
    return dataclasses.asdict(page)


def page_from_state(state: dict[str, Any]) -> PageRequest:
    """The page :func:`page_state` stored."""
    return PageRequest(
        query=dict(state.get("query") or {}), body_fields=dict(state.get("body_fields") or {}),
        url=state.get("url"), cursor=state.get("cursor"), number=int(state.get("number", 1)))


def page_size(call: CallSpec) -> int:
    pagination = call.option("pagination") or {}
    return int(
        call.option("pageSize")
        or pagination.get("size")
        or pagination.get("limit")
        or DEFAULT_PAGE_SIZE
    )


def client_filtered(call: CallSpec) -> bool:
    """Whether the third party cannot filter the listing (``incremental.in: client``):
    it is asked for every record, discovery drops those changed before ``since``."""
    return (call.option("incremental") or {}).get("in") == "client"


def since_value(call: CallSpec, since: datetime | None) -> Any:
    """The cursor time in the format the third party expects (``incremental.format``);
    ``None`` when there is none to send (no cursor, or a client-side filter)."""
    if since is None or client_filtered(call):
        return None
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    since = since.astimezone(UTC)
    fmt = (call.option("incremental") or {}).get("format", "iso8601")
    if fmt == "epoch-ms":  # integer arithmetic: timestamp() * 1000 can lose a millisecond
        return (since - _EPOCH) // timedelta(milliseconds=1)
    if fmt == "ms-date":  # Microsoft's JSON date: /Date(<epoch ms>)/
        return f"/Date({(since - _EPOCH) // timedelta(milliseconds=1)})/"
    if fmt == "epoch-s":
        return (since - _EPOCH) // timedelta(seconds=1)
    if fmt == "date":
        return since.date().isoformat()
    return since.isoformat().replace("+00:00", "Z")


def field_format(call: CallSpec) -> str:
    """The format of a record's ``cursorField`` value: ``incremental.fieldFormat``, else
    the format of the value sent (``incremental.format``)."""
    incremental = call.option("incremental") or {}
    return str(incremental.get("fieldFormat") or incremental.get("format", "iso8601"))


_MS_DATE = re.compile(r"/Date\((-?\d+)(?:[+-]\d{4})?\)/")


def read_time(value: Any, fmt: str = "iso8601") -> datetime | None:
    """A modification time as a UTC datetime, read per ``fmt`` (an ``incremental``
    format): RFC 3339 text (naive: UTC), a date, epoch seconds or milliseconds (a number
    or digits), or ``/Date(1718000000000+0000)/`` (epoch milliseconds; the offset says
    how to display it, not when). ``None`` when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, int | float):
            millis = fmt in ("epoch-ms", "ms-date")
            return datetime.fromtimestamp(value / 1000 if millis else value, UTC)
        if isinstance(value, str):
            text = value.strip()
            ms_date = _MS_DATE.fullmatch(text)
            if ms_date is not None:
                return _EPOCH + timedelta(milliseconds=int(ms_date.group(1)))
            if text.isdigit():
                return read_time(int(text), fmt)
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def first_page(call: CallSpec, since: datetime | None) -> PageRequest:
    """The first request: pagination start values and the incremental filter."""
    pagination = call.option("pagination") or {"type": "none"}
    incremental = call.option("incremental") or {}
    query: dict[str, Any] = {}
    body: dict[str, Any] = {}
    kind = pagination.get("type", "none")
    if kind == "page":
        query[pagination["param"]] = pagination.get("start", 1)
        if pagination.get("sizeParam"):
            query[pagination["sizeParam"]] = page_size(call)
    elif kind == "offset":
        query[pagination["param"]] = 0
        if pagination.get("limitParam"):
            query[pagination["limitParam"]] = page_size(call)
    value = since_value(call, since)
    if value is not None and incremental.get("param"):
        target = body if incremental.get("in") == "body" else query
        target[incremental["param"]] = value
    return PageRequest(query, body)


# RFC 8288: link-value = "<" URI ">" *( OWS ";" OWS param ); param = token BWS [ "=" BWS
# ( token / quoted-string ) ]; rel holds space-separated relation types ("next last").
_LINK_PARAM = r'\s*;\s*([^\s;,=]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;,]*)))?'
_LINK_VALUE = re.compile(r"<([^>]*)>((?:" + _LINK_PARAM + r")*)")
_LINK_PARAM_RE = re.compile(_LINK_PARAM)


def _next_link(header: str) -> str | None:
    """The target of the first link whose ``rel`` includes ``next``."""
    for link in _LINK_VALUE.finditer(header):
        for param in _LINK_PARAM_RE.finditer(link.group(2)):
            if param.group(1).lower() == "rel":
                rel = param.group(2) if param.group(2) is not None else param.group(3) or ""
                if "next" in rel.lower().split():
                    return link.group(1)
                break  # only the first rel counts (RFC 8288 §3.3)
    return None


def next_page(
    call: CallSpec,
    current: PageRequest,
    response_body: Any,
    link_header: str | None,
    records_on_page: int,
) -> PageRequest | None:
    """The request after ``current``, or ``None`` when this was the last page."""
    if records_on_page == 0:
        return None
    pagination = call.option("pagination") or {"type": "none"}
    kind = pagination.get("type", "none")
    if kind == "link":
        url = _next_link(link_header or "")
        return dataclasses.replace(current, url=url, number=current.number + 1) if url else None
    if kind == "next-url":
        url = _pointer(response_body, pagination["next"])
        return (
            dataclasses.replace(current, url=str(url), number=current.number + 1) if url else None
        )
    if kind == "cursor":
        cursor = _pointer(response_body, pagination["next"])
        if cursor in (None, "") or cursor == current.cursor:
            return None
        query, body = dict(current.query), dict(current.body_fields)
        (body if pagination.get("in") == "body" else query)[pagination["param"]] = cursor
        return PageRequest(query, body, cursor=cursor, number=current.number + 1)
    if kind in ("page", "offset"):
        # Only an empty page ends the walk: a server may cap the page size below what
        # was asked, and a short page would then silently drop the rest.
        query = dict(current.query)
        step = 1 if kind == "page" else records_on_page
        query[pagination["param"]] = int(query.get(pagination["param"], 0)) + step
        return dataclasses.replace(current, query=query, number=current.number + 1)
    return None


def sorted_by_time(call: CallSpec) -> bool:
    """Whether the listing is ordered by its ``cursorField``, oldest first
    (``incremental.sorted``)."""
    return bool((call.option("incremental") or {}).get("sorted"))


def restart(call: CallSpec, state: dict[str, Any], listing_since: datetime | None,
            listing_high: datetime | None, overlap: timedelta = OVERLAP,
            ) -> tuple[datetime | None, PageRequest | None]:
    """Where a listing stopped mid-way starts again: ``(since, page)``, ``page`` ``None``
    for the first. At the page it stopped (``state``), from the ``since`` it started
    with — unless it is ordered by time (``incremental.sorted``): a record changed since
    the stop moved to its end and shifted the rest back, so a page number could skip
    one; it then starts over from the highest time its confirmed pages reached, minus
    ``overlap`` (never before its first ``since``)."""
    if not sorted_by_time(call):
        return listing_since, page_from_state(state)
    since = since_of(listing_high, overlap)
    if since is None or (listing_since is not None and since < listing_since):
        since = listing_since
    return since, None


def since_of(cursor: datetime | None, overlap: timedelta = OVERLAP) -> datetime | None:
    """Where an incremental listing starts: the stored cursor minus ``overlap``."""
    return None if cursor is None else cursor - overlap


def list_request(call: CallSpec, base_url: str, context: TransformContext,
                 page: PageRequest, since: datetime | None) -> RequestPlan:
    """The request of ``page`` (parameters and body templates see ``since``, ``cursor``
    and ``pageSize``; a body transform builds a POST search body, the page's
    ``body_fields`` are set over it; a next URL is joined to ``base_url`` — whether it
    may be followed is the caller's to check). Raises ``MappingError``."""
    data = {"since": since_value(call, since), "cursor": page.cursor,
            "pageSize": page_size(call)}
    body: Any = call.body.apply(data, context) if call.body is not None else UNDEFINED
    if page.body_fields:
        body = {**(body if isinstance(body, dict) else {}), **page.body_fields}
    plan = plan_request(call, base_url=base_url, data=data, context=context, body=body)
    if page.url:  # its query is the server's; header and cookie parameters still go
        plan = dataclasses.replace(plan, url=urljoin(base_url.rstrip("/") + "/", page.url))
    return with_parameters(plan, page.query, query=not page.url)


def records_of(call: CallSpec, response_body: Any) -> list[Any] | None:
    """The records array of a list response (``records`` pointer); ``None`` when the
    response does not have one there."""
    found = _pointer(response_body, call.option("records", ""))
    return found if isinstance(found, list) else None


def _pointer(document: Any, pointer: str) -> Any:
    try:
        return resolve_pointer(document, pointer)
    except (KeyError, ValueError):
        return None
