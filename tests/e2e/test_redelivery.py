"""Dead letters end to end: the daily redelivery, replay and purge with real processes.

The sandbox BSS, a dispatcher and a pusher (``python -m services.…``), json-server as the
Acme CRM behind the fault proxy, and ``bss-sync dlq …`` run as the operator runs it.
A record "fails permanently" because Acme refuses it (422, through the proxy); the
tests then change what makes it fail and move its dead letter back.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import AcmeWorld
from tests.e2e.records import account_bodies, contact_bodies
from tests.e2e.stack import PUSHER_DEAD, Tenant
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.e2e

DISPATCHER_QUEUE = "dispatcher.events"


def refuse(acme: AcmeWorld, collection: str, field: str) -> None:
    """Acme answers 422 to creates in ``collection`` whose ``field`` starts "Refused"."""
    acme.proxy.reject(lambda s: s.method == "POST" and s.path == f"/{collection}"
                      and str(s.json.get(field, "")).startswith("Refused"),
                      422, {"message": f"{field} is not acceptable", "field": field})


def wait_dead(acme: AcmeWorld, tenant: Tenant, count: int) -> list[dict[str, Any]]:
    return wait_until(lambda: (lambda d: d if len(d) == count else None)(
        acme.stack.dead_letters()), timeout=60, what=f"{count} messages in {PUSHER_DEAD}",
        state=lambda: acme.stack.audit.summary(tenant.instance_id))


def final_rows(acme: AcmeWorld, tenant: Tenant, record_id: str) -> list[dict[str, Any]]:
    return [r for r in acme.stack.audit.rows(tenant.instance_id, record_id=record_id)
            if r["outcome"] != "retrying"]


def test_a_dead_record_fixed_in_the_bss_is_synced_by_the_next_redelivery(
        acme: AcmeWorld) -> None:
    """A contact Acme refuses is dead-lettered; its data is fixed in the BSS (the change's
    own event is kept from the pusher, so that only the redelivery can sync it); the
    redelivery moves the dead letter back, the pusher reads the fixed record and creates
    it: outcome ``created``, ``trigger: redelivery`` in its audit row."""
    stack, tenant = acme.stack, acme.tenant()
    accounts = stack.bss.create_many(tenant.org_id, "account", account_bodies(1, seed=31))
    wait_until(lambda: len(acme.json_server.state()["companies"]) == 1, timeout=30,
               what="the company in Acme")
    refuse(acme, "people", "lastName")
    body = contact_bodies(accounts, 1, seed=32)[0]
    body["lastName"] = "Refused"
    contact = stack.bss.create(tenant.org_id, "contact", body)
    [dead] = wait_dead(acme, tenant, 1)
    assert dead["properties"]["headers"]["x-record-id"] == contact["id"]

    # the fix, with the dispatcher stopped and its event dropped: nothing but the
    # redelivery may push the record again
    stack.dispatcher.stop()
    try:
        stack.bss.patch(tenant.org_id, "contact", contact["id"], {"lastName": "Fixed"})
        wait_until(lambda: stack.dead_letters(DISPATCHER_QUEUE), timeout=30,
                   what="the fix's event in dispatcher.events")
        stack.purge(DISPATCHER_QUEUE)
    finally:
        stack.dispatcher.start()

    done = stack.cli(["dlq", "redeliver"])
    assert "pusher.dead: 1 of 1 read, 1 moved" in done.stdout

    rows = wait_until(lambda: (lambda r: r if len(r) == 2 else None)(
        final_rows(acme, tenant, contact["id"])), timeout=60, what="the redelivered push",
        state=lambda: stack.audit.summary(tenant.instance_id))
    assert [(r["outcome"], r["http_status"]) for r in rows] == [("dead", 422),
                                                                ("created", 201)]
    assert rows[1]["details"]["trigger"] == "redelivery"
    assert rows[1]["details"]["redeliveries"] == 1
    [person] = [p for p in acme.json_server.state()["people"]
                if p.get("bssId") == contact["id"]]
    assert person["lastName"] == "Fixed"
    assert stack.dead_letters() == []
    moved = stack.audit.rows(tenant.instance_id, record_id=contact["id"], service="dlq")
    assert [(r["outcome"], r["details"]["operation"]) for r in moved] == [("retrying",
                                                                          "moved")]


def test_replay_of_one_dead_letter_and_a_purge_that_removes_only_what_matches(
        acme: AcmeWorld) -> None:
    """Two contacts and an account refused by Acme: `dlq replay ID` of one contact once
    Acme accepts people again syncs only that one (trigger manual); `dlq purge --filter
    entity=contact --yes` then removes the other contact's letter and leaves the
    account's."""
    stack, tenant = acme.stack, acme.tenant()
    accounts = stack.bss.create_many(tenant.org_id, "account", account_bodies(1, seed=41))
    wait_until(lambda: len(acme.json_server.state()["companies"]) == 1, timeout=30,
               what="the company in Acme")
    refuse(acme, "people", "lastName")
    refuse(acme, "companies", "name")
    bodies = contact_bodies(accounts, 2, seed=42)
    for n, body in enumerate(bodies):
        body["lastName"] = f"Refused {n}"
    account_body = account_bodies(1, seed=43)[0]
    account_body["name"] = "Refused Company"
    contacts = stack.bss.create_many(tenant.org_id, "contact", bodies)
    refused_account = stack.bss.create(tenant.org_id, "account", account_body)
    dead = wait_dead(acme, tenant, 3)
    ids = {d["properties"]["headers"]["x-record-id"]: d["properties"]["message_id"]
           for d in dead}

    acme.proxy.clear_faults()
    done = stack.cli(["dlq", "replay", ids[contacts[0]["id"]]])
    assert "pusher.dead: 3 of 3 read, 1 moved, 2 kept" in done.stdout
    rows = wait_until(lambda: (lambda r: r if len(r) == 2 else None)(
        final_rows(acme, tenant, contacts[0]["id"])), timeout=60, what="the replayed push")
    assert [r["outcome"] for r in rows] == ["dead", "created"]
    assert rows[1]["details"]["trigger"] == "manual"

    listed = stack.cli(["dlq", "list", "--json", "--entity", "contact"])
    assert contacts[1]["id"] in listed.stdout and contacts[0]["id"] not in listed.stdout
    purged = stack.cli(["dlq", "purge", "--filter", "entity=contact",
                        "--filter", f"instance={tenant.instance_id}", "--yes"])
    assert "pusher.dead: 2 of 2 read, 1 purged, 1 kept" in purged.stdout
    [left] = stack.dead_letters()
    assert left["properties"]["headers"]["x-record-id"] == refused_account["id"]
    gone = stack.audit.rows(tenant.instance_id, record_id=contacts[1]["id"], service="dlq")
    assert [(r["outcome"], r["details"]["operation"]) for r in gone] == [("dead", "purged")]
    people = {p.get("bssId") for p in acme.json_server.state()["people"]}
    assert contacts[0]["id"] in people and contacts[1]["id"] not in people
