"""Pagination and incremental filters of list calls (``shared.connector.paging``).

Pure code: each test builds a list ``CallSpec`` and checks the requests the pager
asks for; the walk tests drive it against small in-memory "servers" and check
that every record is fetched exactly once and that the walk stops.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from shared.connector import CallSpec, load_connector
from shared.connector.openapi import index_operations
from shared.connector.paging import (
    DEFAULT_PAGE_SIZE,
    PageRequest,
    field_format,
    first_page,
    next_page,
    page_size,
    read_time,
    records_of,
    since_value,
)
from tests.fixtures.vendor_specs import VendorSpecs

ROOT = Path(__file__).resolve().parents[2]

_OPERATION = index_operations(
    {
        "openapi": "3.0.3",
        "info": {"title": "fake", "version": "1"},
        "paths": {
            "/things": {
                "get": {"operationId": "listThings", "responses": {"200": {"description": "ok"}}}
            }
        },
    }
)["listThings"]

SINCE = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


def list_call(**options: Any) -> CallSpec:
    return CallSpec(
        kind="list",
        pointer="/x-synchronization/objects/Thing/pull/list",
        operation=_OPERATION,
        params={},
        headers={},
        body=None,
        options=options,
    )


def page(**kw: Any) -> PageRequest:
    return PageRequest(query=kw.pop("query", {}), body_fields=kw.pop("body_fields", {}), **kw)


# -- page size -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, DEFAULT_PAGE_SIZE),
        ({"pageSize": 25}, 25),
        ({"pagination": {"type": "page", "size": 30}}, 30),
        ({"pagination": {"type": "offset", "limit": 40}}, 40),
        ({"pageSize": 10, "pagination": {"size": 30}}, 10),
        ({"pageSize": "15"}, 15),
    ],
    ids=["default", "pageSize", "pagination.size", "pagination.limit", "pageSize wins", "text"],
)
def test_page_size(options, expected):
    assert page_size(list_call(**options)) == expected


# -- since values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "since", "expected"),
    [
        (None, SINCE, "2024-05-01T10:00:00Z"),
        ("iso8601", SINCE, "2024-05-01T10:00:00Z"),
        (
            "iso8601",
            datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-01T10:00:00Z",
        ),
        ("iso8601", SINCE.replace(microsecond=123456), "2024-05-01T10:00:00.123456Z"),
        ("epoch-ms", SINCE, 1714557600000),
        ("epoch-ms", SINCE.replace(microsecond=123456), 1714557600123),
        ("epoch-ms", datetime(2004, 4, 8, 11, 6, 2, 985000, tzinfo=UTC), 1081422362985),
        ("epoch-s", SINCE, 1714557600),
        ("epoch-s", SINCE.replace(microsecond=999999), 1714557600),
        ("date", SINCE, "2024-05-01"),
        ("date", datetime(2024, 5, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5))), "2024-05-02"),
        ("date", datetime(2024, 5, 2, 1, 0, tzinfo=timezone(timedelta(hours=5))), "2024-05-01"),
        ("ms-date", SINCE.replace(microsecond=123456), "/Date(1714557600123)/"),
    ],
    ids=[
        "default iso",
        "iso Z",
        "iso from offset",
        "iso micro",
        "epoch-ms",
        "epoch-ms truncates",
        "epoch-ms exact",
        "epoch-s",
        "epoch-s truncates",
        "date",
        "date of a west offset is the UTC date",
        "date of an east offset is the UTC date",
        "Microsoft JSON date",
    ],
)
def test_since_value_formats(fmt, since, expected):
    incremental = {"param": "since"} | ({"format": fmt} if fmt else {})

    assert since_value(list_call(incremental=incremental), since) == expected


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("iso8601", "2024-05-01T10:00:00Z"),
        ("epoch-ms", 1714557600000),
        ("epoch-s", 1714557600),
        ("date", "2024-05-01"),
    ],
)
def test_naive_since_is_utc(fmt, expected):
    call = list_call(incremental={"param": "since", "format": fmt})

    assert since_value(call, datetime(2024, 5, 1, 10, 0, 0)) == expected


@pytest.mark.parametrize(
    "millis",
    [1081422362985, 272845322252, 4345414743464, -546704982532, 0, 1714557600001],
)
def test_epoch_ms_since_is_exact(millis):
    """Float ``timestamp() * 1000`` lost a millisecond on some of these."""
    since = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)

    assert since_value(list_call(incremental={"format": "epoch-ms"}), since) == millis


def test_no_since_no_value():
    assert since_value(list_call(incremental={"param": "since"}), None) is None


# -- first page ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incremental", "query", "body"),
    [
        ({"param": "updatedAt_gte"}, {"updatedAt_gte": "2024-05-01T10:00:00Z"}, {}),
        ({"param": "updatedAt_gte", "in": "query"}, {"updatedAt_gte": "2024-05-01T10:00:00Z"}, {}),
        ({"param": "since", "in": "body", "format": "epoch-ms"}, {}, {"since": 1714557600000}),
        ({"in": "body", "format": "epoch-ms", "cursorField": "/updatedAt"}, {}, {}),
        ({}, {}, {}),
    ],
    ids=[
        "query",
        "query explicit",
        "body",
        "no param (body transform uses {since})",
        "not incremental",
    ],
)
def test_first_page_places_the_incremental_filter(incremental, query, body):
    first = first_page(list_call(incremental=incremental), SINCE)

    assert (first.query, first.body_fields) == (query, body)
    assert (first.url, first.cursor, first.number) == (None, None, 1)


def test_first_page_without_since_has_no_filter():
    first = first_page(list_call(incremental={"param": "updatedAt_gte"}), None)

    assert (first.query, first.body_fields) == ({}, {})


@pytest.mark.parametrize(
    ("options", "query"),
    [
        (
            {"pagination": {"type": "page", "param": "_page", "sizeParam": "_limit", "size": 50}},
            {"_page": 1, "_limit": 50},
        ),
        ({"pagination": {"type": "page", "param": "page"}}, {"page": 1}),
        ({"pagination": {"type": "page", "param": "page", "start": 0}}, {"page": 0}),
        (
            {"pagination": {"type": "page", "param": "p", "sizeParam": "n"}},
            {"p": 1, "n": DEFAULT_PAGE_SIZE},
        ),
        (
            {
                "pagination": {"type": "offset", "param": "offset", "limitParam": "limit"},
                "pageSize": 20,
            },
            {"offset": 0, "limit": 20},
        ),
        ({"pagination": {"type": "offset", "param": "skip"}}, {"skip": 0}),
        ({"pagination": {"type": "cursor", "param": "after", "next": "/next"}}, {}),
        ({"pagination": {"type": "link"}}, {}),
        ({"pagination": {"type": "next-url", "next": "/next"}}, {}),
        ({"pagination": {"type": "none"}}, {}),
        ({}, {}),
    ],
    ids=[
        "page+size",
        "page",
        "page from 0",
        "page default size",
        "offset+limit",
        "offset",
        "cursor",
        "link",
        "next-url",
        "none",
        "no pagination",
    ],
)
def test_first_page_start_values(options, query):
    first = first_page(list_call(**options), None)

    assert first == page(query=query)


def test_first_page_combines_paging_and_filter():
    call = list_call(
        pagination={"type": "page", "param": "_page", "sizeParam": "_limit"},
        incremental={"param": "updatedAt_gte"},
    )

    assert first_page(call, SINCE).query == {
        "_page": 1,
        "_limit": DEFAULT_PAGE_SIZE,
        "updatedAt_gte": "2024-05-01T10:00:00Z",
    }


# -- next page: every kind -------------------------------------------------------------

ALL_KINDS = [
    {"type": "link"},
    {"type": "next-url", "next": "/next"},
    {"type": "cursor", "param": "after", "next": "/next"},
    {"type": "page", "param": "page"},
    {"type": "offset", "param": "offset"},
    {"type": "none"},
]


@pytest.mark.parametrize("pagination", ALL_KINDS, ids=lambda p: p["type"])
def test_an_empty_page_is_the_last(pagination):
    call = list_call(pagination=pagination)

    assert (
        next_page(call, first_page(call, None), {"next": "x"}, '<https://a/2>; rel="next"', 0)
        is None
    )


@pytest.mark.parametrize("options", [{"pagination": {"type": "none"}}, {}], ids=["none", "unset"])
def test_no_pagination_means_one_page(options):
    call = list_call(**options)

    assert (
        next_page(
            call, first_page(call, None), {"next": "https://a/2"}, '<https://a/2>; rel="next"', 100
        )
        is None
    )


# -- link (RFC 8288) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('<https://a.example/x?page=2>; rel="next"', "https://a.example/x?page=2"),
        ("<https://a.example/x?page=2>; rel=next", "https://a.example/x?page=2"),
        (
            '<https://a.example/1>; rel="prev", <https://a.example/3>; rel="next"',
            "https://a.example/3",
        ),
        (
            '<https://a.example/3>; rel="next", <https://a.example/9>; rel="last"',
            "https://a.example/3",
        ),
        ('<https://a.example/3>; rel="next last"', "https://a.example/3"),
        ('<https://a.example/3>; rel="last next"', "https://a.example/3"),
        ('<https://a.example/3>; REL="Next"', "https://a.example/3"),
        ('<https://a.example/3>;rel="next"', "https://a.example/3"),
        ('<https://a.example/3> ; rel = "next"', "https://a.example/3"),
        ('<https://a.example/x?ids=1,2>; rel="next"', "https://a.example/x?ids=1,2"),
        (
            '<https://a.example/2>; rel="prefetch"; title="a, b", '
            '<https://a.example/3>; rel="next"',
            "https://a.example/3",
        ),
        ('<https://a.example/3>; title="page 3"; rel="next"', "https://a.example/3"),
        ('<https://a.example/9>; rel="last", <https://a.example/1>; rel="first"', None),
        ('<https://a.example/3>; title="next page"; rel="last"', None),
        ('<https://a.example/3>; rel="next-archive"', None),
        ('<https://a.example/3>; rel="nextpage"', None),
        ("", None),
        (None, None),
    ],
    ids=[
        "quoted",
        "token",
        "prev then next",
        "next then last",
        "multi rel next first",
        "multi rel next last",
        "case",
        "no space",
        "spaces around =",
        "comma in URL",
        "comma in quoted title",
        "rel after title",
        "no next",
        "next only in title",
        "next-archive",
        "nextpage",
        "empty header",
        "no header",
    ],
)
def test_link_header_next(header, expected):
    call = list_call(pagination={"type": "link"})
    current = page(query={"updatedAt_gte": "2024-05-01T10:00:00Z"})

    following = next_page(call, current, None, header, 10)

    if expected is None:
        assert following is None
    else:
        assert following is not None
        assert (following.url, following.number) == (expected, 2)


# -- next-url --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"links": {"next": "https://a.example/p2"}}, "https://a.example/p2"),
        ({"links": {"next": None}}, None),
        ({"links": {"next": ""}}, None),
        ({"links": {}}, None),
        ({}, None),
        (None, None),
        ([], None),
    ],
    ids=["url", "null", "empty", "absent", "no links", "no body", "array body"],
)
def test_next_url_comes_from_the_body(body, expected):
    call = list_call(pagination={"type": "next-url", "next": "/links/next"})

    following = next_page(call, page(), body, None, 10)

    assert (following.url if following else None) == expected
    if following:
        assert following.number == 2


# -- cursor ----------------------------------------------------------------------------

CURSOR_QUERY = {"type": "cursor", "param": "after", "next": "/paging/next/after"}
CURSOR_BODY = {**CURSOR_QUERY, "in": "body"}


def cursor_body(cursor: Any) -> dict[str, Any]:
    return {"results": [{}], "paging": {"next": {"after": cursor}}}


def test_cursor_in_query_keeps_the_filter():
    call = list_call(pagination=CURSOR_QUERY, incremental={"param": "since", "format": "epoch-ms"})
    first = first_page(call, SINCE)

    second = next_page(call, first, cursor_body("abc"), None, 10)

    assert second == page(query={"since": 1714557600000, "after": "abc"}, cursor="abc", number=2)
    third = next_page(call, second, cursor_body("def"), None, 10)
    assert third == page(query={"since": 1714557600000, "after": "def"}, cursor="def", number=3)


def test_cursor_in_body_keeps_the_filter():
    call = list_call(
        pagination=CURSOR_BODY, incremental={"param": "since", "in": "body", "format": "epoch-ms"}
    )
    first = first_page(call, SINCE)

    second = next_page(call, first, cursor_body("abc"), None, 10)

    assert second == page(
        body_fields={"since": 1714557600000, "after": "abc"}, cursor="abc", number=2
    )
    assert first.body_fields == {"since": 1714557600000}  # the previous request is unchanged


@pytest.mark.parametrize(
    "body",
    [cursor_body(None), cursor_body(""), {"paging": {}}, {"results": []}, None],
    ids=["null", "empty", "no next", "no paging", "no body"],
)
def test_cursor_ends_without_a_next_cursor(body):
    assert next_page(list_call(pagination=CURSOR_QUERY), page(), body, None, 10) is None


def test_cursor_that_repeats_ends_the_walk():
    call = list_call(pagination=CURSOR_QUERY)
    second = next_page(call, page(), cursor_body("abc"), None, 10)

    assert next_page(call, second, cursor_body("abc"), None, 10) is None


@pytest.mark.parametrize("cursor", [0, 200], ids=["zero", "number"])
def test_numeric_cursors_are_cursors(cursor):
    following = next_page(list_call(pagination=CURSOR_QUERY), page(), cursor_body(cursor), None, 10)

    assert following is not None
    assert (following.query, following.cursor) == ({"after": cursor}, cursor)


# -- page and offset -------------------------------------------------------------------

PAGED = {"type": "page", "param": "_page", "sizeParam": "_limit", "size": 3}


def test_page_full_page_asks_for_the_next_number():
    call = list_call(pagination=PAGED)

    second = next_page(call, first_page(call, None), [{}] * 3, None, 3)

    assert second == page(query={"_page": 2, "_limit": 3}, number=2)


def test_page_short_page_is_not_the_last_only_an_empty_one_is():
    """A server may cap the page size below what was asked: a short page proves nothing."""
    call = list_call(pagination=PAGED)

    second = next_page(call, first_page(call, None), [{}] * 2, None, 2)

    assert second == page(query={"_page": 2, "_limit": 3}, number=2)
    assert next_page(call, second, [], None, 0) is None


def test_page_without_size_param_goes_on_until_an_empty_page():
    """The server's page size is unknown: a short page proves nothing."""
    call = list_call(pagination={"type": "page", "param": "page", "start": 0})

    second = next_page(call, first_page(call, None), [{}], None, 1)

    assert second == page(query={"page": 1}, number=2)


