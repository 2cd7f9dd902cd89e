"""The pusher SIGKILLed again and again in the middle of 2,000 creates
(docs/architecture.md §5 step 5): every record ends in the Acme CRM once, with one
``created`` audit row.

A kill can land anywhere in a push, and each place has its own way back: before the
create (the redelivery creates), after the create and before the link (the redelivery
finds the company by its match, or replays the person's create with the same
Idempotency-Key: ``created``, replayed), after the link write and before the audit row
(the redelivery finds its own push mark on the link: ``created``, recovered), after
the audit row and before the ack (the redelivery is recognised as settled). With a few
hundred pushes in flight at each kill, every one of those places is hit.

And a kill that lands after a create reached Acme and before its link, followed by
the record's deletion in the BSS: the third-party record is found (match, or the
create replayed with its key) and deleted, never left behind as "never
synchronized" (docs/architecture.md §5 step 4).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import AcmeWorld
from tests.e2e.records import account_bodies, contact_bodies
from tests.e2e.test_push_path import (
    assert_exactly_once,
    assert_no_dead_letters,
    by_bss_id,
    wait_synced,
)
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.e2e

ACCOUNTS, CONTACTS_PER_ACCOUNT = 1_600, 0.25  # 2,000 records
KILL_EVERY = 250  # new audit rows between two kills


def test_a_pusher_killed_again_and_again_leaves_one_created_row_per_record(
        acme: AcmeWorld) -> None:
    tenant = acme.tenant()
    bss, audit, pusher = acme.stack.bss, acme.stack.audit, acme.stack.pusher
    bodies = account_bodies(ACCOUNTS, seed=50)

    def create_all() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Accounts, and one contact for every fourth of them, in waves: records keep
        arriving while the pusher dies, and contacts often push their account first."""
        accounts: list[dict[str, Any]] = []
        contacts: list[dict[str, Any]] = []
        for wave in range(0, ACCOUNTS, 200):
            created = bss.create_many(tenant.org_id, "account", bodies[wave:wave + 200], 16)
            accounts += created
            contacts += bss.create_many(tenant.org_id, "contact",
                                        contact_bodies(created[::4], 1, seed=51 + wave), 16)
        return accounts, contacts

    def settled() -> int:
        return sum(1 for r in audit.rows(tenant.instance_id) if r["outcome"] == "created")

    started = time.monotonic()
    kills = 0
    with ThreadPoolExecutor(1) as pool:
        creating = pool.submit(create_all)
        total = ACCOUNTS + int(ACCOUNTS * CONTACTS_PER_ACCOUNT)
        while (target := settled() + KILL_EVERY) < total:
            wait_until(lambda target=target: settled() >= target, timeout=90, interval=0.05,
                       what=f"{target} records created before kill {kills + 1}",
                       state=lambda: audit.summary(tenant.instance_id))
            pusher.kill()  # SIGKILL, pushes in flight: the broker requeues their messages
            kills += 1
            pusher.start()
        accounts, contacts = creating.result()

    state = wait_synced(acme, tenant, accounts, contacts, timeout=120)
    elapsed = time.monotonic() - started

    assert kills >= 5, f"only {kills} kills: the records went through too fast"
    assert_exactly_once(state, accounts, contacts)
    rows = audit.rows(tenant.instance_id)
    created = Counter(r["record_id"] for r in rows if r["outcome"] == "created")
    wanted = {r["id"] for r in accounts + contacts}
    assert {rid for rid, n in created.items() if n != 1} == set(), "created more than once"
    assert set(created) == wanted, f"{len(wanted - set(created))} records never audited created"
    recovered = sum(1 for r in rows if "recovered" in (r["details"] or {}))
    replayed = sum(1 for r in rows if "replayed" in (r["details"] or {}))
    print(f"\n{len(wanted)} records, {kills} kills, {elapsed:.1f} s; rows recovered after a "
          f"kill between link and audit row: {recovered}; creates found already made: "
          f"{replayed}")
    assert_no_dead_letters(acme, tenant)


def test_a_record_deleted_after_its_create_lost_its_answer_is_deleted_in_acme(
        acme: AcmeWorld) -> None:
    """Acme makes a company and a person, and holds both answers while the pusher is
    SIGKILLed: neither link is written. Both records are then deleted in the BSS and the
    pusher restarted: the company is found by its match, the person by replaying its
    create with the same Idempotency-Key, and both are deleted in Acme."""
    tenant = acme.tenant()
    bss, audit, proxy = acme.stack.bss, acme.stack.audit, acme.proxy
    [parent] = bss.create_many(tenant.org_id, "account", account_bodies(1, seed=60))
    wait_synced(acme, tenant, [parent], [], timeout=30)
    for path in ("/companies", "/people"):
        proxy.hold_next(1, delay=20.0,  # far longer than it takes to kill the pusher
                        when=lambda s, path=path: (s.method, s.path) == ("POST", path))
    [account] = bss.create_many(tenant.org_id, "account", account_bodies(1, seed=61))
    [contact] = bss.create_many(tenant.org_id, "contact", contact_bodies([parent], 1, seed=62))

    def made_and_held() -> bool:
        return len(proxy.requests(lambda s: s.method == "POST" and s.upstream_status == 201
                                  and (s.fault or "").startswith("held"))) == 2

    wait_until(made_and_held, timeout=30, what="both creates made by Acme, answers held",
               state=lambda: audit.summary(tenant.instance_id))
    acme.stack.pusher.kill()  # the answers never reach it; nothing was linked
    proxy.clear_faults()
    state = acme.json_server.state()
    assert {account["id"], contact["id"]} <= {r.get("bssId") for r in
                                              state["companies"] + state["people"]}
    bss.delete(tenant.org_id, "account", account["id"])
    bss.delete(tenant.org_id, "contact", contact["id"])
    acme.stack.pusher.start()

    def deleted() -> list[dict[str, Any]] | None:
        rows = [audit.rows(tenant.instance_id, record_id=r["id"], outcome="deleted")
                for r in (account, contact)]
        return [found[0] for found in rows] if all(rows) else None

    company_row, person_row = wait_until(
        deleted, timeout=60, what="both records audited deleted",
        state=lambda: {r["id"]: audit.outcomes(tenant.instance_id).get(r["id"])
                       for r in (account, contact)})

    state = acme.json_server.state()
    assert set(by_bss_id(state["companies"])) == {parent["id"]}, "the company was left behind"
    assert state["people"] == [], "the person was left behind"
    assert "found" in company_row["details"]["resolved"]
    assert "Idempotent-Replayed" in person_row["details"]["resolved"]
    keys = Counter(s.headers.get("idempotency-key") for s in proxy.requests(
        lambda s: (s.method, s.path) == ("POST", "/people")))
    assert list(keys.values()) == [2], "the person's create replayed once, with its key"
    assert proxy.count("POST", "/companies") == 2  # the parent, and the lost one only
    assert_no_dead_letters(acme, tenant)
