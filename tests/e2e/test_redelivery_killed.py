"""The daily redelivery killed half-way, end to end, real processes: the sandbox BSS,
a dispatcher running the schedules on an injected clock (``CLOCK_FILE``), the pusher,
json-server as the Acme CRM.

1,000 accounts are dead-lettered (the instance's API key is wrong), the key is fixed,
and the dispatcher is SIGKILLed while its daily redelivery moves them back. After the
kill every letter is back in the pusher's work queue or still dead — none lost, none
moved twice; the restarted dispatcher does not run that slot again (the rest wait for
the next day, as the operator guide says); the next day's slot moves the rest, and the
pusher then creates every account in Acme exactly once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu import Connection

from shared.messaging.dead_letters import H_REDELIVERED_FROM
from shared.messaging.topology import DISPATCHER, PUSHER, WorkQueue
from shared.runtime.registry import DEFAULT_TTL
from tests.e2e.conftest import make_clocked_stack
from tests.e2e.records import account_bodies
from tests.e2e.stack import (
    FULL_PUSH,
    PUSHER_DEAD,
    ClockedWorld,
    Tenant,
)
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.e2e

Record = dict[str, Any]
LETTERS = 1000
PUSHER_QUEUE = WorkQueue(PUSHER).name
#: The daily redelivery's slot (UTC), well after the module starts; the instance's own
#: runs are scheduled months away, so that only the redelivery pushes anything again.
SLOT = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=30)
NEXT_SLOT = SLOT + timedelta(days=1)
NO_RUNS = (SLOT + timedelta(days=120)).strftime("%M %H %d %m *")


class World(ClockedWorld):
    _amqp: Connection | None = None

    def slots(self) -> list[Record]:
        with self.db() as conn:
            return conn.execute("SELECT slot, finished_at, summary, error FROM job_slots"
                                " WHERE job = 'redelivery' ORDER BY slot").fetchall()

    def moved_rows(self) -> int:
        with self.db() as conn:
            row = conn.execute("SELECT count(*) AS n FROM audit_log WHERE service = 'dlq'"
                               " AND details->>'operation' = 'moved'").fetchone()
        assert row is not None
        return int(row["n"])

    def queued(self, queue: str) -> list[Record]:
        """Every message of ``queue`` (nothing consumes it now), left in it. Each look
        counts as a delivery of each message: looked at twice in all."""
        return self.stack.dead_letters(queue)

    def ready(self, queue: str) -> int:
        """Ready messages in ``queue`` right now (exact, through AMQP; no delivery), on
        one connection kept open: a look takes a round trip, not a connection's set-up,
        so a pass moving hundreds of letters a second is caught half-way."""
        if self._amqp is None:
            self._amqp = Connection(self.stack.env["AMQP_URL"])
        return int(self._amqp.default_channel.queue_declare(queue, passive=True).message_count)

    def close(self) -> None:
        if self._amqp is not None:
            self._amqp.release()
            self._amqp = None

    def apply(self, tenant: Tenant, key_env: str) -> None:
        crm = self.stack.crm
        assert crm is not None
        installation = {
            "timezone": "UTC", "schedule": NO_RUNS,
            "connectors": [c.entry() for c in self.stack.connectors.values()],
            "organizations": [{"id": tenant.org_id, "name": tenant.org_id, "instances": [{
                "id": tenant.instance_id, "name": tenant.instance_id, "connector": "acme-crm",
                "server": crm.url, "credentials": {"apiKey": f"env:{key_env}"},
                "permissions": {"account": FULL_PUSH}}]}]}
        path = self.stack.workdir / f"installation-{key_env}.json"
        path.write_text(json.dumps(installation))
        self.stack.cli(["apply", str(path)])


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    world = World(*make_clocked_stack(request, f"{SLOT.minute} {SLOT.hour} * * *",
                                      (DISPATCHER, PUSHER)))
    yield world
    world.close()


def records_of(messages: list[Record]) -> list[str]:
    return [m["properties"]["headers"]["x-record-id"] for m in messages]


def test_a_dispatcher_killed_during_the_daily_redelivery_loses_no_letter(world: World,
                                                                          ) -> None:
    stack = world.stack
    suffix = uuid.uuid4().hex[:4]
    tenant = Tenant(f"org-k-{suffix}", f"inst-k-{suffix}", "acme-crm")
    world.apply(tenant, "ACME_BAD_KEY")
    accounts = stack.bss.create_many(tenant.org_id, "account",
                                     account_bodies(LETTERS, seed=61))
    ids = {a["id"] for a in accounts}
    wait_until(lambda: world.ready(PUSHER_DEAD) == LETTERS, timeout=120,
               what=f"{LETTERS} dead letters (Acme refuses the wrong key)",
               state=lambda: stack.audit.summary(tenant.instance_id))
    world.apply(tenant, "ACME_KEY")
    time.sleep(DEFAULT_TTL + 1)  # the pusher re-reads a changed instance within its TTL

    # Nothing consumes the work queue while the redelivery is killed, so that it shows
    # where every letter is.
    stack.pusher.stop()
    try:
        world.set_clock(SLOT + timedelta(seconds=5))
        wait_until(lambda: world.ready(PUSHER_QUEUE) >= 300, timeout=60, interval=0.002,
                   what="the first letters moved", state=world.slots)
    finally:
        stack.dispatcher.kill()

    still_dead = records_of(world.queued(PUSHER_DEAD))
    moved_copies = world.queued(PUSHER_QUEUE)
    moved = records_of(moved_copies)
    assert still_dead and moved, "the kill did not come half-way"
    assert set(still_dead) | set(moved) == ids, "letters lost"
    assert len(moved) == len(set(moved)), "a letter moved twice in one pass"
    assert len(still_dead) == len(set(still_dead))
    assert all(m["properties"]["headers"][H_REDELIVERED_FROM] for m in moved_copies)
    [killed] = world.slots()
    assert (killed["slot"], killed["finished_at"]) == (SLOT, None)
    twins = set(still_dead) & set(moved)  # moved, then their letters' acks lost
    world_rows = world.moved_rows()

    stack.dispatcher.start()  # the slot was taken: it is not run again
    time.sleep(2)  # ten schedule ticks
    assert world.slots() == [killed]
    assert world.ready(PUSHER_DEAD) == len(still_dead)

    world.set_clock(NEXT_SLOT + timedelta(seconds=5))
    [_, nxt] = wait_until(lambda: (lambda s: s if len(s) == 2 and s[1]["finished_at"]
                                   else None)(world.slots()),
                          timeout=60, what="the next day's redelivery", state=world.slots)
    assert (nxt["slot"], nxt["error"], nxt["summary"]["moved"]) == (NEXT_SLOT, None,
                                                                   len(still_dead))
    assert world.ready(PUSHER_DEAD) == 0

    stack.pusher.start()
    crm = stack.crm
    assert crm is not None

    def created() -> dict[str, int] | None:
        rows = [r for r in stack.audit.rows(tenant.instance_id, entity="account")
                if r["outcome"] == "created"]
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["record_id"]] = counts.get(row["record_id"], 0) + 1
        return counts if set(counts) == ids else None

    counts = wait_until(created, timeout=180, what=f"{LETTERS} accounts created in Acme",
                        state=lambda: stack.audit.summary(tenant.instance_id))
    assert set(counts.values()) == {1}, "an account created twice"
    companies: dict[str, int] = {}
    for company in crm.state()["companies"]:
        companies[company.get("bssId")] = companies.get(company.get("bssId"), 0) + 1
    assert {k: v for k, v in companies.items() if k in ids} == dict.fromkeys(ids, 1)
    rows = [r for r in stack.audit.rows(tenant.instance_id, entity="account")
            if r["outcome"] == "created"]
    assert {r["details"]["trigger"] for r in rows} == {"redelivery"}
    assert world.ready(PUSHER_DEAD) == 0
    print(f"killed after {len(moved)} moves, {world_rows} of them audited; {len(still_dead)} "
          f"still dead, {len(twins)} of them moved too; the next slot moved the rest; "
          "every account created once")
