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
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import AcmeWorld
from tests.e2e.records import account_bodies, contact_bodies
from tests.e2e.test_push_path import assert_exactly_once, assert_no_dead_letters, wait_synced
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
