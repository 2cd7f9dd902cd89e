"""A manual pull discovery of one instance: the bootstrap behind ``bss-sync pull``.

Builds every dependency (PostgreSQL, a confirm-mode publisher on RabbitMQ, the audit
writer, the instance registry), records a ``runs`` row (trigger ``manual``, phase
``pull``) whose id the pull messages and audit rows carry, holds the instance's
discovery lock (one discovery of an instance at a time across processes), and runs
:class:`~services.dispatcher.discovery.Discovery`.

A discovery killed mid-way (its process gone: SIGKILL, a lost host) is continued by
the next discovery of the instance — ``bss-sync pull`` again — from each object's
first page not wholly confirmed (the cursors' ``resume``, in PostgreSQL); that run
marks the killed one's ``runs`` row ``failed`` ("interrupted"). Nothing resumes it
by itself: restarting a service does not start a discovery.

``python -m services.dispatcher.pull --instance ID [--entity E] [--full]`` runs one
discovery in the foreground; ``bss-sync pull`` without ``--wait`` starts it so, detached.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import uuid
from collections.abc import Sequence

from services.dispatcher.discovery import Discovery, ObjectSummary
from shared.audit.writer import AuditWriter
from shared.errors import ConfigurationError
from shared.logging import configure_logging
from shared.messaging.connection import open_connection
from shared.messaging.publisher import Publisher
from shared.runtime import InstanceContext, InstanceRegistry
from shared.schemas import ENTITIES
from shared.settings import Settings, get_settings
from shared.storage.db import Database
from shared.storage.pull_cursors import PullCursorStore, discovery_lock
from shared.storage.runs import RunStore


class DiscoveryRefused(ConfigurationError):
    """The discovery cannot start: unknown or disabled instance, nothing to pull, or
    another discovery of the instance running."""


@dataclasses.dataclass(frozen=True)
class PullReport:
    """What one manual discovery did."""

    run_id: str
    instance_id: str
    objects: list[ObjectSummary]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.objects)

    def counts(self) -> dict[str, int]:
        return {"objects": len(self.objects),
                "failed_objects": sum(not o.ok for o in self.objects),
                "pages": sum(o.pages for o in self.objects),
                "requests": sum(o.requests for o in self.objects),
                "records": sum(o.records for o in self.objects),
                "published": sum(o.published for o in self.objects),
                "by_reference": sum(o.by_reference for o in self.objects),
                "without_id": sum(o.without_id for o in self.objects),
                "deleted_ids": sum(o.deleted_ids for o in self.objects)}


async def run_pull(instance_id: str, *, entity: str | None = None, full: bool = False,
                   run_id: str | None = None, settings: Settings | None = None) -> PullReport:
    """Discover what changed on the instance's third party and publish it on
    ``sync.pull``. Raises ``DiscoveryRefused``, ``ConfigurationError`` (the instance's
    connector or credentials) and ``InfrastructureError`` (PostgreSQL, RabbitMQ)."""
    settings = settings or get_settings()
    if entity is not None and entity not in ENTITIES:
        raise DiscoveryRefused(f"unknown entity {entity!r}; one of {', '.join(ENTITIES)}")
    db = Database.from_settings(settings, min_size=1, max_size=4)
    await db.open()
    registry = InstanceRegistry(db)
    try:
        ctx = await registry.get(instance_id)
        if ctx is None:
            raise DiscoveryRefused(f"no instance {instance_id!r} (see `bss-sync instances list`)")
        if not ctx.instance.enabled:
            raise DiscoveryRefused(f"instance {instance_id} is not active")
        async with discovery_lock(db, instance_id) as held:
            if not held:
                raise DiscoveryRefused(f"a discovery of instance {instance_id} is already "
                                       "running")
            return await _discover(db, settings, ctx, entity, full, run_id)
    finally:
        await registry.aclose()
        await db.close()


async def _discover(db: Database, settings: Settings, ctx: InstanceContext,
                    entity: str | None, full: bool, run_id: str | None) -> PullReport:
    instance = ctx.instance
    runs = RunStore(db)
    run = await runs.create(instance.org_id, instance.id, "manual",
                            run_id=uuid.UUID(run_id) if run_id else None)
    assert run is not None
    await runs.update(run.id, phase="pull", push_settled=True)
    await _close_interrupted(runs, instance.id, run.id)
    connection = await open_connection(settings.amqp_url, "bss-sync dispatcher pull")
    report = PullReport(str(run.id), instance.id, [])
    try:
        publisher = await Publisher.open(connection)
        async with AuditWriter(db, settings.audit_batch_size,
                               settings.audit_batch_interval) as audit:
            discovery = Discovery(ctx, publisher=publisher, cursors=PullCursorStore(db),
                                  audit=audit, run_id=str(run.id))
            if not discovery.objects(entity):
                what = f"{entity} records" if entity else "records"
                await runs.update(run.id, status="cancelled", phase="done",
                                  error=f"the instance may pull no {what}")
                raise DiscoveryRefused(
                    f"instance {instance.id} may pull no {what}: its connector has no "
                    "object with pull.list whose entity its permissions let it pull")
            report.objects.extend(await discovery.run(entity, full=full))
    finally:
        await connection.close()
    errors = [f"{o.object}: {o.error}" for o in report.objects if o.error]
    await runs.update(run.id, status="completed" if report.ok else "failed", phase="done",
                      counts=report.counts(), error="; ".join(errors)[:2000] or None)
    return report


async def _close_interrupted(runs: RunStore, instance_id: str, run_id: uuid.UUID) -> None:
    """Mark ``failed`` the instance's earlier runs still ``running`` in phase ``pull``:
    their discovery process died (killed, host lost) without finishing — none can be
    running, this one holds the discovery lock. Their cursors' ``resume`` is what this
    run continues from."""
    for stale in await runs.running(instance_id):
        if stale.id != run_id and stale.phase == "pull":
            await runs.update(stale.id, status="failed", phase="done",
                              error=f"interrupted: the discovery stopped before finishing; "
                                    f"run {run_id} continued where it stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.dispatcher.pull",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--instance", required=True)
    parser.add_argument("--entity")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--run-id")
    args = parser.parse_args(argv)
    configure_logging(get_settings().log_level, service="dispatcher")
    report = asyncio.run(run_pull(args.instance, entity=args.entity, full=args.full,
                                  run_id=args.run_id))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