def test_offset_advances_by_the_records_received():
    call = list_call(pagination={"type": "offset", "param": "offset"})
    first = first_page(call, None)

    second = next_page(call, first, None, None, 7)
    third = next_page(call, second, None, None, 3)

    assert (second.query, second.number) == ({"offset": 7}, 2)
    assert (third.query, third.number) == ({"offset": 10}, 3)


def test_offset_with_limit_param_ends_on_an_empty_page():
    call = list_call(
        pagination={"type": "offset", "param": "offset", "limitParam": "limit", "limit": 3}
    )
    second = next_page(call, first_page(call, None), None, None, 3)
    third = next_page(call, second, None, None, 2)

    assert second == page(query={"offset": 3, "limit": 3}, number=2)
    assert third == page(query={"offset": 5, "limit": 3}, number=3)
    assert next_page(call, third, None, None, 0) is None


def test_page_keeps_the_incremental_filter():
    call = list_call(pagination=PAGED, incremental={"param": "updatedAt_gte"})

    second = next_page(call, first_page(call, SINCE), None, None, 3)

    assert second.query == {"_page": 2, "_limit": 3, "updatedAt_gte": "2024-05-01T10:00:00Z"}


# -- records ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pointer", "body", "expected"),
    [
        ("", [{"id": 1}], [{"id": 1}]),
        (None, [{"id": 1}], [{"id": 1}]),
        ("/results", {"results": [{"id": 1}], "paging": {}}, [{"id": 1}]),
        ("/data/items", {"data": {"items": []}}, []),
        ("/data/0", {"data": [[{"id": 1}]]}, [{"id": 1}]),
        ("", {"results": []}, None),
        ("/results", {"results": {"id": 1}}, None),
        ("/results", {}, None),
        ("/results", None, None),
        ("results", {"results": [1]}, None),
    ],
    ids=[
        "root array",
        "no pointer",
        "nested",
        "deeper, empty",
        "array index",
        "root object",
        "not an array",
        "absent",
        "no body",
        "not a pointer",
    ],
)
def test_records_of(pointer, body, expected):
    options = {} if pointer is None else {"records": pointer}

    assert records_of(list_call(**options), body) == expected


