"""Dispatcher, event side: one BSS entity-changed event → one push message per instance.

An event (``schemas/bss-event.schema.json``) is fanned out to every enabled
instance of its organization that pushes that entity at all; the pusher then
decides create/update/delete/skip from the instance's permissions and the
record's link (an ``updated`` event for a record never linked becomes a create,
a ``deleted`` event without the delete permission is audited ``skipped`` there).
An event whose ``origin`` is an instance is not pushed back to that instance.

Each push message gets a fresh id. If the dispatcher dies after publishing but
before acking, the redelivered event publishes the push messages again: the
pusher then holds two messages for one record, and its link claim serialises them
(the second finds the record claimed, retries, and ends ``unchanged``). Reusing
the ids instead would let two pushers both own the claim (a claim is keyed by
message id so that a redelivery after a crash can resume at once).

A BSS publishes at least once: an outbox relay killed between the broker's confirm
and marking its rows sent publishes them again, same event id, not flagged
redelivered. So the dispatcher runs with ``always_deduplicate`` (``__main__``):
every event is looked up in the audit log before it is handled — concurrent
look-ups in one query — and a second copy of an event already settled is acked
without a second fan-out (docs/architecture.md §5, *The dispatcher*).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.audit import Outcome
from shared.ids import new_message_id
from shared.message_context import MessageContext
from shared.messaging.codec import HandlerResult, InboundMessage, header_attempt
from shared.messaging.envelope import SyncMessage, encode, loads_unicode
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.topology import PUSH_EXCHANGE, sync_routing_key
from shared.schema_check import PinnedSchemaCheck
from shared.schemas import ENTITIES
from shared.storage.instances import Instance, InstanceStore
from shared.storage.organizations import OrganizationStore

EVENT_ACTIONS = {"created": "create", "updated": "update", "deleted": "delete"}
CACHE_SECONDS = 5.0


#: :func:`shared.schema_check.rules_sha256` of ``schemas/bss-event.schema.json`` (and the
#: ``common`` id it refers to) as :func:`conforms` mirrors it.
EVENT_RULES_SHA256 = "e0dbb32e0dc1b9e54f46804e7b436a9f731b0066f53149c422c156759e8cc2c2"
_EVENTS = ("created", "updated", "deleted")
_ENTITY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TENANT = re.compile(r"^[A-Za-z0-9_-]+$")  # organizationId and origin
_MAX_OCCURRED_AT = 64
_MAX_CHANGED_FIELDS = 1000


def conforms(event: Any) -> bool:
    """True only when ``event`` satisfies ``bss-event.schema.json`` — a hand-written
    check of the same rules, ~20x cheaper than jsonschema (which then only words the
    reasons of what this refuses). Never more lenient than the schema; used by
    :data:`EVENT_CHECK` only while the schema's rules are those it mirrors
    (``EVENT_RULES_SHA256``)."""
    if type(event) is not dict:
        return False
    try:
        event_id, entity, kind = event["id"], event["entity"], event["event"]
        org_id, record_id, occurred = (event["organizationId"], event["recordId"],
                                       event["occurredAt"])
    except KeyError:
        return False
    if not (type(event_id) is str and 1 <= len(event_id) <= 255
            and type(entity) is str and _ENTITY.search(entity) is not None
            and type(kind) is str and kind in _EVENTS
            and type(org_id) is str and 1 <= len(org_id) <= 128
            and _TENANT.search(org_id) is not None
            and type(record_id) is str and 1 <= len(record_id) <= 255
            and type(occurred) is str and len(occurred) <= _MAX_OCCURRED_AT):
        return False  # occurredAt's format is an annotation here, not asserted
    get = event.get
    origin, data, fields = get("origin"), get("data"), get("changedFields")
    if origin is not None and not (type(origin) is str and 1 <= len(origin) <= 128
                                   and _TENANT.search(origin) is not None):
        return False
    if data is not None and type(data) is not dict:
        return False
    if fields is None:
        return True
    return (type(fields) is list and len(fields) <= _MAX_CHANGED_FIELDS
            and all(type(f) is str and 1 <= len(f) <= 255 for f in fields)
            and len(set(fields)) == len(fields))


#: The event's check: :func:`conforms`, then jsonschema for what it refuses
#: (``occurredAt``'s format is an annotation in this schema, not asserted).
EVENT_CHECK = PinnedSchemaCheck("bss-event", conforms, EVENT_RULES_SHA256,
                                subject="the event", formats=False)


class EventCodec:
    """Decodes BSS entity-changed events; anything else is ``InvalidMessage``."""

    def decode(self, body: bytes, properties: Any) -> InboundMessage[dict[str, Any]]:
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            # the standard library words the reason (and reads >64-bit integers)
            event = loads_unicode(body, "the event is not JSON")
        EVENT_CHECK.check(event)
        return InboundMessage(event, MessageContext(
            event["id"], org_id=event["organizationId"], entity=event["entity"],
            direction="push", action=event["event"], record_id=event["recordId"],
            attempt=header_attempt(properties), correlation_id=event["id"]))

    def retry_body(self, message: InboundMessage[dict[str, Any]], body: bytes,
                   attempt: int) -> bytes:
        return body  # the attempt travels in the x-attempt header


EVENT_CODEC = EventCodec()


def push_messages(event: dict[str, Any], instances: list[Instance]) -> list[OutgoingMessage]:
    """The push messages for ``event`` (pure): one per instance, origin excluded."""
    action = EVENT_ACTIONS[event["event"]]
    now = datetime.now(UTC).isoformat()
    out = []
    for instance in instances:
        if instance.id == event.get("origin"):
            continue
        message = SyncMessage(
            id=new_message_id(), direction="push",
            org_id=event["organizationId"], instance_id=instance.id, entity=event["entity"],
            action=action, trigger="event", attempt=0, created_at=now,
            record_id=event["recordId"], correlation_id=event["id"])
        out.append(OutgoingMessage(
            PUSH_EXCHANGE, sync_routing_key(message.entity, action, message.org_id, instance.id),
            encode(message), message_id=message.id, correlation_id=event["id"]))
    return out


class EventHandler:
    """Fans one event out to the instances that push its entity."""

    def __init__(self, instances: InstanceStore, organizations: OrganizationStore,
                 publisher: Any) -> None:
        self._instances = instances
        self._organizations = organizations
        self._publisher = publisher
        self._cache: dict[str, tuple[float, list[Instance] | None]] = {}

    async def __call__(self, message: InboundMessage[dict[str, Any]]) -> HandlerResult:
        event = message.payload
        if event["entity"] not in ENTITIES:  # a BSS entity bss-sync does not synchronize
            return HandlerResult(Outcome.SKIPPED, details={
                "reason": f"bss-sync does not synchronize {event['entity']} records"})
        instances = await self._org_instances(event["organizationId"])
        if instances is None:
            return HandlerResult(Outcome.SKIPPED, details={"reason": "unknown organization"})
        targets = [i for i in instances if i.permitted_actions(event["entity"], "push")]
        messages = push_messages(event, targets)
        if not messages:
            reason = ("the change came from the only instance pushing it" if targets
                      else f"no instance of the organization pushes {event['entity']}")
            return HandlerResult(Outcome.SKIPPED, details={"reason": reason})
        await self._publisher.publish_many(messages)
        return HandlerResult(Outcome.DISPATCHED, details={
            "instances": [m.routing_key.rsplit(".", 1)[1] for m in messages]})

    async def _org_instances(self, org_id: str) -> list[Instance] | None:
        """Enabled instances of the organization (cached a few seconds); ``None`` when the
        organization is unknown."""
        now = time.monotonic()
        cached = self._cache.get(org_id)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        organization = await self._organizations.get(org_id)
        value = None
        if organization is not None:
            value = [i for i in await self._instances.list(org_id, active_only=True)]
        self._cache[org_id] = (now, value)
        return value
