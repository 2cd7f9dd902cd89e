"""Pull discovery's listing engine against a real local HTTP server
(``tests/integration/listing_server.py``) through the instance's real HTTP client.

What is proved: every pagination kind fetches each record exactly once, with the
number of requests its pages need; the incremental filter reaches the server; a next
link or next URL on another host is refused naming the URL and never requested; a
5xx is retried with backoff then the walk goes on, and once retries are spent the
error is raised; a listing resumes from a stored page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from services.dispatcher.listing import (
    Lister,
    ListingRetry,
    highest_time,
    page_from_state,
    page_state,
)
from shared.connector import ConnectorDocument
from shared.errors import RemoteUnavailable, UnsafeRequest
from shared.http import ThirdPartyClient
from shared.http.settings import InstanceEndpoint
from shared.transform import TransformContext
from tests.integration.listing_server import KINDS, ListingServer, load, stamp

COUNT = 35  # 4 pages of 10


@pytest.fixture
def server() -> Iterator[ListingServer]:
    with ListingServer(COUNT, size=10) as running:
        yield running


@pytest.fixture
def document(tmp_path: Path) -> ConnectorDocument:
    return load(tmp_path)


@pytest.fixture
async def client(document: ConnectorDocument,
                 server: ListingServer) -> AsyncIterator[ThirdPartyClient]:
    async with ThirdPartyClient(document, InstanceEndpoint("inst-1",
                                                           server_url=server.url)) as made:
        yield made


async def _sleep(_seconds: float) -> None:
    return None


def lister(document: ConnectorDocument, client: ThirdPartyClient, kind: str,
           **kw: Any) -> Lister:
    call = document.object(f"Items_{kind}").pull_list
    assert call is not None
    return Lister(client, call, TransformContext(lookups=document.lookups, links=None,
                                                 variables={}), sleep=_sleep, **kw)


async def walk(walker: Lister, since: datetime | None = None, **kw: Any) -> list[str]:
    return [r["id"] for page in [p async for p in walker.pages(since, **kw)]
            for r in page.records]


# an empty last page ends page/offset/cursor walks: ``paging`` stops only on an empty page
# for page and offset; the cursor kinds stop when the server gives no next cursor.
EXPECTED_REQUESTS = {"page": 5, "offset": 5, "cursor": 4, "search": 4, "link": 4, "next": 4,
                     "all": 1}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_pagination_kind_lists_each_record_once(document, client, server,
                                                            kind) -> None:
    walker = lister(document, client, kind)
    ids = await walk(walker)
    assert sorted(ids) == [r["id"] for r in server.records]
    assert len(ids) == COUNT
    route = "/items/search" if kind == "search" else f"/items/{kind}"
    assert len(server.paths(route)) == EXPECTED_REQUESTS[kind] == walker.requests


@pytest.mark.parametrize("kind", list(KINDS))
async def test_the_incremental_filter_reaches_the_server(document, client, server,
                                                         kind) -> None:
    since = datetime.fromisoformat(stamp(30).replace("Z", "+00:00"))
    ids = await walk(lister(document, client, kind), since)
    assert ids == [f"c{i:05d}" for i in range(30, COUNT)]
    method, _path, query, body = server.requests[0]
    sent = body["since"] if method == "POST" else query["updated_gte"]
    assert sent == stamp(30)


@pytest.mark.parametrize("kind", ["link", "next"])
async def test_a_next_page_on_another_host_is_refused_and_never_requested(
        document, client, server, kind) -> None:
    server.next_host = server.other_url  # same server, another origin (localhost)
    walker = lister(document, client, kind)
    seen = []
    with pytest.raises(UnsafeRequest) as refused:
        async for page in walker.pages(None):
            seen += page.records
    assert f"{server.other_url}/items/{kind}" in str(refused.value)
    assert "refused, not followed" in str(refused.value)
    assert len(seen) == 10  # the first page was listed, the foreign one never requested
    assert server.paths() == [f"/items/{kind}"]


async def test_a_5xx_is_retried_with_backoff_then_the_walk_goes_on(document, client,
                                                                   server) -> None:
    server.fail[("/items/page", 2)] = [503, 502]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    call = document.object("Items_page").pull_list
    assert call is not None
    walker = Lister(client, call, TransformContext(lookups={}, links=None, variables={}),
                    retry=ListingRetry(delays=(0.5, 2.0, 8.0)), sleep=sleep)
    ids = [r["id"] async for page in walker.pages(None) for r in page.records]
    assert len(ids) == len(set(ids)) == COUNT
    assert waits == [0.5, 2.0]
    assert walker.requests == 5 + 2


async def test_once_retries_are_spent_the_error_says_where(document, client, server) -> None:
    server.fail[("/items/page", 3)] = [503] * 10
    walker = lister(document, client, "page", retry=ListingRetry(delays=(0.1, 0.1)))
    pages = []
    with pytest.raises(RemoteUnavailable) as failed:
        async for page in walker.pages(None):
            pages.append(page.request.number)
    assert pages == [1, 2]
    assert "/items/page" in str(failed.value)
    assert len(server.paths("/items/page")) == 2 + 3


@pytest.mark.parametrize("kind", ["page", "offset", "cursor", "search", "link", "next"])
async def test_a_listing_resumes_from_a_stored_page(document, client, server, kind) -> None:
    walker = lister(document, client, kind)
    pages = walker.pages(None)
    first = await anext(pages)
    await pages.aclose()
    assert first.following is not None
    stored = page_from_state(page_state(first.following))  # as the cursor row keeps it
    ids = await walk(lister(document, client, kind), None, start=stored)
    assert ids == [f"c{i:05d}" for i in range(10, COUNT)]


def test_the_highest_modification_time_of_a_page(document) -> None:
    call = document.object("Items_page").pull_list
    records = [{"updatedAt": stamp(3)}, {"updatedAt": stamp(7)}, {"updatedAt": "not a time"},
               {}, {"updatedAt": stamp(5)}]
    high = highest_time(call, records)
    assert high is not None and high.isoformat().replace("+00:00", "Z") == stamp(7)
    assert highest_time(call, [{"updatedAt": stamp(1)}], high) == high
