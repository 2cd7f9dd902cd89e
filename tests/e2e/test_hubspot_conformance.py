"""Conformance with a vendor's published API: pushes through the HubSpot connector
(``connectors/hubspot-crm.overlay.json`` over HubSpot's own CRM v3 specs, from
``VENDOR_SPECS``: ``tests/fixtures/vendor_specs.py``) to Prism.

Prism (``prism mock -d``) validates every request against the vendor's schemas — 422
when a body, parameter or header breaks them, 401 without the OAuth2 bearer — and
answers generated responses. So every push coming back 2xx means bss-sync sent what
HubSpot documents. Prism serves a copy of ``bss-sync bundle --json-media-types``
(Prism cannot serialize HubSpot's ``*/*`` responses) in which only *generated
responses* are pinned down (:func:`for_prism`); the request schemas are HubSpot's.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from demo.processes import bss_sync
from demo.thirdparty import REPO
from tests.e2e.conftest import make_stack
from tests.e2e.records import account_bodies, contact_bodies
from tests.e2e.stack import HUBSPOT_TOKEN, PUSHER_DEAD, Connector, TestStack
from tests.e2e.thirdparty import Prism
from tests.fixtures.vendor_specs import VendorSpecs
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.e2e

HUBSPOT_OVERLAY = REPO / "connectors" / "hubspot-crm.overlay.json"
PUSH = {"push": ["create", "update"]}


def for_prism(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle with Prism's *generated responses* made usable (requests untouched):

    * search results are empty — a mock cannot know which contacts exist, and random
      matches would link contacts to random ids (or make ``match`` ambiguous); an
      empty search means "no match, create", as for a new HubSpot portal;
    * object ids are UUIDs — Prism's random strings repeat, and two records given the
      same external id would (rightly) be refused by the link table.
    """
    schemas = bundle["components"]["schemas"]
    schemas["CollectionResponseWithTotalSimplePublicObject"]["properties"]["results"][
        "maxItems"] = 0
    for name in ("SimplePublicObject", "SimplePublicObjectWithAssociations"):
        schemas[name]["properties"]["id"]["format"] = "uuid"
    return bundle


