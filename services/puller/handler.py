"""The puller's message handler: one pull message → one ``RecordPull``.

Checks that can be answered without the record come first (a push message on the
pull queue, unknown or inactive instance, another organization's instance, an
entity the connector does not pull, no pull permission): those messages are
audited ``skipped`` and acked. The rest is ``RecordPull``'s (services.puller.pull),
through the ports of ``services.puller.ports``: ``__main__`` builds the real
adapters, the unit tests in-memory fakes.
"""

from __future__ import annotations

from services.puller.outcome import PullOutcome
from services.puller.ports import BssWrites, Instances, Links
from services.puller.pull import RecordPull
from shared.audit import Outcome
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

    def __init__(self, registry: Instances, links: Links, bss: BssWrites) -> None:
        self.registry = registry
        self.links = links
        self.bss = bss

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
                          external_id=m.external_id)
        return _result(await pull.run())
