"""The puller's message handler: one pull message → one ``RecordPull``.

Checks that can be answered without the record come first (a push message on the
pull queue, unknown or inactive instance, another organization's instance, an
entity the connector does not pull, no pull permission): those messages are
audited ``skipped`` and acked. Parents pulled first on a record's behalf (a
``$bssId`` reference not linked yet) get audit rows of their own: message id derived
from the child's, trigger ``dependency``, the child's id as correlation id. The
rest is ``RecordPull``'s (services.puller.pull), through the ports of
``services.puller.ports``: ``__main__`` builds the real adapters, the unit tests
in-memory fakes.
"""

from __future__ import annotations

from services.puller.outcome import PullOutcome
from services.puller.ports import AuditLog, BssWrites, Instances, Links, PullSource
from services.puller.pull import RecordPull, parent_pull_message_id
from shared.audit import AuditRecord, Outcome
from shared.connector import SyncObject
from shared.errors import RecordBusy, SyncError
from shared.logging import redact
from shared.message_context import MessageContext
from shared.messaging.codec import HandlerResult, InboundMessage
from shared.messaging.envelope import SyncMessage
from shared.messaging.topology import PULLER
from shared.runtime.registry import instance_for

SERVICE = PULLER  # the service of its audit rows


def _result(outcome: PullOutcome) -> HandlerResult:
    return HandlerResult(Outcome(outcome.outcome), record_id=outcome.record_id,
                         external_id=outcome.external_id, http_status=outcome.http_status,
                         details=outcome.details)


def _skipped(reason: str) -> HandlerResult:
    return HandlerResult(Outcome.SKIPPED, details={"reason": reason})


class PullHandler:
    """Handles ``sync.pull`` messages (the adapters are given: ``__main__`` builds them)."""

    def __init__(self, registry: Instances, links: Links, bss: BssWrites,
                 audit: AuditLog | None = None) -> None:
        self.registry = registry
        self.links = links
        self.bss = bss
        self.audit = audit  # None: no parent is pulled first (DependencyPending instead)

    async def aclose(self) -> None:
        """Close the HTTP clients (called by the runner at shutdown)."""
        await self.registry.aclose()
        await self.bss.aclose()

    async def __call__(self, message: InboundMessage[SyncMessage]) -> HandlerResult:
        m = message.payload
        if m.direction != "pull":
            return _skipped(f"a {m.direction} message on the pull queue")
        ctx = await instance_for(self.registry, m.instance_id, m.org_id)
        if isinstance(ctx, str):
            return _skipped(ctx)
        objects = [o for o in ctx.connector.objects_for(m.entity) if o.pull_body is not None]
        if not objects:
            return _skipped(f"connector {ctx.instance.connector_id} does not pull {m.entity}")
        if not ctx.instance.permitted_actions(m.entity, "pull"):
            return _skipped(f"the instance may not pull {m.entity} records")
        pull = RecordPull(ctx=ctx, obj=objects[0], org_id=m.org_id, message_id=m.id,
                          action=m.action, links=self.links, bss=self.bss, record=m.record,
                          external_id=m.external_id,
                          parents=self if self.audit is not None else None)
        return _result(await pull.run())

    async def pull_parent(self, ctx: PullSource, obj: SyncObject, external_id: str,
                          org_id: str, depth: int, *, child_message_id: str) -> PullOutcome:
        """Pull a record a child refers to (read with ``pull.read``), and audit it as its
        own outcome. Raises what its pull raises (``RecordBusy``: another delivery is
        pulling it, nothing happened; other errors after their ``failed`` row)."""
        assert self.audit is not None
        message_id = parent_pull_message_id(ctx.instance.id, obj.entity, external_id,
                                            child_message_id, depth)
        pull = RecordPull(ctx=ctx, obj=obj, org_id=org_id, message_id=message_id,
                          action="upsert", links=self.links, bss=self.bss, record=None,
                          external_id=external_id, parents=self, depth=depth)
        context = MessageContext(message_id, org_id, ctx.instance.id, obj.entity, "pull",
                                 "dependency", external_id=external_id,
                                 correlation_id=child_message_id)
        record = AuditRecord.for_message(SERVICE, Outcome.SKIPPED, context)
        try:
            outcome = await pull.run()
        except RecordBusy:
            raise
        except SyncError as exc:
            record.outcome = Outcome.FAILED
            record.error_class = exc.error_class
            record.error_message = redact(str(exc))
            record.http_status = exc.http_status
            await self.audit.write(record)
            raise
        record.outcome = Outcome(outcome.outcome)
        record.record_id = outcome.record_id
        record.http_status = outcome.http_status
        record.details = {**outcome.details, "pulledFirstFor": "a record referring to it"}
        await self.audit.write(record)
        return outcome