# -- whole walks against in-memory servers ---------------------------------------------

RECORDS = [{"id": n} for n in range(1, 8)]  # 7 records
Server = Callable[[PageRequest], tuple[Any, str | None]]


def walk(call: CallSpec, server: Server, limit: int = 20) -> list[Any]:
    """Every record the pager fetches, following ``next_page`` until it says stop."""
    request: PageRequest | None = first_page(call, None)
    fetched: list[Any] = []
    for _ in range(limit):
        if request is None:
            return fetched
        body, link = server(request)
        records = records_of(call, body) or []
        fetched.extend(records)
        request = next_page(call, request, body, link, len(records))
    raise AssertionError(f"the walk did not stop after {limit} pages")


def test_walk_page_numbers():
    def server(request: PageRequest) -> tuple[Any, None]:
        number, size = request.query["_page"], request.query["_limit"]
        return RECORDS[(number - 1) * size : number * size], None

    assert walk(list_call(records="", pagination=PAGED), server) == RECORDS


def test_walk_page_numbers_of_an_exact_multiple_stops_on_the_empty_page():
    def server(request: PageRequest) -> tuple[Any, None]:
        number, size = request.query["_page"], request.query["_limit"]
        return RECORDS[:6][(number - 1) * size : number * size], None

    assert walk(list_call(records="", pagination=PAGED), server) == RECORDS[:6]


