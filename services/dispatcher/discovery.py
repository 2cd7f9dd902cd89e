"""Pull discovery: list what changed on the third party, one pull message per record.

For each object of the instance's connector with a ``pull.list`` call whose entity
the instance may pull, :class:`Discovery` walks the listing (:mod:`.listing`) from
the stored cursor minus :data:`OVERLAP` (``full`` ignores the cursor), publishes one
message per external record on ``sync.pull`` with publisher confirms, and advances
the cursor (:class:`~shared.storage.pull_cursors.PullCursorStore`) only after every
message of a page is confirmed. A discovery killed mid-way resumes at the first page
not wholly confirmed: records of that page may be published twice (the puller's
hashes drop the copy), none is missed.

The payload travels inline, unless the message would exceed :data:`MAX_INLINE_BYTES`
or the object declares ``pull.read``: then the message carries only the external id
and the puller reads the record itself.

Audit rows (service ``dispatcher``, direction ``pull``, action ``discover``): one
``dispatched`` row when an object's listing starts (``details.stage = started``), one
``dispatched`` row when it finishes (``finished``, with counts), or one ``failed`` row
with the error and where it stopped (page number, records published) — and one
``failed`` row per listed record that has no external id.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from services.dispatcher.listing import (
    Lister,
    ListingRetry,
    highest_time,
    page_from_state,
    page_state,
    since_of,
)
from shared.audit import AuditRecord, Outcome
from shared.connector.document import SyncObject
from shared.connector.source import resolve_pointer
from shared.errors import SyncError
from shared.logging import redact
from shared.messaging.envelope import SyncMessage, encode
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.topology import PULL_EXCHANGE, sync_routing_key
from shared.runtime import InstanceContext
from shared.storage.pull_cursors import PullCursor

log = structlog.get_logger(__name__)

SERVICE = "dispatcher"
ACTION = "discover"
#: A pull message's action: the puller decides create or update from the link.
PULL_ACTION = "upsert"
#: Above this, a message carries the external id only (docs/decisions.md).
MAX_INLINE_BYTES = 64 * 1024
#: How far before the stored cursor an incremental listing starts (docs/decisions.md).
OVERLAP = timedelta(seconds=60)


class Publisher(Protocol):
    async def publish_many(self, messages: Iterable[OutgoingMessage]) -> None:
        """Return once the broker confirmed every message; raise ``InfrastructureError``."""
        ...


class Cursors(Protocol):
    async def get(self, instance_id: str, object_name: str) -> PullCursor: ...

    async def save_progress(self, instance_id: str, object_name: str, *,
                            resume: dict[str, Any], since: datetime | None,
                            high: datetime | None, pages: int) -> None: ...

    async def finish(self, instance_id: str, object_name: str,
                     high: datetime | None) -> None: ...


class AuditLog(Protocol):
    async def write(self, record: AuditRecord) -> None: ...


@dataclasses.dataclass
class ObjectSummary:
    """What the discovery of one object did."""

    object: str
    entity: str
    since: datetime | None = None
    resumed_at_page: int | None = None
    pages: int = 0
    requests: int = 0
    records: int = 0
    published: int = 0
    by_reference: int = 0  # messages carrying the external id only
    without_id: int = 0
    cursor: datetime | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def pull_message(ctx: InstanceContext, obj: SyncObject, record: dict[str, Any],
                 external_id: str, *, run_id: str | None, trigger: str,
                 inline: bool) -> tuple[OutgoingMessage, bool]:
    """The pull message of one listed record (pure) and whether its payload is inline."""
    instance = ctx.instance
    message = SyncMessage(
        id=str(uuid.uuid4()), direction="pull", org_id=instance.org_id,
        instance_id=instance.id, entity=obj.entity, action=PULL_ACTION, trigger=trigger,
        attempt=0, created_at=datetime.now(UTC).isoformat(), external_id=external_id,
        record=record if inline else None, run_id=run_id, correlation_id=run_id)
    body = encode(message)
    if inline and len(body) > MAX_INLINE_BYTES:
        message.record = None
        body = encode(message)
        inline = False
    routing_key = sync_routing_key(obj.entity, PULL_ACTION, instance.org_id, instance.id)
    return OutgoingMessage(PULL_EXCHANGE, routing_key, body, message_id=message.id,
                           correlation_id=run_id), inline


def external_id_of(obj: SyncObject, record: Any) -> str | None:
    """The record's external id (``pull.externalId``) as text, ``None`` when missing."""
    try:
        value = resolve_pointer(record, obj.pull_external_id)
    except (KeyError, ValueError):
        return None
    if value is None or isinstance(value, dict | list | bool) or value == "":
        return None
    text = str(value)
    return text if len(text) <= 1000 else None


