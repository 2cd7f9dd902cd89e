"""The puller as a real process: pull messages published to ``sync.pull`` become BSS
records in the sandbox BSS (real RabbitMQ, PostgreSQL, HTTP), with their links and
audit rows; a redelivered create makes no second record; an external record that
breaks the canonical schema is dead-lettered at once with its JSON pointer.

The messages carry their external record inline, as pull discovery publishes them,
so no third party is needed here.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from demo.waiting import wait_until
from shared.messaging.envelope import SyncMessage
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.tooling import publish_blocking
from shared.messaging.topology import PULL_EXCHANGE, PULLER, WorkQueue
from tests.e2e.conftest import make_stack
from tests.e2e.records import ACME_CONNECTOR
from tests.e2e.stack import ACME_API_KEY, Connector, Tenant, TestStack

PULLER_DEAD = WorkQueue(PULLER).dead_queue
FULL_PULL = {"pull": ["create", "update", "delete"]}
WAIT = 60.0


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> TestStack:
    """Sandbox BSS + the puller, on the stack's own database and vhost."""
    return make_stack(request, [Connector("acme-crm", [ACME_CONNECTOR])],
                      {"ACME_KEY": ACME_API_KEY}, services=(PULLER,))


@pytest.fixture
def tenant(stack: TestStack) -> Tenant:
    stack.purge(PULLER_DEAD)
    return stack.tenant("acme-crm", "http://127.0.0.1:9", credentials={"apiKey": "env:ACME_KEY"},
                        permissions={"account": FULL_PULL, "contact": FULL_PULL})


def company(external_id: int, **changes: Any) -> dict[str, Any]:
    return {"id": external_id, "name": f"Company {external_id}",
            "accountNumber": f"C-{external_id:06d}", "email": f"c{external_id}@example.com",
            "updatedAt": "2025-06-01T10:30:00.000Z", **changes}


def publish(stack: TestStack, tenant: Tenant, entity: str, record: dict[str, Any], *,
            message_id: str | None = None) -> str:
    message = SyncMessage(id=message_id or str(uuid.uuid4()), direction="pull",
                          org_id=tenant.org_id, instance_id=tenant.instance_id, entity=entity,
                          action="upsert", trigger="manual", attempt=0,
                          created_at=datetime.now(UTC).isoformat(),
                          external_id=str(record["id"]), record=record)
    body = json.dumps(message.to_dict()).encode()
    routing_key = f"{entity}.upsert.{tenant.org_id}.{tenant.instance_id}"
    publish_blocking(stack.amqp_url, [OutgoingMessage(PULL_EXCHANGE, routing_key, body,
                                                      message_id=message.id)])
    return message.id


def bss_records(stack: TestStack, tenant: Tenant, entity: str) -> list[dict[str, Any]]:
    response = stack.bss.http.get(f"/organizations/{tenant.org_id}/{entity}",
                                  params={"limit": 1000})
    response.raise_for_status()
    return response.json()["items"]


def links(stack: TestStack, tenant: Tenant) -> list[dict[str, Any]]:
    with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM links WHERE instance_id = %s ORDER BY id",
                            (tenant.instance_id,)).fetchall()


def rows(stack: TestStack, tenant: Tenant, message_id: str) -> list[dict[str, Any]]:
    return [r for r in stack.audit.rows(tenant.instance_id, service=PULLER)
            if r["message_id"] == message_id]


def settled(stack: TestStack, tenant: Tenant, message_id: str) -> dict[str, Any]:
    """The final audit row of ``message_id``, once written."""
    found = wait_until(
        lambda: [r for r in rows(stack, tenant, message_id) if r["outcome"] != "retrying"],
        timeout=WAIT, what=f"the puller to settle message {message_id}",
        state=lambda: stack.audit.summary(tenant.instance_id), between=stack.check_processes)
    return found[-1]


