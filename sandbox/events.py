"""Entity-changed events (``schemas/bss-event.schema.json``): pure builders.

The sandbox writes one event per successful write into its outbox, in the same
transaction as the change; :mod:`sandbox.relay` publishes them to ``bss.events``
with routing key ``<entity>.<event>``.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

EventKind = Literal["created", "updated", "deleted"]


def routing_key(entity: str, event: EventKind) -> str:
    """``account.updated``: how ``bss.events`` routes an event."""
    return f"{entity}.{event}"


def entity_event(
    *,
    entity: str,
    event: EventKind,
    org_id: str,
    record_id: str,
    occurred_at: str,
    origin: str | None,
    data: dict[str, Any] | None,
    changed: list[str] | None = None,
) -> dict[str, Any]:
    """The event body for one change.

    ``occurred_at`` is the record's ``updatedAt`` (the deletion time for ``deleted``);
    ``origin`` the ``X-Sync-Origin`` of the write (``None`` without it); ``data`` the
    record after the change (before it, for ``deleted``); ``changed`` the top-level
    fields an update touched. The event id is a fresh UUID. (A create's event is built
    by the create's one statement, ``sandbox.store._CREATE``, with the same fields.)
    """
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "entity": entity,
        "event": event,
        "organizationId": org_id,
        "recordId": record_id,
        "occurredAt": occurred_at,
        "origin": origin,
        "data": data,
    }
    if event == "updated":
        body["changedFields"] = changed if changed is not None else None
    return body