class Discovery:
    """Discovers the changed records of one instance (see the module docstring)."""

    def __init__(self, ctx: InstanceContext, *, publisher: Publisher, cursors: Cursors,
                 audit: AuditLog, run_id: str | None = None, trigger: str = "manual",
                 retry: ListingRetry | None = None, overlap: timedelta = OVERLAP) -> None:
        self.ctx = ctx
        self.publisher = publisher
        self.cursors = cursors
        self.audit = audit
        self.run_id = run_id
        self.trigger = trigger
        self.retry = retry
        self.overlap = overlap

    def objects(self, entity: str | None = None) -> list[SyncObject]:
        """The objects this instance pulls (of ``entity`` when given)."""
        instance = self.ctx.instance
        return [o for o in self.ctx.connector.objects.values()
                if o.pull_list is not None and (entity is None or o.entity == entity)
                and instance.permitted_actions(o.entity, "pull")]

    async def run(self, entity: str | None = None, *, full: bool = False) -> list[ObjectSummary]:
        """Discover every pulled object in turn; one object's failure (audited) does not
        stop the others. Raises ``InfrastructureError`` when the audit cannot be written."""
        return [await self.discover(obj, full=full) for obj in self.objects(entity)]

    async def discover(self, obj: SyncObject, *, full: bool = False) -> ObjectSummary:
        """List ``obj`` and publish its records; the summary says how far it went."""
        started = time.monotonic()
        summary = ObjectSummary(obj.name, obj.entity)
        instance_id = self.ctx.instance.id
        cursor = await self.cursors.get(instance_id, obj.name)
        start = None
        high: datetime | None = None
        if full:
            since = None
        elif cursor.resume is not None:
            since, start, high = cursor.listing_since, page_from_state(cursor.resume), \
                cursor.listing_high
            summary.resumed_at_page = start.number
        else:
            since = since_of(cursor.value, self.overlap)
        summary.since = since
        await self._audit(obj, Outcome.DISPATCHED, summary, "started")
        assert obj.pull_list is not None
        lister = Lister(self.ctx.client, obj.pull_list, self.ctx.transform_context(None),
                        retry=self.retry)
        try:
            async for page in lister.pages(since, start):
                await self._publish(obj, page.records, summary)
                high = highest_time(obj.pull_list, page.records, high)
                summary.pages += 1
                if page.following is not None:
                    await self.cursors.save_progress(
                        instance_id, obj.name, resume=page_state(page.following), since=since,
                        high=high, pages=summary.pages)
            await self.cursors.finish(instance_id, obj.name, high)
            summary.cursor = high
        except SyncError as exc:
            summary.error = redact(str(exc))
            summary.requests = lister.requests
            summary.seconds = time.monotonic() - started
            log.warning("discovery.failed", instance_id=instance_id, object=obj.name,
                        page=summary.pages + (summary.resumed_at_page or 1), error=summary.error)
            await self._audit(obj, Outcome.FAILED, summary, "failed", error=exc)
            return summary
        summary.requests = lister.requests
        summary.seconds = time.monotonic() - started
        await self._audit(obj, Outcome.DISPATCHED, summary, "finished")
        return summary

    async def _publish(self, obj: SyncObject, records: list[Any],
                       summary: ObjectSummary) -> None:
        inline = obj.pull_read is None
        messages = []
        for index, record in enumerate(records):
            summary.records += 1
            external_id = external_id_of(obj, record) if isinstance(record, dict) else None
            if external_id is None:
                summary.without_id += 1
                await self.audit.write(self._row(
                    obj, Outcome.FAILED, error_class="MappingError",
                    error_message=f"record {index} of page {summary.pages + 1} has no external "
                                  f"id at {obj.pull_external_id!r}: not pulled"))
                continue
            message, was_inline = pull_message(self.ctx, obj, record, external_id,
                                               run_id=self.run_id, trigger=self.trigger,
                                               inline=inline)
            summary.by_reference += not was_inline
            messages.append(message)
        if messages:
            await self.publisher.publish_many(messages)
        summary.published += len(messages)

    def _row(self, obj: SyncObject, outcome: Outcome, **fields: Any) -> AuditRecord:
        instance = self.ctx.instance
        return AuditRecord(SERVICE, outcome, instance.org_id, instance.id, obj.entity, "pull",
                           ACTION, run_id=self.run_id, correlation_id=self.run_id, **fields)

    async def _audit(self, obj: SyncObject, outcome: Outcome, summary: ObjectSummary,
                     stage: str, error: SyncError | None = None) -> None:
        details: dict[str, Any] = {
            "stage": stage, "object": obj.name,
            "since": summary.since.isoformat() if summary.since else None}
        if stage != "started":
            details.update(pages=summary.pages, requests=summary.requests,
                           records=summary.records, published=summary.published,
                           by_reference=summary.by_reference, without_id=summary.without_id)
        if summary.resumed_at_page is not None:
            details["resumed_at_page"] = summary.resumed_at_page
        if summary.cursor is not None:
            details["cursor"] = summary.cursor.isoformat()
        fields: dict[str, Any] = {}
        if error is not None:
            details["stopped_at_page"] = summary.pages + (summary.resumed_at_page or 1)
            fields = {"error_class": type(error).__name__, "error_message": summary.error,
                      "http_status": error.http_status}
        if stage != "started":
            fields["duration_ms"] = summary.seconds * 1000
        await self.audit.write(self._row(obj, outcome, details=details, **fields))