def test_a_pulled_record_is_created_once_with_its_link_and_audit_row(stack: TestStack,
                                                                     tenant: Tenant) -> None:
    first = publish(stack, tenant, "account", company(17))
    row = settled(stack, tenant, first)

    [record] = bss_records(stack, tenant, "account")
    assert (record["name"], record["code"]) == ("Company 17", "C-000017")
    assert row["outcome"] == "created"
    assert (row["record_id"], row["external_id"], row["http_status"]) == (record["id"], "17",
                                                                         201)
    [link] = links(stack, tenant)
    assert (link["bss_id"], link["external_id"], link["state"]) == (record["id"], "17",
                                                                    "linked")
    assert link["pull_hash"] and link["last_pulled_at"] is not None
    assert link["push_hash"] is None  # the instance only pulls: nothing will push it

    # The same record again (a second discovery): nothing to write.
    again = publish(stack, tenant, "account", company(17))
    assert settled(stack, tenant, again)["outcome"] == "unchanged"
    assert [r["id"] for r in bss_records(stack, tenant, "account")] == [record["id"]]

    # A change on the external side updates the same BSS record.
    changed = publish(stack, tenant, "account", company(17, name="Company 17 renamed"))
    row = settled(stack, tenant, changed)
    assert (row["outcome"], row["record_id"]) == ("updated", record["id"])
    [record] = bss_records(stack, tenant, "account")
    assert record["name"] == "Company 17 renamed" and record["code"] == "C-000017"


def test_a_create_redelivered_after_its_link_was_lost_makes_no_second_record(
        stack: TestStack, tenant: Tenant) -> None:
    """The process died after the BSS created the record and before the link was
    written: the link row is as the claim left it. The redelivery replays the create
    with the same Idempotency-Key and the BSS answers with the first record."""
    message_id = publish(stack, tenant, "account", company(21))
    assert settled(stack, tenant, message_id)["outcome"] == "created"
    [record] = bss_records(stack, tenant, "account")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("UPDATE links SET state = 'creating', bss_id = NULL, pull_hash = NULL,"
                     " last_pulled_at = NULL WHERE instance_id = %s",
                     (tenant.instance_id,))

    redelivered = publish(stack, tenant, "account", company(21))
    row = settled(stack, tenant, redelivered)

    assert (row["outcome"], row["record_id"]) == ("created", record["id"])
    assert [r["id"] for r in bss_records(stack, tenant, "account")] == [record["id"]]
    [link] = links(stack, tenant)
    assert (link["bss_id"], link["state"]) == (record["id"], "linked")


def test_a_record_breaking_the_canonical_schema_is_dead_lettered_with_its_pointer(
        stack: TestStack, tenant: Tenant) -> None:
    message_id = publish(stack, tenant, "account", company(33, email="not an email"))
    row = settled(stack, tenant, message_id)

    assert (row["outcome"], row["error_class"], row["attempt"]) == ("dead", "SchemaViolation",
                                                                    0)
    assert "/email: is not a valid email" in row["error_message"]
    dead = wait_until(lambda: stack.dead_letters(PULLER_DEAD), timeout=WAIT,
                      what=f"a message on {PULLER_DEAD}")
    [letter] = [d for d in dead if d["properties"].get("message_id") == message_id]
    headers = letter["properties"]["headers"]
    assert headers["x-error-class"] == "SchemaViolation"
    assert "/email: is not a valid email" in headers["x-error"]
    assert headers["x-instance-id"] == tenant.instance_id
    assert bss_records(stack, tenant, "account") == []


def test_a_contact_whose_company_is_not_linked_yet_is_retried_then_linked(
        stack: TestStack, tenant: Tenant) -> None:
    person = {"id": 5, "lastName": "Hopper", "companyId": 44}
    contact_message = publish(stack, tenant, "contact", person)
    wait_until(lambda: [r for r in rows(stack, tenant, contact_message)
                        if r["outcome"] == "retrying"],
               timeout=WAIT, what="the contact to wait for its company",
               state=lambda: stack.audit.summary(tenant.instance_id))
    company_message = publish(stack, tenant, "account", company(44))
    assert settled(stack, tenant, company_message)["outcome"] == "created"

    assert settled(stack, tenant, contact_message)["outcome"] == "created"
    [account] = bss_records(stack, tenant, "account")
    [contact] = bss_records(stack, tenant, "contact")
    assert contact["accountId"] == account["id"]
