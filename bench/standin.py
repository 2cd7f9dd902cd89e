"""The benchmarks' third party: the Acme CRM's companies API (``connectors/acme-crm.json``),
costing as little CPU as possible — in production the third party runs elsewhere.
Raw asyncio protocol, httptools parser, uvloop; run as a script, in its own process:

    python bench/standin.py PORT [--delay MS] [--companies N]

What it answers:

* ``GET /companies?_page=P&_limit=L[&updatedAt_gte=T]`` (the pull listing, as
  json-server pages it): the companies changed at or after ``T``, oldest first;
  ``N`` companies are held (default 0), each with every field ``CompanyToAccount``
  maps, ``updatedAt`` one second apart from 2026-01-01.
* ``GET /companies/ID``: that company (the connector's ``pull.read``), else 404.
* any other ``GET``: ``[]`` (the push path's match finds nothing).
* ``POST``: the body echoed with a new id (a create); ``PUT``/``PATCH``: the body.
* ``POST /_bench/change``: every company changed (name, ``updatedAt`` an hour
  after the last stamp, one second apart): the next listing lists them all again.
* ``GET /_bench/stats``: the listing's figures since the start or the last change
  (``listFirst``/``listLast``: epoch seconds when the first / last list request
  arrived, ``listRequests``, ``listed`` records, ``reads`` of one company).

``--delay MS`` delays every answer (listing included).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httptools
import uvloop

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def company(index: int, stamp: datetime, version: int) -> dict[str, Any]:
    """Company ``index`` as the CRM shows it (every field maps to a valid BSS account)."""
    suffix = "" if version == 1 else f" v{version}"
    return {
        "id": index + 1, "name": f"Company {index}{suffix}",
        "accountNumber": f"PULL-{index:06d}", "legalName": f"Company {index} SAS",
        "website": f"https://company{index}.example.com", "phone": "+33 1 23 45 67 89",
        "email": f"billing{index}@example.com", "vatId": f"FR{index:011d}",
        "industry": "SOFTWARE", "kind": "CUSTOMER", "currency": "EUR",
        "employees": index % 500 + version,
        "billingAddress": {"street": f"{index} Main Street", "city": "Paris",
                           "postalCode": "75001", "country": "FR"},
        "updatedAt": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


class Companies:
    """The companies, oldest change first, each pre-encoded (a page is a join)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.version = 1
        self.stamps: list[datetime] = []
        self.encoded: list[bytes] = []
        self.change(EPOCH)
        self.reset_stats()

    def change(self, start: datetime) -> None:
        self.stamps = [start + timedelta(seconds=i) for i in range(self.count)]
        self.encoded = [json.dumps(company(i, s, self.version)).encode()
                        for i, s in enumerate(self.stamps)]

    def change_all(self) -> int:
        last = self.stamps[-1] if self.stamps else EPOCH
        self.version += 1
        self.change(last + timedelta(hours=1))
        self.reset_stats()
        return self.count

    def reset_stats(self) -> None:
        self.stats: dict[str, Any] = {"listFirst": None, "listLast": None, "listRequests": 0,
                                      "listed": 0, "reads": 0}

    def page(self, query: dict[str, str]) -> bytes:
        now = time.time()
        stats = self.stats
        stats["listFirst"] = stats["listFirst"] or now
        stats["listLast"] = now
        stats["listRequests"] += 1
        start = 0
        if since := query.get("updatedAt_gte"):
            floor = datetime.fromisoformat(since.replace("Z", "+00:00"))
            start = bisect.bisect_left(self.stamps, floor)
        size = int(query.get("_limit", 10))
        first = start + (int(query.get("_page", 1)) - 1) * size
        chunk = self.encoded[first:first + size]
        stats["listed"] += len(chunk)
        return b"[" + b",".join(chunk) + b"]"

    def one(self, company_id: str) -> bytes | None:
        self.stats["reads"] += 1
        index = int(company_id) - 1 if company_id.isdigit() else -1
        return self.encoded[index] if 0 <= index < self.count else None


class Http(asyncio.Protocol):
    companies: Companies
    delay: float = 0.0
    ids = (f"{os.getpid()}-{n}" for n in itertools.count(1))  # unique across restarts

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.url = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body, self.url = [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status, payload = self.answer(self.parser.get_method(), b"".join(self.body))
        answer = (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._write, answer)
        else:
            self._write(answer)

    def answer(self, method: bytes, body: bytes) -> tuple[bytes, bytes]:
        path, _, raw_query = self.url.decode().partition("?")
        query = dict(parse_qsl(raw_query))
        if method == b"GET":
            if path == "/companies" and "_page" in query:
                return b"200 OK", self.companies.page(query)
            if path.startswith("/companies/"):
                found = self.companies.one(path.rsplit("/", 1)[1])
                return (b"200 OK", found) if found else (b"404 Not Found", b"{}")
            if path == "/_bench/stats":
                return b"200 OK", json.dumps(self.companies.stats).encode()
            return b"200 OK", b"[]"
        if method == b"POST":
            if path == "/_bench/change":
                return b"200 OK", json.dumps({"changed": self.companies.change_all()}).encode()
            record = json.loads(body or b"{}")
            record["id"] = next(self.ids)
            return b"201 Created", json.dumps(record).encode()
        return b"200 OK", body or b"{}"

    def _write(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port,
                                                             backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--delay", type=float, default=0.0, help="ms before every answer")
    parser.add_argument("--companies", type=int, default=0)
    args = parser.parse_args()
    Http.companies = Companies(args.companies)
    Http.delay = args.delay / 1000
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
