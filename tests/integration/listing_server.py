"""A real HTTP third party that lists records with every pagination kind (stdlib
``http.server`` in a thread), for pull discovery's tests, and the connector document
that describes it (:func:`listing_connector`).

Records are ``{"id", "name", "updatedAt"}``, ``updatedAt`` ten seconds apart, listed
oldest first. ``updated_gte`` (query) or ``since`` (search body) keeps records changed
at or after a time. Routes, ``size`` records a page:

=========================  ===============================================================
``GET /items/page``        ``?_page=&_limit=`` (1-based); the records as a bare array
``GET /items/offset``      ``?offset=&limit=``; a bare array
``GET /items/cursor``      ``?after=&limit=``; ``{"results", "paging": {"next": {"after"}}}``
``POST /items/search``     the cursor in the body (``after``, ``limit``, ``since``)
``GET /items/link``        ``?page=``; an RFC 8288 ``Link: <…>; rel="next"`` header
``GET /items/next``        ``?page=``; ``{"data", "next": URL}``
``GET /items/all``         everything, no paging
``GET /items/deleted``     the ids of deleted records, ``{"deleted": [{"id", "deletedAt"}]}``;
                           ``?_page=&_limit=&updated_gte=`` (``deletedAt`` at or after)
=========================  ===============================================================

:meth:`ListingServer.archive` marks a record ``"archived": true`` (a tombstone, changed
now); :meth:`ListingServer.remove` takes a record out of the listings and lists its id
as deleted.

``next_host`` sets the host of next links / URLs (another origin for the refusal tests);
``fail[(path, page)] = [status, …]`` answers those statuses first on that page.
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from shared.connector import ConnectorDocument, load_connector
from tests.fixtures.threaded_http import ThreadedHttpServer

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
STEP = timedelta(seconds=10)


def stamp(index: int) -> str:
    return (EPOCH + index * STEP).isoformat().replace("+00:00", "Z")


class ListingServer(ThreadedHttpServer):
    def __init__(self, count: int = 0, size: int = 10) -> None:
        self.size = size
        self.records: list[dict[str, Any]] = []
        self.deleted: list[dict[str, Any]] = []
        self.add(count)
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.fail: dict[tuple[str, int], list[int]] = {}
        self.next_host: str | None = None
        self.lock = threading.Lock()
        super().__init__(_handler(self))

    def add(self, count: int) -> None:
        start = len(self.records)
        self.records += [{"id": f"c{i:05d}", "name": f"Company {i}", "updatedAt": stamp(i)}
                         for i in range(start, start + count)]

    def _next_stamp(self) -> str:
        times = [r["updatedAt"] for r in self.records] + [d["deletedAt"] for d in self.deleted]
        latest = max((datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times),
                     default=EPOCH - STEP)
        return (latest + STEP).isoformat().replace("+00:00", "Z")

    def touch(self, record_id: str) -> None:
        """The record changes: a new modification time, after all others, and — as in a
        listing ordered by that time — the last place (the ones after it move up one)."""
        with self.lock:
            record = next(r for r in self.records if r["id"] == record_id)
            record["updatedAt"] = self._next_stamp()
            self.records = [r for r in self.records if r is not record] + [record]

    def archive(self, record_id: str) -> None:
        """The record becomes a tombstone (``archived: true``), changed after all others."""
        with self.lock:
            record = next(r for r in self.records if r["id"] == record_id)
            record.update(archived=True, updatedAt=self._next_stamp())

    def remove(self, record_id: str) -> None:
        """The record leaves the listings; ``/items/deleted`` lists its id."""
        with self.lock:
            stamp_now = self._next_stamp()
            self.records = [r for r in self.records if r["id"] != record_id]
            self.deleted.append({"id": record_id, "deletedAt": stamp_now})

    @property
    def other_url(self) -> str:
        return f"http://localhost:{self.port}"

    def paths(self, path: str | None = None) -> list[str]:
        with self.lock:
            return [p for _, p, _, _ in self.requests if path is None or p == path]


    # -- the listing -----------------------------------------------------------------

    def changed(self, since: str | None, rows: list[dict[str, Any]] | None = None,
                field: str = "updatedAt") -> list[dict[str, Any]]:
        rows = list(self.records if rows is None else rows)
        if not since:
            return rows
        floor = datetime.fromisoformat(since.replace("Z", "+00:00"))
        return [r for r in rows
                if datetime.fromisoformat(r[field].replace("Z", "+00:00")) >= floor]

    def answer(self, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            self.requests.append((method, path, query, body))
        base = self.next_host or self.url
        if path == "/items/search":
            params = body if isinstance(body, dict) else {}
            since, after, limit = params.get("since"), params.get("after"), params.get("limit")
        else:
            since, after, limit = query.get("updated_gte"), query.get("after"), None
        with self.lock:
            rows = (self.changed(since, self.deleted, "deletedAt") if path == "/items/deleted"
                    else self.changed(since))
        size = int(query.get("_limit") or query.get("limit") or limit or self.size)
        page = {"/items/page": int(query.get("_page", 1)),
                "/items/deleted": int(query.get("_page", 1)),
                "/items/offset": int(query.get("offset", 0)) // size + 1,
                "/items/link": int(query.get("page", 1)),
                "/items/next": int(query.get("page", 1))}.get(path)
        start = int(after or 0) if page is None else (page - 1) * size
        if path == "/items/offset":
            start = int(query.get("offset", 0))
        number = page if page is not None else start // size + 1
        with self.lock:
            statuses = self.fail.get((path, number))
            status = statuses.pop(0) if statuses else None
        if status is not None:
            return status, {"message": "not now"}, {}
        if path == "/items/all":
            return 200, rows, {}
        chunk = rows[start:start + size]
        more = start + size < len(rows)
        if path in ("/items/page", "/items/offset"):
            return 200, chunk, {}
        if path == "/items/deleted":
            return 200, {"deleted": chunk}, {}
        if path in ("/items/cursor", "/items/search"):
            paging = {"next": {"after": str(start + size)}} if more else {}
            return 200, {"results": chunk, "paging": paging}, {}
        following = f"{base}{path}?page={number + 1}" + (
            f"&updated_gte={since}" if since else "")
        if path == "/items/link":
            headers = {"Link": f'<{following}>; rel="next"'} if more else {}
            return 200, chunk, headers
        if path == "/items/next":
            return 200, {"data": chunk, "next": following if more else None}, {}
        return 404, {"message": "no such route"}, {}


def _handler(server: ListingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body leave in one write: two small writes on a kept-alive
        # connection meet Nagle and delayed ACKs (40 ms a request)
        wbufsize = 64 * 1024

        def log_message(self, *args: Any) -> None:
            pass

        def handle(self) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                super().handle()

        def do_GET(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            status, body, headers = server.answer(
                self.command, parts.path, dict(parse_qsl(parts.query)),
                json.loads(raw) if raw else None)
            content = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(content)

        do_POST = do_GET

    return Handler


# -- the connector -------------------------------------------------------------------

_ARRAY = {"description": "ok", "content": {"application/json": {"schema": {}}}}
_SEARCH = {"type": "object", "properties": {
    "since": {"type": "string"}, "limit": {"type": "integer"}, "after": {"type": "string"}}}
INCREMENTAL = {"param": "updated_gte", "cursorField": "/updatedAt"}

#: object name -> (route, list call options besides the operation)
KINDS: dict[str, dict[str, Any]] = {
    "page": {"records": "", "incremental": INCREMENTAL, "pagination": {
        "type": "page", "param": "_page", "sizeParam": "_limit", "size": 10}},
    "offset": {"records": "", "incremental": INCREMENTAL, "pagination": {
        "type": "offset", "param": "offset", "limitParam": "limit", "limit": 10}},
    "cursor": {"records": "/results", "incremental": INCREMENTAL, "params": {"limit": "10"},
               "pagination": {"type": "cursor", "param": "after", "next": "/paging/next/after"}},
    "search": {"records": "/results", "incremental": {"cursorField": "/updatedAt"},
               "body": "SearchBody", "pageSize": 10,
               "pagination": {"type": "cursor", "in": "body", "param": "after",
                              "next": "/paging/next/after"}},
    "link": {"records": "", "incremental": INCREMENTAL, "pagination": {"type": "link"}},
    "next": {"records": "/data", "incremental": INCREMENTAL,
             "pagination": {"type": "next-url", "next": "/next"}},
    "all": {"records": "", "incremental": INCREMENTAL, "pagination": {"type": "none"}},
}


DELETED_LIST = {"operation": "listDeleted", "records": "/deleted", "externalId": "/id",
                "incremental": {"param": "updated_gte", "cursorField": "/deletedAt"},
                "pagination": {"type": "page", "param": "_page", "sizeParam": "_limit",
                               "size": 10}}


def listing_connector(directory: Path, *, read: bool = False, deletes: bool = False,
                      kinds: tuple[str, ...] = tuple(KINDS), sorted_page: bool = False) -> Path:
    """A connector file with one object per pagination kind (``Items_<kind>``, entity
    ``account``); with ``read``, each object also declares ``pull.read``; with
    ``deletes``, each object says ``archived = true`` is a tombstone (``pull.deleted``)
    and ``Items_page`` lists deleted ids (``pull.deletedList``, ``/items/deleted``);
    with ``sorted_page``, ``Items_page`` declares its listing ordered by time
    (``incremental.sorted``)."""
    paths: dict[str, Any] = {}
    for kind in KINDS:
        params = [{"name": n, "in": "query", "schema": {"type": "string"}}
                  for n in ("updated_gte", "_page", "_limit", "offset", "limit", "after", "page")]
        if kind == "search":
            paths["/items/search"] = {"post": {
                "operationId": "searchItems", "responses": {"200": _ARRAY},
                "requestBody": {"content": {"application/json": {"schema": _SEARCH}}}}}
        else:
            paths[f"/items/{kind}"] = {"get": {"operationId": f"list_{kind}",
                                               "parameters": params,
                                               "responses": {"200": _ARRAY}}}
    paths["/items/deleted"] = {"get": {"operationId": "listDeleted", "parameters": [
        {"name": n, "in": "query", "schema": {"type": "string"}}
        for n in ("updated_gte", "_page", "_limit")], "responses": {"200": _ARRAY}}}
    paths["/items/one/{id}"] = {"get": {"operationId": "getItem", "parameters": [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _ARRAY}}}
    objects = {}
    for kind, options in KINDS.items():
        if kind not in kinds:
            continue
        operation = "searchItems" if kind == "search" else f"list_{kind}"
        pull: dict[str, Any] = {"list": {"operation": operation, **options},
                                "body": "ItemToAccount", "externalId": "/id"}
        if sorted_page and kind == "page":
            pull["list"]["incremental"] = {**INCREMENTAL, "sorted": True}
        if read:
            pull["read"] = {"operation": "getItem", "params": {"id": "{externalId}"}}
        if deletes:
            pull["deleted"] = "archived = true"
            if kind == "page":
                pull["deletedList"] = DELETED_LIST
        objects[f"Items_{kind}"] = {"entity": "account", "pull": pull}
    document = {
        "openapi": "3.0.3",
        "info": {"title": "Listing stand-in", "version": "1"},
        "servers": [{"url": "http://127.0.0.1:1"}],
        "paths": paths,
        "x-synchronization": {
            "objects": objects,
            "transforms": {
                "ItemToAccount": {"map": {"name": "name"}},
                "SearchBody": {"map": {"since": "since", "limit": "pageSize"}},
            },
        },
    }
    name = "-".join(["read" if read else "inline", *(["deletes"] if deletes else []),
                     *(["sorted"] if sorted_page else []),
                     *([] if kinds == tuple(KINDS) else kinds)])
    path = directory / f"listing-{name}.json"
    path.write_text(json.dumps(document))
    return path


def load(directory: Path, **kw: Any) -> ConnectorDocument:
    return load_connector(listing_connector(directory, **kw))