def test_walk_offset_when_the_server_caps_pages_at_two():
    def server(request: PageRequest) -> tuple[Any, None]:
        start = request.query["offset"]
        return {"items": RECORDS[start : start + 2]}, None

    call = list_call(records="/items", pagination={"type": "offset", "param": "offset"})

    assert walk(call, server) == RECORDS


def test_walk_cursor_in_body():
    def server(request: PageRequest) -> tuple[Any, None]:
        start = int(request.body_fields.get("after", 0))
        chunk = RECORDS[start : start + 3]
        more = start + 3 < len(RECORDS)
        return {
            "results": chunk,
            **({"paging": {"next": {"after": str(start + 3)}}} if more else {}),
        }, None

    call = list_call(records="/results", pagination=CURSOR_BODY)

    assert walk(call, server) == RECORDS


def test_walk_link_headers():
    def server(request: PageRequest) -> tuple[Any, str | None]:
        start = int(request.url.rsplit("=", 1)[1]) if request.url else 0
        links = ['<https://a.example/things?start=0>; rel="first"']
        if start + 3 < len(RECORDS):
            links.append(f'<https://a.example/things?start={start + 3}>; rel="next"')
        return RECORDS[start : start + 3], ", ".join(links)

    assert walk(list_call(records="", pagination={"type": "link"}), server) == RECORDS