@pytest.fixture(scope="module")
def prism(vendor_specs: VendorSpecs, node_tools: None,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    workdir = tmp_path_factory.mktemp("prism")
    bundle = workdir / "hubspot-crm.bundle.json"
    bss_sync(["bundle", *map(str, vendor_specs.files), "--overlay", str(HUBSPOT_OVERLAY),
             "--json-media-types", "-o", str(bundle)], {})
    served = workdir / "hubspot-crm.prism.json"
    served.write_text(json.dumps(for_prism(json.loads(bundle.read_text()))))
    server = Prism(served, workdir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hubspot_stack(vendor_specs: VendorSpecs, request: pytest.FixtureRequest) -> TestStack:
    connector = Connector("hubspot-crm", vendor_specs.files, overlay=HUBSPOT_OVERLAY)
    return make_stack(request, [connector], {"HUBSPOT_TOKEN": HUBSPOT_TOKEN})


class HubspotWorld:
    def __init__(self, stack: TestStack, prism: Prism) -> None:
        self.stack = stack
        self.prism = prism

    def failure_report(self) -> list[tuple[str, str]]:
        return [*self.stack.process_logs(), ("prism output (tail)", self.prism.tail(40))]


@pytest.fixture
def hubspot(hubspot_stack: TestStack, prism: Prism) -> HubspotWorld:
    hubspot_stack.purge(PUSHER_DEAD)
    return HubspotWorld(hubspot_stack, prism)


def test_prism_enforces_the_vendor_contract(prism: Prism) -> None:
    """The control: Prism refuses what HubSpot would refuse, so a 2xx below means
    conformance and not a lenient mock."""
    url = f"{prism.url}/crm/v3/objects/companies"
    valid = {"properties": {"name": "Northwind"}, "associations": []}
    bearer = {"Authorization": f"Bearer {HUBSPOT_TOKEN}"}
    assert httpx.post(url, json=valid, timeout=30).status_code == 401
    assert httpx.post(url, json={"properties": {"name": "Northwind"}}, headers=bearer,
                      timeout=30).status_code == 422  # no associations
    assert httpx.post(url, json={"properties": {"employees": 12}, "associations": []},
                      headers=bearer, timeout=30).status_code == 422  # not a string
    assert httpx.post(url, json=valid, headers=bearer, timeout=30).status_code == 201


def test_accounts_and_contacts_pushed_to_hubspot_conform(hubspot: HubspotWorld) -> None:
    """Accounts then contacts (with their company association and the e-mail search
    that precedes a contact's create) created, then some of each updated: every push
    comes back 2xx from Prism, none is retried or dead-lettered."""
    stack, prism = hubspot.stack, hubspot.prism
    bss, audit = stack.bss, stack.audit
    log_start = len(prism.output())
    tenant = stack.tenant("hubspot-crm", prism.url,
                          credentials={"accessToken": "env:HUBSPOT_TOKEN"},
                          permissions={"account": PUSH, "contact": PUSH})

    def wait_for(outcome: str, records: list[dict[str, Any]]) -> None:
        wanted = {r["id"] for r in records}
        wait_until(lambda: wanted <= {r["record_id"] for r in audit.rows(
                       tenant.instance_id, outcome=outcome)},
                   timeout=90, what=f"{len(wanted)} records audited {outcome!r}",
                   state=lambda: audit.summary(tenant.instance_id), interval=0.25)

    accounts = bss.create_many(tenant.org_id, "account", account_bodies(15, seed=21))
    wait_for("created", accounts)
    contacts = bss.create_many(tenant.org_id, "contact",
                               contact_bodies(accounts[:13], 2, seed=22))
    wait_for("created", contacts)
    changed = bss.patch_many(tenant.org_id, "account", {
        a["id"]: {"phone": "+33 1 84 88 12 00", "numberOfEmployees": 999}
        for a in accounts[:5]})
    changed.update(bss.patch_many(tenant.org_id, "contact", {
        c["id"]: {"jobTitle": "Chief Procurement Officer", "mobile": "+33 6 12 34 56 78"}
        for c in contacts[:5]}))
    wait_for("updated", list(changed.values()))

    rows = audit.rows(tenant.instance_id)
    not_2xx = [(r["entity"], r["record_id"], r["outcome"], r["http_status"],
                r["error_message"]) for r in rows
               if r["outcome"] not in ("created", "updated")
               or not 200 <= (r["http_status"] or 0) < 300]
    assert not not_2xx, f"pushes that did not come back 2xx: {not_2xx[:5]}"
    assert Counter(r["outcome"] for r in rows) == {"created": 41, "updated": 10}
    assert stack.dead_letters() == []
    # Prism's own log: it received each request, and refused none.
    expected = Counter({("post", "/crm/v3/objects/companies"): 15,
                        ("post", "/crm/v3/objects/contacts/search"): 26,
                        ("post", "/crm/v3/objects/contacts"): 26,
                        ("patch", "/crm/v3/objects/companies/{id}"): 5,
                        ("patch", "/crm/v3/objects/contacts/{id}"): 5})
    received = wait_until(lambda: (found := prism_requests(prism.output()[log_start:]))
                          == expected and found, timeout=10, what="Prism's log of the pushes",
                          state=lambda: prism_requests(prism.output()[log_start:]))
    assert sum(received.values()) == 77
    assert "did not pass the validation rules" not in prism.output()[log_start:]


_RECEIVED = re.compile(r"\[HTTP SERVER\] (\w+) (\S+) .*Request received")
_OBJECT = re.compile(r"^(/crm/v3/objects/(?:companies|contacts))/(?!search$)[^/]+$")


def prism_requests(output: str) -> Counter[tuple[str, str]]:
    """``(method, path)`` of the requests in Prism's log, object ids as ``{id}``."""
    return Counter((m.group(1), _OBJECT.sub(r"\1/{id}", m.group(2)))
                   for m in _RECEIVED.finditer(output))
