"""A manual pull discovery of one instance: the bootstrap behind ``bss-sync pull``.

A run of direction ``pull`` (``services.dispatcher.run.RunExecutor``): a ``runs`` row
(trigger ``manual``, phase ``pull``) whose id the pull messages and audit rows carry,
the instance's discovery lock held (one discovery of an instance at a time across
processes), :class:`~services.dispatcher.discovery.Discovery` run; it does not wait for
the puller.

A discovery killed mid-way (its process gone: SIGKILL, a lost host) is continued by
the next discovery of the instance — ``bss-sync pull`` again — from each object's
first page not wholly confirmed (the cursors' ``resume``, in PostgreSQL), or by the
pull phase of the instance's next run; the killed one's ``runs`` row is marked
``failed`` ("interrupted") as soon as anyone looks (``close_interrupted``).

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

from services.dispatcher.discovery import ObjectSummary, pulled_objects
from services.dispatcher.run import (
    RunExecutor,
    RunRefused,
    close_interrupted,
    instance_session,
)
from shared.logging import configure_logging
from shared.runtime import InstanceContext, InstanceRegistry
from shared.settings import Settings, get_settings
from shared.storage.db import Database
from shared.storage.pull_cursors import discovery_lock
from shared.storage.runs import RunStore

#: The discovery cannot start: unknown entity, unknown or disabled instance, nothing to
#: pull, or another discovery of the instance running.
DiscoveryRefused = RunRefused


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
    async with instance_session(instance_id, entity, settings) as (db, registry, ctx):
        async with discovery_lock(db, instance_id) as free:  # a look: the run takes it
            if not free:
                raise DiscoveryRefused(f"a discovery of instance {instance_id} is already "
                                       "running")
        return await _discover(db, registry, settings, ctx, entity, full, run_id)


async def _discover(db: Database, registry: InstanceRegistry, settings: Settings,
                    ctx: InstanceContext, entity: str | None, full: bool,
                    run_id: str | None) -> PullReport:
    instance = ctx.instance
    runs = RunStore(db)
    # The instance's earlier runs left running by a process that stopped: their cursors'
    # ``resume`` is where this one continues from.
    await close_interrupted(db, instance.id)
    if not pulled_objects(ctx, entity):
        what = f"{entity} records" if entity else "records"
        raise DiscoveryRefused(
            f"instance {instance.id} may pull no {what}: its connector has no "
            "object with pull.list whose entity its permissions let it pull")
    async with RunExecutor(db, settings, registry=registry) as executor:
        run = await runs.create(instance.org_id, instance.id, "manual", owner=executor.owner,
                                run_id=uuid.UUID(run_id) if run_id else None)
        assert run is not None
        progress = await executor.execute(run, direction="pull", entity=entity, full=full,
                                          settle_pull=False)
    return PullReport(str(run.id), instance.id, progress.pull)


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
