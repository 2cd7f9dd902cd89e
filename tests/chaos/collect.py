"""Reads everything the reconciliation needs into a :class:`~tests.chaos.reconcile.Snapshot`:
the BSS (the sandbox's tables), the third party (json-server's ``/db``), the audit log
and the links (PostgreSQL, directly — not through the fault proxy), the queues (exact
counts through AMQP) and every dead letter (read and left in place)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from shared.messaging.tooling import peek, queue_depth
from shared.storage.db import quote_ident
from tests.chaos.reconcile import DeadLetter, Snapshot, parse_body
from tests.e2e.stack import Tenant, TestStack


def _queues(stack: TestStack) -> dict[str, int]:
    """``{queue: ready messages}`` of the stack's vhost (exact; with no consumer, every
    message is ready)."""
    names = [q["name"] for q in stack.management.for_vhost(stack.config.vhost).queues()]
    return {name: queue_depth(stack.amqp_url, name) for name in names}


def _dead_letters(stack: TestStack, queues: dict[str, int]) -> list[DeadLetter]:
    letters = []
    for queue, count in queues.items():
        if queue.endswith(".dead") and count:
            for message in peek(stack.amqp_url, queue, limit=count + 10):
                letters.append(DeadLetter(queue, message.message_id, message.headers,
                                          parse_body(message.body)))
    return letters


#: The organization's events in the order the BSS wrote them: by the outbox's own
#: sequence (``o.id``; an unqualified ``id`` would be the event id selected below, a
#: random UUID, and the "latest" event a random one of the record's events).
_OUTBOX_EVENTS = ("SELECT body->>'id' AS event_id, body->>'recordId' AS record_id,"
                  " published_at IS NULL AS pending FROM {schema}.outbox AS o"
                  " WHERE body->>'organizationId' = %s ORDER BY o.id")


def outbox_events(conn: psycopg.Connection[Any], org_id: str, schema: str = "sandbox",
                  ) -> tuple[dict[str, str], list[str], int]:
    """``({record: its latest event id}, published event ids in write order, events
    not published yet)`` of ``org_id`` in the sandbox's outbox."""
    latest: dict[str, str] = {}
    events: list[str] = []
    unpublished = 0
    cursor = conn.cursor(row_factory=dict_row)
    for row in cursor.execute(_OUTBOX_EVENTS.format(schema=quote_ident(schema)), (org_id,)):
        latest[row["record_id"]] = row["event_id"]
        if row["pending"]:
            unpublished += 1
        else:
            events.append(row["event_id"])
    return latest, events, unpublished


def snapshot(stack: TestStack, database_url: str, tenant: Tenant) -> Snapshot:
    """Everything observable now about ``tenant``'s organization and instance."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        records = {row["id"]: row for row in conn.execute(
            "SELECT id, entity, data, deleted_at IS NOT NULL AS deleted"
            " FROM sandbox.records WHERE org_id = %s", (tenant.org_id,))}
        latest, events, unpublished = outbox_events(conn, tenant.org_id)
        audit: list[dict[str, Any]] = conn.execute(
            "SELECT service, message_id::text, attempt, outcome, action, record_id,"
            " correlation_id::text, error_class, error_message, http_status"
            " FROM audit_log WHERE org_id = %s ORDER BY at, id", (tenant.org_id,)).fetchall()
        links = conn.execute(
            "SELECT entity, bss_id, external_id, state, claim::text FROM links"
            " WHERE instance_id = %s", (tenant.instance_id,)).fetchall()
    assert stack.crm is not None
    queues = _queues(stack)
    return Snapshot(records=records, latest_event=latest, events=events,
                    unpublished=unpublished, third_party=stack.crm.state(), audit=audit,
                    dead_letters=_dead_letters(stack, queues), queues=queues, links=links)