def test_walk_next_url():
    def server(request: PageRequest) -> tuple[Any, None]:
        start = int(request.url.rsplit("/", 1)[1]) if request.url else 0
        nxt = f"https://a.example/p/{start + 3}" if start + 3 < len(RECORDS) else None
        return {"data": RECORDS[start : start + 3], "links": {"next": nxt}}, None

    call = list_call(records="/data", pagination={"type": "next-url", "next": "/links/next"})

    assert walk(call, server) == RECORDS


# -- the shipped connectors ------------------------------------------------------------


@pytest.fixture(scope="module")
def acme():
    return load_connector([ROOT / "connectors" / "acme-crm.json"])


@pytest.fixture(scope="module")
def hubspot(vendor_specs: VendorSpecs):
    overlay = ROOT / "connectors" / "hubspot-crm.overlay.json"
    return load_connector(vendor_specs.files, overlay=overlay)


def test_acme_accounts_page_with_size_and_iso_filter(acme):
    call = acme.objects["Account"].pull_list

    first = first_page(call, SINCE)

    assert first.query == {"_page": 1, "_limit": 100, "updatedAt_gte": "2024-05-01T10:00:00Z"}
    assert next_page(call, first, [{}] * 100, None, 100).query["_page"] == 2
    assert next_page(call, first, [], None, 0) is None
    assert records_of(call, [{"id": "c1"}]) == [{"id": "c1"}]


