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
and the puller reads the record itself. A record the object's ``pull.deleted``
expression calls deleted (a tombstone) is published like any other: the puller
decides, from the instance's pull permissions, whether it deletes the BSS record.

An object with ``pull.deletedList`` (an operation listing the ids of deleted records)
has that listing walked after ``pull.list``, the same way (pagination, incremental,
its own cursor, stored as ``<object>#deleted``): one message per listed id, action
``delete``, carrying the external id only.

Audit rows (service ``dispatcher``, direction ``pull``, action ``discover``): one
``dispatched`` row when an object's listing starts (``details.stage = started``), one
``dispatched`` row when it finishes (``finished``, with counts), or one ``failed`` row
with the error and where it stopped (listing, page number, records published) — and
one ``failed`` row per listed record that has no external id.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from services.dispatcher.listing import (
    Lister,
    ListingRetry,
    changed_since,
    highest_time,
    page_state,
    since_of,
)
from shared.audit import AuditRecord, Outcome
from shared.connector import paging
from shared.connector.document import DEFAULT_EXTERNAL_ID, CallSpec, SyncObject
from shared.connector.paging import PageRequest
from shared.connector.source import resolve_pointer
from shared.errors import SyncError
from shared.ids import new_message_id
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
#: The action of a message naming a record the third party lists as deleted.
DELETE_ACTION = "delete"
#: Suffix of the cursor of an object's ``pull.deletedList``.
DELETED_CURSOR_SUFFIX = paging.DELETED_CURSOR_SUFFIX
#: Above this, a message carries the external id only (docs/decisions.md).
MAX_INLINE_BYTES = 64 * 1024
#: How far before the stored cursor an incremental listing starts (docs/decisions.md).
OVERLAP = paging.OVERLAP


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
    deleted_ids: int = 0  # delete messages published from pull.deletedList
    before_since: int = 0  # listed, dropped: changed before since (incremental.in client)
    listing: str = "list"  # the listing walked last: list, or deletedList
    at_page: int = 1  # the page of that listing being listed (where a failure stopped)
    cursor: datetime | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def pull_message(ctx: InstanceContext, obj: SyncObject, record: dict[str, Any] | None,
                 external_id: str, *, run_id: str | None, trigger: str,
                 inline: bool, action: str = PULL_ACTION) -> tuple[OutgoingMessage, bool]:
    """The pull message of one listed record (pure) and whether its payload is inline.

    ``action`` is :data:`PULL_ACTION`, or :data:`DELETE_ACTION` for an id listed by
    ``pull.deletedList`` (``record`` is then ``None``: the message names the record)."""
    instance = ctx.instance
    inline = inline and record is not None
    message = SyncMessage(
        id=new_message_id(), direction="pull", org_id=instance.org_id,
        instance_id=instance.id, entity=obj.entity, action=action, trigger=trigger,
        attempt=0, created_at=datetime.now(UTC).isoformat(), external_id=external_id,
        record=record if inline else None, run_id=run_id, correlation_id=run_id)
    body = encode(message)
    if inline and len(body) > MAX_INLINE_BYTES:
        message.record = None
        body = encode(message)
        inline = False
    routing_key = sync_routing_key(obj.entity, action, instance.org_id, instance.id)
    return OutgoingMessage(PULL_EXCHANGE, routing_key, body, message_id=message.id,
                           correlation_id=run_id), inline


def pulled_objects(ctx: InstanceContext, entity: str | None = None) -> list[SyncObject]:
    """The objects ``ctx``'s instance pulls (of ``entity`` when given): a ``pull.list``
    and a pull permission for the object's entity."""
    return [o for o in ctx.connector.objects.values()
            if o.pull_list is not None and (entity is None or o.entity == entity)
            and ctx.instance.permitted_actions(o.entity, "pull")]


def external_id_of(obj: SyncObject, record: Any, pointer: str | None = None) -> str | None:
    """The record's external id (at ``pointer``, default ``pull.externalId``) as text,
    ``None`` when missing."""
    try:
        value = resolve_pointer(record, obj.pull_external_id if pointer is None else pointer)
    except (KeyError, ValueError):
        return None
    if value is None or isinstance(value, dict | list | bool) or value == "":
        return None
    text = str(value)
    return text if len(text) <= 1000 else None


@dataclasses.dataclass(frozen=True)
class _Walk:
    """One listing of an object: ``pull.list``, or ``pull.deletedList`` (``deletes``)."""

    name: str
    call: CallSpec
    cursor: str  # the pull_cursors row it advances
    deletes: bool


@dataclasses.dataclass(frozen=True)
class _Start:
    since: datetime | None
    page: PageRequest | None  # a stopped listing's next page, else None (the first)
    high: datetime | None


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
        return pulled_objects(self.ctx, entity)

    async def run(self, entity: str | None = None, *, full: bool = False) -> list[ObjectSummary]:
        """Discover every pulled object in turn; one object's failure (audited) does not
        stop the others. Raises ``InfrastructureError`` when the audit cannot be written."""
        return [await self.discover(obj, full=full) for obj in self.objects(entity)]

    async def discover(self, obj: SyncObject, *, full: bool = False) -> ObjectSummary:
        """List ``obj`` (``pull.list``, then ``pull.deletedList`` when declared) and
        publish its records; the summary says how far it went."""
        started = time.monotonic()
        summary = ObjectSummary(obj.name, obj.entity)
        assert obj.pull_list is not None
        walks = [_Walk("list", obj.pull_list, obj.name, deletes=False)]
        if obj.pull_deleted_list is not None:
            walks.append(_Walk("deletedList", obj.pull_deleted_list,
                               obj.name + DELETED_CURSOR_SUFFIX, deletes=True))
        first = await self._start(walks[0], full)
        summary.since = first.since
        if first.page is not None:
            summary.resumed_at_page = first.page.number
        await self._audit(obj, Outcome.DISPATCHED, summary, "started")
        try:
            for walk in walks:
                start = first if walk is walks[0] else await self._start(walk, full)
                high = await self._walk(obj, walk, start, summary)
                if not walk.deletes:
                    summary.cursor = high
        except SyncError as exc:
            summary.error = redact(str(exc))
            summary.seconds = time.monotonic() - started
            log.warning("discovery.failed", instance_id=self.ctx.instance.id, object=obj.name,
                        listing=summary.listing, page=summary.at_page, error=summary.error)
            await self._audit(obj, Outcome.FAILED, summary, "failed", error=exc)
            return summary
        summary.seconds = time.monotonic() - started
        await self._audit(obj, Outcome.DISPATCHED, summary, "finished")
        return summary

    async def _walk(self, obj: SyncObject, walk: _Walk, start: _Start,
                    summary: ObjectSummary) -> datetime | None:
        """Walk one listing from ``start``, publishing each page and storing where the
        listing continues once the page is confirmed; its cursor is advanced at the
        end. Returns the highest modification time seen."""
        summary.listing = walk.name
        summary.at_page = start.page.number if start.page is not None else 1
        lister = Lister(self.ctx.client, walk.call, self.ctx.transform_context(None),
                        retry=self.retry)
        high = start.high
        try:
            async for page in lister.pages(start.since, start.page):
                summary.records += len(page.records)
                changed = changed_since(walk.call, page.records, start.since)
                summary.before_since += len(page.records) - len(changed)
                await self._publish(obj, walk, changed, page.request.number, summary)
                high = highest_time(walk.call, page.records, high)
                summary.pages += 1
                if page.following is not None:
                    summary.at_page = page.following.number
                    await self.cursors.save_progress(
                        self.ctx.instance.id, walk.cursor, resume=page_state(page.following),
                        since=start.since, high=high, pages=summary.pages)
        finally:
            summary.requests += lister.requests
        await self.cursors.finish(self.ctx.instance.id, walk.cursor, high)
        return high

    async def _start(self, walk: _Walk, full: bool) -> _Start:
        """Where ``walk``'s listing starts: from scratch (``full``), at the page a stopped
        listing left, or at its stored cursor minus the overlap."""
        if full:
            return _Start(None, None, None)
        cursor = await self.cursors.get(self.ctx.instance.id, walk.cursor)
        if cursor.resume is not None:
            since, page = paging.restart(walk.call, cursor.resume, cursor.listing_since,
                                         cursor.listing_high, self.overlap)
            return _Start(since, page, cursor.listing_high)
        return _Start(since_of(cursor.value, self.overlap), None, None)

    async def _publish(self, obj: SyncObject, walk: _Walk, records: list[Any], number: int,
                       summary: ObjectSummary) -> None:
        inline = obj.pull_read is None and not walk.deletes
        pointer = walk.call.option("externalId", DEFAULT_EXTERNAL_ID) if walk.deletes else None
        action = DELETE_ACTION if walk.deletes else PULL_ACTION
        messages = []
        for index, record in enumerate(records):
            external_id = (external_id_of(obj, record, pointer)
                           if walk.deletes or isinstance(record, dict) else None)
            if external_id is None:
                summary.without_id += 1
                where = pointer if walk.deletes else obj.pull_external_id
                await self.audit.write(self._row(
                    obj, Outcome.FAILED, error_class="MappingError",
                    error_message=f"{walk.name}: record {index} of page {number} "
                                  f"has no external id at {where!r}: not pulled"))
                continue
            message, was_inline = pull_message(
                self.ctx, obj, None if walk.deletes else record, external_id,
                run_id=self.run_id, trigger=self.trigger, inline=inline, action=action)
            summary.by_reference += not was_inline and not walk.deletes
            messages.append(message)
        if messages:
            await self.publisher.publish_many(messages)
        summary.published += len(messages)
        if walk.deletes:
            summary.deleted_ids += len(messages)

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
            if obj.pull_deleted_list is not None:
                details["deleted_ids"] = summary.deleted_ids
            if summary.before_since:
                details["before_since"] = summary.before_since
        if summary.resumed_at_page is not None:
            details["resumed_at_page"] = summary.resumed_at_page
        if summary.cursor is not None:
            details["cursor"] = summary.cursor.isoformat()
        fields: dict[str, Any] = {}
        if error is not None:
            details["stopped_at_page"] = summary.at_page
            details["stopped_in"] = summary.listing
            fields = {"error_class": type(error).__name__, "error_message": summary.error,
                      "http_status": error.http_status}
        if stage != "started":
            fields["duration_ms"] = summary.seconds * 1000
        await self.audit.write(self._row(obj, outcome, details=details, **fields))
