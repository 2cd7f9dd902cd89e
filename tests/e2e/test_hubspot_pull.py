"""Pulling from a vendor's published API: pull discovery through the HubSpot connector
(``connectors/hubspot-crm.overlay.json`` over HubSpot's own CRM v3 specs, from
``VENDOR_SPECS``: ``tests/fixtures/vendor_specs.py``) against Prism (``prism mock -d``).

Prism validates every search request against HubSpot's schemas (a body that breaks
``PublicObjectSearchRequest``, or no bearer token, is answered 422 / 401 and fails the
discovery) and answers generated results. Discovery (real RabbitMQ and PostgreSQL)
pages through companies and contacts with the ``after`` cursor Prism returns, and
every listed record's canonical form — the object's ``pull.body`` transform, checked
by the puller's own check — validates against ``schemas/entities/``. The lists of
archived companies and contacts (``pull.deletedList``: ``GET …?archived=true``, which
cannot filter by time) become ``delete`` messages: all of them on the first run, then
only those archived since the cursor (``incremental.in: client``).

What Prism serves is a copy of ``bss-sync bundle --json-media-types`` where only the
generated *responses* are pinned (:func:`for_prism_pull`), requests stay HubSpot's:

* a result's ``properties`` are those the searches ask for, each with the form of its
  HubSpot property type (numbers as digit strings, enumerations from HubSpot's
  options, dates, e-mails; free text of any content), nullable, as HubSpot answers
  them — the vendor spec only says "a map of strings";
* ``archived`` is false (neither the search nor a read without ``archived=true``
  answers an archived record), ids are UUIDs (Prism's random strings repeat), a page
  has 1 to 20 results and ``after`` is a UUID;
* the GET lists answer archived records (``archived`` true, with ``archivedAt``): the
  connector calls them only with ``archived=true``.

Prism has no state: every answer has a next page. :class:`Portal`, a pass-through HTTP
proxy in front of Prism, makes the portal end: it answers the ``PAGES``-th page of a
listing without ``paging`` (as HubSpot answers the last page), and records what was
sent, so the test checks that each page asked for the ``after`` the previous one gave.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.processes import bss_sync
from demo.thirdparty import REPO
from services.dispatcher.discovery import OVERLAP, Discovery
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
from tests.fixtures.threaded_http import ThreadedHttpServer
from tests.fixtures.vendor_specs import VendorSpecs

pytestmark = pytest.mark.e2e

HUBSPOT_OVERLAY = REPO / "connectors" / "hubspot-crm.overlay.json"
PAGES = 4
ORG, INSTANCE = "org-hubspot", "inst-hubspot"
SEARCHES = {"Company": "/crm/v3/objects/companies/search",
            "Contact": "/crm/v3/objects/contacts/search"}
#: The lists of archived records (``pull.deletedList``): GET, ``?archived=true``.
ARCHIVED = {"Company": "/crm/v3/objects/companies", "Contact": "/crm/v3/objects/contacts"}
ENTITIES = {"Company": "account", "Contact": "contact"}

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
    # the GET lists answer archived records (the connector lists them with archived=true)
    archived = json.loads(json.dumps(schemas["SimplePublicObjectWithAssociations"]))
    archived["properties"]["archived"]["enum"] = [True]
    archived["required"] = sorted({*archived.get("required", []), "archivedAt"})
    page = json.loads(json.dumps(
        schemas["CollectionResponseSimplePublicObjectWithAssociationsForwardPaging"]))
    page["properties"]["results"].update(items={"$ref": "#/components/schemas/ArchivedObject"},
                                         minItems=1, maxItems=20)
    schemas.update(ArchivedObject=archived, ArchivedPage=page)
    for path in ARCHIVED.values():
        answer = bundle["paths"][path]["get"]["responses"]["200"]["content"]
        answer["application/json"]["schema"] = {"$ref": "#/components/schemas/ArchivedPage"}
    return bundle


class Portal(ThreadedHttpServer):
    """A pass-through proxy to Prism whose listings end after ``pages`` pages."""

    def __init__(self, upstream: str, pages: int) -> None:
        self.upstream = upstream
        self.pages = pages
        self.lock = threading.Lock()
        self.listed: dict[str, int] = {}  # listing path -> pages answered in its listing
        self.sent: list[tuple[str, Any, Any]] = []  # (path, request body or query, answer)
        self.http = httpx.Client(base_url=upstream, timeout=60)
        super().__init__(self._handler())

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.http.close()

    def relay(self, method: str, target: str, headers: dict[str, str],
              raw: bytes) -> tuple[int, bytes, str]:
        answer = self.http.request(method, target, content=raw, headers={
            k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")})
        content = answer.content
        url = httpx.URL(target)
        listing = (url.path in SEARCHES.values() and method == "POST") or (
            url.path in ARCHIVED.values() and method == "GET")
        if listing and answer.status_code == 200:
            request = json.loads(raw) if method == "POST" else dict(url.params)
            body = answer.json()
            with self.lock:
                first = request.get("after") in (None, "0")
                number = 1 if first else self.listed[url.path] + 1
                self.listed[url.path] = number
                if number >= self.pages:
                    body.pop("paging", None)  # the portal's last page
                self.sent.append((url.path, request, body))
            content = json.dumps(body).encode()
        return answer.status_code, content, answer.headers.get("content-type", "")

    def listing(self, path: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The (request, answer) pages of the listings of ``path``, in order."""
        with self.lock:
            return [(request, answer) for sent, request, answer in self.sent if sent == path]

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


