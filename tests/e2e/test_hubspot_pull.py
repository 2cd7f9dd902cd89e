"""Pulling from a vendor's published API: pull discovery through the HubSpot connector
(``connectors/hubspot-crm.overlay.json`` over HubSpot's own CRM v3 specs, from
``VENDOR_SPECS``: ``tests/fixtures/vendor_specs.py``) against Prism (``prism mock -d``).

Prism validates every search request against HubSpot's schemas (a body that breaks
``PublicObjectSearchRequest``, or no bearer token, is answered 422 / 401 and fails the
discovery) and answers generated results. Discovery (real RabbitMQ and PostgreSQL)
pages through companies and contacts with the ``after`` cursor Prism returns, and
every listed record's canonical form — the object's ``pull.body`` transform, checked
by the puller's own check — validates against ``schemas/entities/``.

What Prism serves is a copy of ``bss-sync bundle --json-media-types`` where only the
generated *responses* are pinned (:func:`for_prism_pull`), requests stay HubSpot's:

* a result's ``properties`` are those the searches ask for, each with the form of its
  HubSpot property type (numbers as digit strings, enumerations from HubSpot's
  options, dates, e-mails; free text of any content), nullable, as HubSpot answers
  them — the vendor spec only says "a map of strings";
* ``archived`` is false (neither the search nor a read without ``archived=true``
  answers an archived record), ids are UUIDs (Prism's random strings repeat), a page
  has 1 to 20 results and ``after`` is a UUID.

Prism has no state: every answer has a next page. :class:`Portal`, a pass-through HTTP
proxy in front of Prism, makes the portal end: it answers the ``PAGES``-th page of a
listing without ``paging`` (as HubSpot answers the last page), and records what was
sent, so the test checks that each page asked for the ``after`` the previous one gave.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.processes import bss_sync
from demo.thirdparty import REPO
from services.dispatcher.discovery import Discovery
from services.dispatcher.listing import ListingRetry
from services.puller.plan import PullPlanner
from shared.audit.writer import AuditWriter
from shared.connector.preview import PlaceholderLinks
from shared.connector.request import plan_request
from shared.errors import SchemaViolation
from shared.installation.applying import apply
from shared.messaging.connection import open_connection
from shared.messaging.publisher import Publisher
from shared.messaging.topology import PULLER
from shared.runtime import InstanceRegistry
from shared.storage.db import Database
from shared.storage.pull_cursors import PullCursorStore
from shared.transform import TransformContext
from tests.e2e.stack import HUBSPOT_TOKEN
from tests.e2e.thirdparty import Prism
from tests.fixtures.amqp import TestTopology
from tests.fixtures.vendor_specs import VendorSpecs

pytestmark = pytest.mark.e2e

HUBSPOT_OVERLAY = REPO / "connectors" / "hubspot-crm.overlay.json"
PAGES = 4
ORG, INSTANCE = "org-hubspot", "inst-hubspot"
SEARCHES = {"Company": "/crm/v3/objects/companies/search",
            "Contact": "/crm/v3/objects/contacts/search"}

_TEXT = {"type": "string", "maxLength": 40, "nullable": True}
_NUMBER = {"type": "string", "pattern": "^[1-9][0-9]{0,5}$", "nullable": True}
_DATE = {"type": "string", "format": "date-time"}
#: HubSpot's company and contact properties the searches ask for, in the form of their
#: HubSpot property type (text, number, enumeration, date, e-mail…).
PROPERTIES: dict[str, dict[str, Any]] = {
    "name": _TEXT, "domain": {"type": "string", "format": "hostname", "nullable": True},
    "phone": {"type": "string", "pattern": "^\\+[1-9][0-9]{7,12}$", "nullable": True},
    "industry": {"type": "string", "nullable": True,
                 "enum": ["COMPUTER_SOFTWARE", "BANKING", "ACCOUNTING", "RETAIL"]},
    "type": {"type": "string", "nullable": True,
             "enum": ["PROSPECT", "PARTNER", "RESELLER", "VENDOR", "OTHER"]},
    "city": _TEXT, "state": _TEXT, "zip": {"type": "string", "maxLength": 10, "nullable": True},
    "country": {"type": "string", "nullable": True,  # free text in HubSpot
                "enum": ["Germany", "France", "United States", "DE", "fr", "Narnia", ""]},
    "address": _TEXT, "address2": _TEXT, "numberofemployees": _NUMBER,
    "annualrevenue": {"type": "string", "pattern": "^[1-9][0-9]{0,8}(\\.[0-9]{2})?$",
                      "nullable": True},
    "description": {"type": "string", "maxLength": 500, "nullable": True},
    "bss_account_id": _TEXT, "hs_lastmodifieddate": _DATE,
    "firstname": _TEXT, "lastname": _TEXT, "email": {"type": "string", "format": "email",
                                                     "nullable": True},
    "mobilephone": {"type": "string", "pattern": "^\\+[1-9][0-9]{7,12}$", "nullable": True},
    "jobtitle": _TEXT, "salutation": {"type": "string", "enum": ["Mr", "Ms", "Dr", "Mx"],
                                      "nullable": True},
    "hs_language": {"type": "string", "enum": ["en", "fr", "de", "pt-br", "zh-tw"],
                    "nullable": True},
    "bss_contact_id": _TEXT, "lastmodifieddate": _DATE, "associatedcompanyid": _NUMBER,
}


def for_prism_pull(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle with Prism's generated search results pinned (see the module
    docstring); requests untouched."""
    schemas = bundle["components"]["schemas"]
    results = schemas["CollectionResponseWithTotalSimplePublicObject"]["properties"]["results"]
    results.update(minItems=1, maxItems=20)
    for name in ("SimplePublicObject", "SimplePublicObjectWithAssociations"):  # search, read
        record = schemas[name]["properties"]
        record["id"]["format"] = "uuid"
        record["archived"]["enum"] = [False]
        record["properties"] = {"type": "object", "additionalProperties": False,
                                "required": sorted(PROPERTIES), "properties": PROPERTIES}
    schemas["NextPage"]["properties"]["after"]["format"] = "uuid"
    return bundle