def test_acme_contacts_follow_link_headers(acme):
    call = acme.objects["Contact"].pull_list
    first = first_page(call, SINCE)

    following = next_page(call, first, [{}], '<https://acme.example/people?_page=2>; rel="next"', 1)

    assert first.query == {"updatedAt_gte": "2024-05-01T10:00:00Z"}
    assert following is not None and following.url == "https://acme.example/people?_page=2"


def test_hubspot_companies_cursor_in_body_and_filter_left_to_the_body_transform(hubspot):
    call = hubspot.objects["Company"].pull_list
    first = first_page(call, SINCE)
    body = {"results": [{"id": "1"}], "paging": {"next": {"after": "1"}}}

    second = next_page(call, first, body, None, 1)

    assert (first.query, first.body_fields) == ({}, {})
    assert since_value(call, SINCE) == 1714557600000
    assert records_of(call, body) == [{"id": "1"}]
    assert second is not None
    assert (second.query, second.body_fields, second.cursor) == ({}, {"after": "1"}, "1")


@pytest.mark.parametrize(("value", "fmt", "expected"), [
    ("/Date(1718000000000+0000)/", "ms-date", datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
    ("/Date(1718000000000-0500)/", "ms-date", datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
    ("/Date(1718000000123)/", "iso8601", datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=UTC)),
    ("/Date(-86400000)/", "ms-date", datetime(1969, 12, 31, tzinfo=UTC)),
    (1718000000000, "ms-date", datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
    ("/Date(soon)/", "ms-date", None),
    ("2024-06-10T06:13:20Z", "ms-date", datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)),
])
def test_read_time_reads_microsoft_json_dates(value, fmt, expected):
    assert read_time(value, fmt) == expected


def test_the_field_format_defaults_to_the_format_of_the_value_sent():
    assert field_format(list_call(incremental={"format": "epoch-s"})) == "epoch-s"
    assert field_format(list_call(incremental={"format": "iso8601",
                                               "fieldFormat": "ms-date"})) == "ms-date"
    assert field_format(list_call(incremental={})) == "iso8601"