async def discover(db: Database, topology: TestTopology, portal: Portal, *,
                   read: bool = False) -> tuple[dict[str, Any], dict[str, dict[str, Any]], Any]:
    """One discovery of the instance: its summaries by object, with ``read`` one listed
    record of each object read as the puller reads it, and the instance's connector."""
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
        reads = {name: await read_one(ctx, name, portal) for name in SEARCHES} if read else {}
    finally:
        await registry.aclose()
        await connection.close()
    assert set(summaries) == set(SEARCHES)
    for name, summary in summaries.items():
        assert summary.error is None, f"{name}: {summary.error}"
    return summaries, reads, ctx.connector


def walked(portal: Portal, path: str) -> list[dict[str, Any]]:
    """The records of a listing of ``path``, checking that it followed the ``after``
    cursor to the portal's last page."""
    pages = portal.listing(path)
    assert len(pages) == PAGES
    afters = [request.get("after", "0") for request, _ in pages]
    given = [answer["paging"]["next"]["after"] for _, answer in pages[:-1]]
    assert afters == ["0", *given]
    return [r for _, answer in pages for r in answer["results"]]


def messages(topology: TestTopology, count: int) -> list[dict[str, Any]]:
    topology.wait_ready(PULLER, count)
    found = [json.loads(m.body) for m in topology.peek(PULLER, limit=count + 10)]
    assert len(found) == count
    return found


async def test_discovery_pages_through_prism_and_every_record_validates(
        db: Database, topology: TestTopology, vendor_specs: VendorSpecs, portal: Portal,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    await install(db, vendor_specs, portal.url, tmp_path)
    summaries, reads, connector = await discover(db, topology, portal, read=True)

    listed: dict[str, list[dict[str, Any]]] = {}
    for name, summary in summaries.items():
        listed[name] = walked(portal, SEARCHES[name])
        archived = walked(portal, ARCHIVED[name])
        assert summary.pages == summary.requests == 2 * PAGES
        assert summary.records == summary.published == len(listed[name]) + len(archived)
        assert summary.deleted_ids == len(archived)
        # the object declares pull.read: messages carry the id, the puller reads the record
        assert summary.by_reference == len(listed[name])
    found = messages(topology, sum(s.published for s in summaries.values()))
    for name, records in listed.items():
        upserts = sorted(m["external_id"] for m in found
                         if m["entity"] == ENTITIES[name] and m["action"] == "upsert")
        assert upserts == sorted(r["id"] for r in records)
        assert all("record" not in m for m in found)

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


async def test_archived_records_become_delete_messages_kept_since_the_cursor(
        db: Database, topology: TestTopology, vendor_specs: VendorSpecs, portal: Portal,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HubSpot's list of archived records cannot filter by time (``incremental.in:
    client``): the first discovery publishes every archived id, the next only those
    archived since the cursor (minus the overlap)."""
    monkeypatch.setenv("HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    await install(db, vendor_specs, portal.url, tmp_path)
    first, _, _ = await discover(db, topology, portal)
    archived = {name: walked(portal, ARCHIVED[name]) for name in ARCHIVED}
    for request, _ in portal.listing(ARCHIVED["Company"]):
        assert (request["archived"], request["limit"]) == ("true", "100")
        assert set(request) <= {"archived", "limit", "properties", "after"}  # no time filter
    found = messages(topology, sum(s.published for s in first.values()))
    for name, records in archived.items():
        deletes = [m for m in found if m["entity"] == ENTITIES[name] and m["action"] == "delete"]
        assert sorted(m["external_id"] for m in deletes) == sorted(r["id"] for r in records)
        assert all("record" not in m for m in deletes)
    cursors = PullCursorStore(db)
    stored = {name: (await cursors.get(INSTANCE, name + "#deleted")).value for name in ARCHIVED}
    for name, records in archived.items():
        assert stored[name] == max(_time(r["archivedAt"]) for r in records)

    portal.sent.clear()
    second, _, _ = await discover(db, topology, portal)
    for name, summary in second.items():
        since = stored[name] - OVERLAP
        listed = walked(portal, ARCHIVED[name])
        kept = [r for r in listed if _time(r["archivedAt"]) >= since]
        assert summary.deleted_ids == len(kept)
        assert summary.before_since == len(listed) - len(kept)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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
