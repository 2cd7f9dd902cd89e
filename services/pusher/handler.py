"""The pusher's message handler: one push message → one ``RecordPush``.

Checks that can be answered without the record come first (unknown or inactive
instance, an entity the connector does not push, no push permission): those
messages are audited ``skipped`` and acked. Parents pushed first on a record's
behalf get audit rows of their own (message id derived from the child's, the
child's id as correlation id). A parent's row lost with its process is written by
the child's redelivery, which pushes that parent again and finds its own mark.

The handler and ``RecordPush`` reach PostgreSQL, the BSS, the third party and the
clock through the ports of ``services.pusher.ports``; ``__main__`` builds the real
adapters, the unit tests in-memory fakes.
"""

from __future__ import annotations

from services.pusher.outcome import PushOutcome
from services.pusher.ports import (
    SYSTEM_CLOCK,
    AuditLog,
    BssRecords,
    Clock,
    Instances,
    Links,
    PushTarget,
)
from services.pusher.push import RecordPush, parent_message_id
from shared.audit import AuditRecord, Outcome
from shared.errors import RecordBusy, SyncError
from shared.message_context import MessageContext
from shared.messaging.codec import HandlerResult, InboundMessage
from shared.messaging.envelope import SyncMessage
from shared.messaging.topology import PUSHER
from shared.runtime.registry import instance_for

SERVICE = PUSHER  # the service of its audit rows


def _result(outcome: PushOutcome) -> HandlerResult:
    return HandlerResult(Outcome(outcome.outcome), external_id=outcome.external_id,
                         http_status=outcome.http_status, details=outcome.details)


def _skipped(reason: str) -> HandlerResult:
    return HandlerResult(Outcome.SKIPPED, details={"reason": reason})


class PushHandler:
    """Handles ``sync.push`` messages (the adapters are given: ``__main__`` builds them)."""

    def __init__(self, registry: Instances, links: Links, bss: BssRecords, audit: AuditLog,
                 *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.registry = registry
        self.links = links
        self.bss = bss
        self.audit = audit
        self.clock = clock

    async def aclose(self) -> None:
        """Close the HTTP clients (called by the runner at shutdown)."""
        await self.registry.aclose()
        await self.bss.aclose()

    async def __call__(self, message: InboundMessage[SyncMessage]) -> HandlerResult:
        m = message.payload
        if m.direction != "push":
            return _skipped(f"a {m.direction} message on the push queue")
        ctx = await instance_for(self.registry, m.instance_id, m.org_id)
        if isinstance(ctx, str):
            return _skipped(ctx)
        objects = ctx.connector.objects_for(m.entity)
        if not objects or not objects[0].push:
            return _skipped(f"connector {ctx.instance.connector_id} does not push {m.entity}")
        if not ctx.instance.permitted_actions(m.entity, "push"):
            return _skipped(f"the instance may not push {m.entity} records")
        assert m.record_id is not None  # the envelope schema requires it for push
        push = RecordPush(ctx=ctx, obj=objects[0], org_id=m.org_id, record_id=m.record_id,
                          message_id=m.id, links=self.links, bss=self.bss, parents=self,
                          clock=self.clock, attempt=m.attempt, action=m.action)
        return _result(await push.run())

    async def push_parent(self, ctx: PushTarget, entity: str, record_id: str, org_id: str,
                          depth: int, *, child_message_id: str) -> PushOutcome:
        """Push a record a child depends on, and audit it as its own outcome."""
        objects = ctx.connector.objects_for(entity)
        message_id = parent_message_id(ctx.instance.id, entity, record_id, child_message_id,
                                       depth)
        if not objects or not objects[0].push:
            return PushOutcome("skipped", details={
                "reason": f"connector {ctx.instance.connector_id} does not push {entity}"})
        push = RecordPush(ctx=ctx, obj=objects[0], org_id=org_id, record_id=record_id,
                          message_id=message_id, links=self.links, bss=self.bss, parents=self,
                          depth=depth, clock=self.clock)
        context = MessageContext(message_id, org_id, ctx.instance.id, entity, "push",
                                 "dependency", record_id, correlation_id=child_message_id)
        record = AuditRecord.for_message(SERVICE, Outcome.SKIPPED, context)
        try:
            outcome = await push.run()
        except RecordBusy:
            raise  # nothing happened to the parent: another delivery is pushing it
        except SyncError as exc:
            record.outcome = Outcome.FAILED
            record.error_class = exc.error_class
            record.error_message = str(exc)
            record.http_status = exc.http_status
            await self.audit.write(record)
            raise
        if "recovered" in outcome.details and await self.audit.final_outcome(
                message_id) not in (None, Outcome.DEAD):
            return outcome  # pushed by an earlier delivery of the child, and audited then
        record.outcome = Outcome(outcome.outcome)
        record.external_id = outcome.external_id
        record.http_status = outcome.http_status
        record.details = {**outcome.details, "pushedFirstFor": "a record depending on it"}
        await self.audit.write(record)
        return outcome
