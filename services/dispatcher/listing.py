"""Pull discovery, listing side: walk an object's ``pull.list`` pages on the third party.

Requests go through the instance's :class:`~shared.http.ThirdPartyClient` (credentials,
rate limit and concurrency of the instance, one inline wait on ``Retry-After``); which
request comes next is :mod:`shared.connector.paging`'s decision (every pagination kind).
What this module adds:

* the list request of a page (:func:`shared.connector.paging.list_request`, which
  ``bss-sync preview`` shows too);
* a next link or next URL on another host than the instance's server is refused with
  :class:`~shared.errors.UnsafeRequest` naming the URL, before anything is sent to it;
* a transient failure (5xx, timeout, 429) is retried with backoff
  (:class:`ListingRetry`), then raised — the discovery then fails, audited with the
  page where it stopped;
* a response without the ``records`` array is a :class:`~shared.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urljoin

from shared.connector import paging
from shared.connector.document import CallSpec
from shared.connector.paging import page_from_state, page_state, since_of
from shared.connector.request import RequestPlan
from shared.connector.source import resolve_pointer
from shared.errors import RateLimited, RemoteProtocolError, SyncError, UnsafeRequest
from shared.http.client import Response, describe_url, origin
from shared.transform import TransformContext


class ThirdParty(Protocol):
    """One instance's server (``shared.http.ThirdPartyClient``)."""

    @property
    def base_url(self) -> str: ...

    async def send(self, plan: RequestPlan) -> Response:
        """The answer below 400, or the ``shared.errors`` error its failure means."""
        ...


#: The most pages one listing walks: a server that never stops paging is an error, not a loop.
MAX_PAGES = 100_000


@dataclasses.dataclass(frozen=True)
class ListingRetry:
    """How a transient listing failure is retried: ``delays`` seconds between attempts
    (a 429's ``Retry-After`` wins when longer), then the error is raised."""

    delays: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0)
    max_delay: float = 300.0

    def delay(self, attempt: int, error: SyncError) -> float | None:
        """Seconds to wait before retry ``attempt`` (1-based), ``None`` when spent."""
        if attempt > len(self.delays):
            return None
        wait = self.delays[attempt - 1]
        if isinstance(error, RateLimited) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return min(wait, self.max_delay)


@dataclasses.dataclass(frozen=True)
class ListedPage:
    """One page of a listing: its request, its records, and the request after it."""

    request: paging.PageRequest
    records: list[Any]
    following: paging.PageRequest | None


def list_request(call: CallSpec, base_url: str, context: TransformContext,
                 page: paging.PageRequest, since: datetime | None) -> RequestPlan:
    """The request of ``page`` (:func:`shared.connector.paging.list_request`). Raises
    ``MappingError`` (a template or body transform failed) and ``UnsafeRequest`` (a next
    URL on another host)."""
    if page.url:
        page = dataclasses.replace(page, url=same_server(base_url, page.url, call))
    return paging.list_request(call, base_url, context, page, since)


def same_server(base_url: str, url: str, call: CallSpec) -> str:
    """``url`` made absolute against the instance's server; ``UnsafeRequest`` when it
    points to another scheme, host or port (never followed)."""
    absolute = urljoin(base_url.rstrip("/") + "/", url)
    try:
        same = origin(absolute) == origin(base_url)
    except UnsafeRequest:
        same = False
    if not same:
        raise UnsafeRequest(
            f"the next page of {call.operation.key} is {describe_url(absolute)}, on another "
            f"host than the instance's server {describe_url(base_url)}: refused, not followed",
            details={"url": describe_url(absolute)})
    return absolute


Sleep = Callable[[float], Awaitable[None]]


class Lister:
    """Walks the pages of one object's list call for one instance."""

    def __init__(self, client: ThirdParty, call: CallSpec, context: TransformContext, *,
                 retry: ListingRetry | None = None, sleep: Sleep = asyncio.sleep) -> None:
        self.client = client
        self.call = call
        self.context = context
        self.retry = retry or ListingRetry()
        self.sleep = sleep
        self.requests = 0  # requests sent, retries included

    async def pages(self, since: datetime | None,
                    start: paging.PageRequest | None = None) -> AsyncIterator[ListedPage]:
        """Every page from ``start`` (default: the first page for ``since``) to the last.

        The caller handles a page before the next one is requested. Raises what the
        client raises once retries are spent, ``UnsafeRequest``, ``MappingError`` and
        ``RemoteProtocolError`` (no ``records`` array in the answer).
        """
        request: paging.PageRequest | None = start or paging.first_page(self.call, since)
        walked = 0
        while request is not None:
            walked += 1
            if walked > MAX_PAGES:
                raise RemoteProtocolError(
                    f"{self.call.operation.key} kept paging past {MAX_PAGES} pages")
            plan = list_request(self.call, self.client.base_url, self.context, request, since)
            response = await self._send(plan)
            records = paging.records_of(self.call, response.body)
            if records is None:
                raise RemoteProtocolError(
                    f"{response.request or plan.method}: the answer has no records array at "
                    f"{self.call.option('records', '') or '(the root)'!r} "
                    f"(page {request.number})")
            following = paging.next_page(self.call, request, response.body,
                                         response.headers.get("link"), len(records))
            yield ListedPage(request, records, following)
            request = following

    async def _send(self, plan: RequestPlan) -> Response:
        attempt = 0
        while True:
            self.requests += 1
            try:
                return await self.client.send(plan)
            except SyncError as exc:
                if not exc.retryable:
                    raise
                attempt += 1
                wait = self.retry.delay(attempt, exc)
                if wait is None:
                    raise
                await self.sleep(wait)


def cursor_time(value: Any, fmt: str = "iso8601") -> datetime | None:
    """A record's modification time (its ``cursorField``) as a UTC datetime; ``None``
    when absent or unreadable (such a record does not move the cursor)."""
    return paging.read_time(value, fmt)


def highest_time(call: CallSpec, records: list[Any],
                 high: datetime | None = None) -> datetime | None:
    """The highest ``incremental.cursorField`` time among ``records`` (and ``high``)."""
    incremental = call.option("incremental") or {}
    pointer = incremental.get("cursorField")
    if not pointer:
        return high
    fmt = paging.field_format(call)
    for record in records:
        try:
            found = cursor_time(resolve_pointer(record, pointer), fmt)
        except (KeyError, ValueError):
            continue
        if found is not None and (high is None or found > high):
            high = found
    return high



def changed_since(call: CallSpec, records: list[Any], since: datetime | None) -> list[Any]:
    """``records`` without those changed before ``since`` when the call filters on the
    client side (``incremental.in: client``; a record whose ``cursorField`` cannot be
    read is kept); ``records`` as they are otherwise."""
    if since is None or not paging.client_filtered(call):
        return records
    incremental = call.option("incremental") or {}
    pointer, fmt = incremental["cursorField"], paging.field_format(call)
    kept = []
    for record in records:
        try:
            found = cursor_time(resolve_pointer(record, pointer), fmt)
        except (KeyError, ValueError):
            found = None
        if found is None or found >= since:
            kept.append(record)
    return kept


__all__ = [
    "ListedPage",
    "Lister",
    "ListingRetry",
    "changed_since",
    "cursor_time",
    "highest_time",
    "list_request",
    "page_from_state",
    "page_state",
    "same_server",
    "since_of",
]