class Portal:
    """A pass-through proxy to Prism whose listings end after ``pages`` pages."""

    def __init__(self, upstream: str, pages: int) -> None:
        self.upstream = upstream
        self.pages = pages
        self.lock = threading.Lock()
        self.listed: dict[str, int] = {}  # search path -> pages answered in its listing
        self.sent: list[tuple[str, Any, Any]] = []  # (path, request body, answer body)
        self.http = httpx.Client(base_url=upstream, timeout=60)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Portal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.http.close()

    def relay(self, method: str, path: str, headers: dict[str, str],
              raw: bytes) -> tuple[int, bytes, str]:
        answer = self.http.request(method, path, content=raw, headers={
            k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")})
        content = answer.content
        if path in SEARCHES.values() and answer.status_code == 200:
            request, body = json.loads(raw), answer.json()
            with self.lock:
                number = 1 if request.get("after") in (None, "0") else self.listed[path] + 1
                self.listed[path] = number
                if number >= self.pages:
                    body.pop("paging", None)  # the portal's last page
                self.sent.append((path, request, body))
            content = json.dumps(body).encode()
        return answer.status_code, content, answer.headers.get("content-type", "")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        portal = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, content, kind = portal.relay(self.command, self.path,
                                                     dict(self.headers), raw)
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST

        return Handler


@pytest.fixture(scope="module")
def prism(vendor_specs: VendorSpecs, node_tools: None,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    workdir = tmp_path_factory.mktemp("prism-pull")
    bundle = workdir / "hubspot-crm.bundle.json"
    bss_sync(["bundle", *map(str, vendor_specs.files), "--overlay", str(HUBSPOT_OVERLAY),
              "--json-media-types", "-o", str(bundle)], {})
    served = workdir / "hubspot-crm.prism-pull.json"
    served.write_text(json.dumps(for_prism_pull(json.loads(bundle.read_text()))))
    server = Prism(served, workdir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def portal(prism: Prism) -> Iterator[Portal]:
    with Portal(prism.url, PAGES) as running:
        yield running


async def install(db: Database, vendor_specs: VendorSpecs, server: str, tmp_path: Path) -> None:
    pull = {"pull": ["create", "update"]}
    installation = {
        "timezone": "UTC",
        "connectors": [{"id": "hubspot-crm", "spec": [str(f) for f in vendor_specs.files],
                        "overlay": str(HUBSPOT_OVERLAY)}],
        "organizations": [{"id": ORG, "name": "HubSpot portal", "instances": [{
            "id": INSTANCE, "name": "HubSpot", "connector": "hubspot-crm", "server": server,
            "credentials": {"accessToken": "env:HUBSPOT_TOKEN"},
            "permissions": {"account": pull, "contact": pull}}]}],
    }
    path = tmp_path / "installation.json"
    path.write_text(json.dumps(installation))
    await apply(db, path)


async def test_discovery_pages_through_prism_and_every_record_validates(
        db: Database, topology: TestTopology, vendor_specs: VendorSpecs, portal: Portal,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    await install(db, vendor_specs, portal.url, tmp_path)
    registry = InstanceRegistry(db)
    connection = await open_connection(topology.url, "bss-sync test-hubspot-pull")
    try:
        ctx = await registry.get(INSTANCE)
        assert ctx is not None
        async with AuditWriter(db, interval=0.02) as audit:
            discovery = Discovery(ctx, publisher=await Publisher.open(connection),
                                  cursors=PullCursorStore(db), audit=audit, run_id="run-1",
                                  retry=ListingRetry(delays=(0.5,)))
            summaries = {s.object: s for s in await discovery.run()}
        reads = {name: await read_one(ctx, name, portal) for name in SEARCHES}
    finally:
        await registry.aclose()
        await connection.close()

    assert set(summaries) == set(SEARCHES)
    listed: dict[str, list[dict[str, Any]]] = {}
    for name, summary in summaries.items():
        assert summary.error is None, f"{name}: {summary.error}"
        assert summary.pages == PAGES  # the after cursor followed to the portal's last page
        pages = [(request, answer) for path, request, answer in portal.sent
                 if path == SEARCHES[name]]
        assert len(pages) == PAGES == summary.requests
        afters = [request["after"] for request, _ in pages]
        given = [answer["paging"]["next"]["after"] for _, answer in pages[:-1]]
        assert afters == ["0", *given]
        listed[name] = [r for _, answer in pages for r in answer["results"]]
        assert summary.records == summary.published == len(listed[name])
        # the object declares pull.read: messages carry the id, the puller reads the record
        assert summary.by_reference == summary.published
    total = sum(s.published for s in summaries.values())
    topology.wait_ready(PULLER, total)
    messages = [json.loads(m.body) for m in topology.peek(PULLER, limit=total + 10)]
    by_entity = {"Company": "account", "Contact": "contact"}
    for name, records in listed.items():
        sent = sorted(m["external_id"] for m in messages if m["entity"] == by_entity[name])
        assert sent == sorted(r["id"] for r in records)

    connector = ctx.connector
    context = TransformContext(lookups=connector.lookups, links=PlaceholderLinks(),
                               variables=connector.variables())
    broken: list[str] = []
    for name, records in listed.items():
        planner = PullPlanner(connector.object(name))
        for record in [*records, reads[name]]:
            assert not planner.deleted(record, "upsert")
            try:
                planner.canonical(record, context)  # the puller's transform and check
            except SchemaViolation as exc:
                broken.append(f"{name} {record['id']}: {exc}")
    assert broken == [], "\n".join(broken[:10])


async def read_one(ctx: Any, name: str, portal: Portal) -> dict[str, Any]:
    """A listed record read as the puller reads it (``pull.read``): Prism accepts the
    request (HubSpot's parameters) and answers the record."""
    obj = ctx.connector.object(name)
    record_id = next(r["id"] for path, _, answer in portal.sent if path == SEARCHES[name]
                     for r in answer["results"])
    plan = plan_request(obj.pull_read, base_url=ctx.client.base_url,
                        data={"externalId": record_id}, context=ctx.transform_context(None))
    assert "properties=name" in plan.url or "properties=firstname" in plan.url
    response = await ctx.client.send(plan)
    assert response.status == 200 and isinstance(response.body, dict)
    return response.body
