"""A run: one synchronization of an instance — push what the BSS changed, then pull.

:class:`RunExecutor` carries a ``runs`` row (created by the scheduler, ``bss-sync sync``
or ``bss-sync pull``) through its phases:

1. **push** — for each entity the instance pushes, the BSS records changed since the
   instance's push watermark (``cursors``, direction ``push``: the highest
   ``updatedAt`` durably queued), listed through the BSS API page by page, plus the
   records whose last push to the instance failed or died (the audit log's problem
   rows without a later success, and links with ``last_error``): one push message each
   (trigger ``schedule`` or ``manual``, the run's id), published with confirms. The
   watermark advances to a page's highest ``updatedAt`` only once every message of the
   page is confirmed; the next listing starts *at* it (inclusive), and the pusher's
   hashes turn what was already pushed into ``unchanged``.
2. the run **waits until every push message is settled** — a final audit row of the
   pusher for each message id — or ``run_push_timeout`` passes (audited, and the run
   goes on: the pull's conflict policy protects what is still in flight).
3. **pull** — the instance's discovery (``services.dispatcher.discovery``) tagged with
   the run's id, under the instance's discovery lock; the run then waits for its pull
   messages the same way, so that its counts are complete.

An executor holds an advisory lock (``shared.storage.locks``) on its *owner* token for
as long as it lives, and every run it executes names that token (``runs.owner``). A
run left ``running`` whose owner's lock anyone can take was abandoned by a process that
stopped (SIGKILL, a lost host): :func:`close_interrupted` marks it ``failed``
("interrupted"). Nothing it did is lost and nothing is skipped: its watermarks and pull
cursors only moved past what was queued, so the next run covers the rest. One lock per
process, not per run: a thousand instances due at 23:00 do not take a thousand
connections (at most :data:`MAX_CONCURRENT_RUNS` execute at once; the others wait,
owned).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import structlog

from services.dispatcher.discovery import Discovery, ObjectSummary, pulled_objects
from shared.audit import Outcome
from shared.audit.record import FINAL_OUTCOMES, AuditRecord
from shared.audit.writer import AuditWriter
from shared.bss.client import BssClient
from shared.credentials import resolve_credential
from shared.errors import ConfigurationError, SyncError
from shared.ids import new_message_id
from shared.logging import configure_logging, redact
from shared.messaging.connection import open_connection
from shared.messaging.envelope import SyncMessage, encode
from shared.messaging.publisher import OutgoingMessage, Publisher
from shared.messaging.topology import PUSH_EXCHANGE, sync_routing_key
from shared.runtime import InstanceContext, InstanceRegistry
from shared.schemas import ENTITIES
from shared.settings import Settings, get_settings
from shared.storage.cursors import CursorStore
from shared.storage.db import Database
from shared.storage.links import LinkStore
from shared.storage.locks import advisory_lock
from shared.storage.pull_cursors import PullCursorStore, discovery_lock
from shared.storage.runs import Run, RunStore

log = structlog.get_logger("dispatcher.run")

Direction = Literal["push", "pull", "both"]
#: Advisory-lock class of runs (the others: migrate, partitions, config_sync,
#: discoveries, redelivery).
RUN_LOCK_CLASS = 0x62737378
#: Runs one process executes at once.
MAX_CONCURRENT_RUNS = 4
#: How far back the push phase looks for pushes that failed or died.
RETRY_LOOKBACK = timedelta(days=30)
#: BSS records listed per page in the push phase.
PAGE_SIZE = 500
#: Seconds between two looks at the audit log while a phase settles.
SETTLE_POLL = 0.25
SERVICE = "dispatcher"
_FINAL = sorted(o.value for o in FINAL_OUTCOMES)
_SUCCESS = ("created", "updated", "deleted", "unchanged", "skipped")


@dataclasses.dataclass
class EntityProgress:
    """What a phase did for one entity (or, in the pull phase, one connector object)."""

    phase: str
    name: str
    queued: int = 0
    retried: int = 0
    error: str | None = None


@dataclasses.dataclass
class RunProgress:
    """What the run did so far; :class:`RunExecutor` calls ``on_change`` after each step."""

    run_id: str
    phase: str = "push"
    entities: list[EntityProgress] = dataclasses.field(default_factory=list)
    settled: dict[str, int] = dataclasses.field(default_factory=dict)
    expected: dict[str, int] = dataclasses.field(default_factory=dict)
    pull: list[ObjectSummary] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def entity(self, phase: str, name: str) -> EntityProgress:
        for item in self.entities:
            if item.phase == phase and item.name == name:
                return item
        item = EntityProgress(phase, name)
        self.entities.append(item)
        return item


class RunRefused(ConfigurationError):
    """The run cannot start: an unknown entity, an unknown or inactive instance, nothing
    it may do, another discovery of the instance running."""


@contextlib.asynccontextmanager
async def instance_session(
    instance_id: str, entity: str | None, settings: Settings,
) -> AsyncIterator[tuple[Database, InstanceRegistry, InstanceContext]]:
    """An open database, the instance registry and the usable instance ``instance_id``
    (``usable_instance``) for one manual run or discovery, all closed after the block."""
    db = Database.from_settings(settings, min_size=1, max_size=8)
    await db.open()
    registry = InstanceRegistry(db)
    try:
        yield db, registry, await usable_instance(registry, instance_id, entity)
    finally:
        await registry.aclose()
        await db.close()


async def usable_instance(registry: InstanceRegistry, instance_id: str,
                          entity: str | None) -> InstanceContext:
    """The active instance ``instance_id``; ``RunRefused`` saying why not (an unknown
    ``entity`` too)."""
    if entity is not None and entity not in ENTITIES:
        raise RunRefused(f"unknown entity {entity!r}; one of {', '.join(ENTITIES)}")
    ctx = await registry.get(instance_id)
    if ctx is None:
        raise RunRefused(f"no instance {instance_id!r} (see `bss-sync instances list`)")
    if not ctx.instance.enabled:
        raise RunRefused(f"instance {instance_id} is not active")
    return ctx


class RunExecutor:
    """See the module. One executor per process; ``execute`` one run at a time or several
    (each holds its own connections)."""

    def __init__(self, db: Database, settings: Settings, *,
                 registry: InstanceRegistry | None = None,
                 on_change: Callable[[RunProgress], None] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.runs = RunStore(db)
        self.registry = registry or InstanceRegistry(db)
        self.on_change = on_change or (lambda _progress: None)
        self.owner = str(uuid.uuid4())
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_RUNS)
        self._lock: contextlib.AbstractAsyncContextManager[bool] | None = None

    async def __aenter__(self) -> RunExecutor:
        """Take the owner lock (held until the executor closes)."""
        lock = advisory_lock(self.db, RUN_LOCK_CLASS, self.owner)
        if not await lock.__aenter__():
            raise RuntimeError("a fresh owner token is locked already")
        self._lock = lock
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            await lock.__aexit__(None, None, None)

    async def execute(self, run: Run, *, direction: Direction = "both",
                      entity: str | None = None, full: bool = False,
                      settle_pull: bool = True) -> RunProgress:
        """Carry ``run`` to its end (see the module); the progress it made. The run's row
        says ``completed`` or ``failed`` (with why) when this returns. ``settle_pull``
        false: done once the pull messages are published (``bss-sync pull``)."""
        progress = RunProgress(str(run.id), phase="pull" if direction == "pull" else "push")
        if self._lock is None:
            raise RuntimeError("use the executor as `async with RunExecutor(...)`")
        if run.owner != self.owner and not await self.runs.claim(run.id, self.owner):
            raise RunRefused(f"run {run.id} is not running any more")
        async with self._slots:
            try:
                await self._execute(run, progress, direction, entity, full, settle_pull)
            except Exception as exc:  # the row says why; the next run covers the rest
                error = _describe(exc)
                log.exception("run.failed", run_id=str(run.id), error=error)
                progress.errors.append(error)
                await self._finish(run, progress)
                if not isinstance(exc, SyncError | RunRefused):
                    raise
                return progress
        return progress

    async def _execute(self, run: Run, progress: RunProgress, direction: Direction,
                       entity: str | None, full: bool, settle_pull: bool) -> None:
        ctx = await self.registry.get(run.instance_id)
        if ctx is None or not ctx.instance.enabled:
            raise RunRefused(f"instance {run.instance_id} does not exist or is not active")
        connection = await open_connection(self.settings.amqp_url,
                                           f"bss-sync run {run.id}")
        try:
            publisher = await Publisher.open(connection)
            async with AuditWriter(self.db, self.settings.audit_batch_size,
                                   self.settings.audit_batch_interval) as audit:
                if direction in ("push", "both"):
                    await self._push_phase(run, ctx, progress, publisher, audit, entity, full)
                if direction in ("pull", "both"):
                    await self.runs.update(run.id, phase="pull", push_settled=True)
                    progress.phase = "pull"
                    self.on_change(progress)
                    await self._pull_phase(run, ctx, progress, publisher, audit, entity, full,
                                           settle_pull)
        finally:
            await connection.close()
        await self._finish(run, progress)

    # -- push ------------------------------------------------------------------------

    def pushed_entities(self, ctx: InstanceContext, entity: str | None) -> list[str]:
        """The entities this run pushes: the connector pushes them and the instance may."""
        names = [entity] if entity else list(ENTITIES)
        return [name for name in names
                if any(o.push for o in ctx.connector.objects_for(name))
                and ctx.instance.permitted_actions(name, "push")]

    async def _push_phase(self, run: Run, ctx: InstanceContext, progress: RunProgress,
                          publisher: Publisher, audit: AuditWriter, entity: str | None,
                          full: bool) -> None:
        token = (resolve_credential(self.settings.bss_api_token)
                 if self.settings.bss_api_token else None)
        cursors = CursorStore(self.db)
        queued: set[tuple[str, str]] = set()
        async with BssClient(self.settings.bss_api_url, token=token) as bss:
            for name in self.pushed_entities(ctx, entity):
                item = progress.entity("push", name)
                since = None if full else _instant(
                    await cursors.get(run.instance_id, name, "push"))
                cursor: str | None = None
                while True:
                    page = await bss.list_changed(run.org_id, name, since, limit=PAGE_SIZE,
                                                  cursor=cursor)
                    ids = [str(r["id"]) for r in page.items if r.get("id") is not None]
                    await publisher.publish_many(self._messages(run, name, ids))
                    queued.update((name, i) for i in ids)
                    item.queued += len(ids)
                    high = max((str(r["updatedAt"]) for r in page.items
                                if r.get("updatedAt")), default=None, key=_instant_key)
                    if high is not None:  # only now: every message of the page is confirmed
                        await cursors.set(run.instance_id, name, "push", high)
                    self.on_change(progress)
                    if not page.next_cursor:
                        break
                    cursor = page.next_cursor
        for name, record_ids in (await self._to_retry(run, ctx, entity)).items():
            again = [i for i in record_ids if (name, i) not in queued]
            await publisher.publish_many(self._messages(run, name, again))
            progress.entity("push", name).retried += len(again)
            queued.update((name, i) for i in again)
        progress.expected["push"] = len(queued)
        await self.runs.update(run.id, counts=_counts(progress))
        self.on_change(progress)
        await self._settle(run, progress, "pusher", "push", len(queued), audit)

    async def _to_retry(self, run: Run, ctx: InstanceContext,
                        entity: str | None) -> dict[str, list[str]]:
        """``{entity: [BSS id]}`` whose last push to the instance failed or died."""
        pushed = set(self.pushed_entities(ctx, entity))
        rows = await self.db.fetch(
            "SELECT DISTINCT p.entity, p.record_id FROM audit_log p"
            " WHERE p.outcome IN ('failed', 'dead') AND p.at >= %s AND p.instance_id = %s"
            "   AND p.direction = 'push' AND p.record_id IS NOT NULL"
            "   AND NOT EXISTS (SELECT 1 FROM audit_log s WHERE s.record_id = p.record_id"
            "     AND s.instance_id = p.instance_id AND s.entity = p.entity"
            "     AND s.direction = 'push' AND s.at > p.at AND s.outcome = ANY(%s))",
            (datetime.now(UTC) - RETRY_LOOKBACK, run.instance_id, list(_SUCCESS)))
        out: dict[str, list[str]] = {}
        for row in rows:
            if row["entity"] in pushed:
                out.setdefault(row["entity"], []).append(row["record_id"])
        for link in await LinkStore(self.db).failed(run.instance_id, entity):
            if link.entity in pushed and link.bss_id is not None:
                ids = out.setdefault(link.entity, [])
                if link.bss_id not in ids:
                    ids.append(link.bss_id)
        return out

    @staticmethod
    def _messages(run: Run, entity: str, record_ids: Iterable[str]) -> list[OutgoingMessage]:
        """One push message per record, tagged with the run (pure)."""
        now = datetime.now(UTC).isoformat()
        trigger = "schedule" if run.trigger == "schedule" else "manual"
        out = []
        for record_id in record_ids:
            message = SyncMessage(
                id=new_message_id(), direction="push", org_id=run.org_id,
                instance_id=run.instance_id, entity=entity, action="update",
                trigger=trigger, attempt=0, created_at=now, record_id=record_id,
                run_id=str(run.id), correlation_id=str(run.id))
            out.append(OutgoingMessage(
                PUSH_EXCHANGE, sync_routing_key(entity, "update", run.org_id, run.instance_id),
                encode(message), message_id=message.id, correlation_id=str(run.id)))
        return out

    # -- pull ------------------------------------------------------------------------

    async def _pull_phase(self, run: Run, ctx: InstanceContext, progress: RunProgress,
                          publisher: Publisher, audit: AuditWriter, entity: str | None,
                          full: bool, settle_pull: bool) -> None:
        async with discovery_lock(self.db, run.instance_id) as held:
            if not held:
                raise RunRefused(f"a discovery of instance {run.instance_id} is already "
                                 "running")
            discovery = Discovery(ctx, publisher=publisher, cursors=PullCursorStore(self.db),
                                  audit=audit, run_id=str(run.id))
            if not discovery.objects(entity):
                return
            for obj in discovery.objects(entity):
                summary = await discovery.discover(obj, full=full)
                progress.pull.append(summary)
                item = progress.entity("pull", summary.object)
                item.queued, item.error = summary.published, summary.error
                if summary.error:
                    progress.errors.append(f"{summary.object}: {summary.error}")
                self.on_change(progress)
        published = sum(s.published for s in progress.pull)
        progress.expected["pull"] = published
        await self.runs.update(run.id, counts=_counts(progress))
        if settle_pull:
            await self._settle(run, progress, "puller", "pull", published, audit)

    # -- settling --------------------------------------------------------------------

    async def _settle(self, run: Run, progress: RunProgress, service: str, phase: str,
                      expected: int, audit: AuditWriter) -> None:
        """Wait until ``expected`` messages of the run have a final audit row of
        ``service``, or the timeout passes (audited)."""
        deadline = time.monotonic() + self.settings.run_push_timeout
        while True:
            settled = await self.db.fetchval(
                "SELECT count(DISTINCT message_id) FROM audit_log WHERE run_id = %s"
                " AND service = %s AND outcome = ANY(%s)", (str(run.id), service, _FINAL))
            progress.settled[phase] = int(settled or 0)
            self.on_change(progress)
            if settled >= expected:
                return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(SETTLE_POLL)
        error = (f"{expected - settled} of {expected} {phase} messages were not settled after "
                 f"{self.settings.run_push_timeout:g} s; the run went on")
        progress.errors.append(error)
        await audit.write(AuditRecord(
            service=SERVICE, outcome=Outcome.FAILED, org_id=run.org_id,
            instance_id=run.instance_id, direction=phase, action="run",
            error_class="RunTimeout", error_message=error, run_id=str(run.id),
            details={"expected": expected, "settled": settled}))

    async def _finish(self, run: Run, progress: RunProgress) -> None:
        progress.phase = "done"
        await self.runs.update(
            run.id, status="failed" if progress.errors else "completed", phase="done",
            counts=_counts(progress), error="; ".join(progress.errors)[:2000] or None)
        self.on_change(progress)


async def close_interrupted(db: Database, instance_id: str | None = None) -> list[Run]:
    """Mark ``failed`` every run still ``running`` whose process stopped (nobody holds its
    owner's lock, or it has no owner); the runs so marked. The next run of each instance
    covers what it missed."""
    runs = RunStore(db)
    closed = []
    for run in await runs.running(instance_id):
        async with advisory_lock(db, RUN_LOCK_CLASS, run.owner or "") as free:
            if not free and run.owner:
                continue
            current = await runs.get(run.id)
            if current is None or current.status != "running":
                continue
            updated = await runs.update(
                run.id, status="failed", phase="done",
                error=f"interrupted in phase {run.phase}: the process running it stopped; "
                      "the next run covers what it missed")
            if updated is not None:
                closed.append(updated)
                log.warning("run.interrupted", run_id=str(run.id),
                            instance_id=run.instance_id, phase=run.phase)
    return closed


def _counts(progress: RunProgress) -> dict[str, int]:
    """The run's counters (``runs.counts``): ``push.queued``, ``push.retried`` (of them,
    the earlier failures), ``<phase>.settled``, ``pull.published``, ``pull.records``,
    ``pull.pages``, and ``<phase>.<entity or object>.queued`` for each."""
    counts: dict[str, int] = {}
    for item in progress.entities:
        counts[f"{item.phase}.{item.name}.queued"] = item.queued
        if item.phase == "push":
            counts["push.queued"] = counts.get("push.queued", 0) + item.queued + item.retried
            counts["push.retried"] = counts.get("push.retried", 0) + item.retried
    for field in ("published", "records", "pages", "requests", "deleted_ids", "without_id"):
        if progress.pull:
            counts[f"pull.{field}"] = sum(getattr(s, field) for s in progress.pull)
    if progress.pull:
        counts["pull.failed_objects"] = sum(not s.ok for s in progress.pull)
    for phase, value in progress.settled.items():
        counts[f"{phase}.settled"] = value
    return counts


def _instant(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _instant_key(value: str) -> datetime:
    return _instant(value) or datetime.min.replace(tzinfo=UTC)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyncError):
        return redact(f"{exc.error_class}: {exc}")[:1000]
    if isinstance(exc, RunRefused):
        return str(exc)
    return f"{type(exc).__name__}: {redact(str(exc))[:500]}"


async def run_now(instance_id: str, *, direction: Direction = "both",
                  entity: str | None = None, full: bool = False, run_id: str | None = None,
                  settings: Settings | None = None,
                  on_change: Callable[[RunProgress], None] | None = None,
                  on_start: Callable[[Run], None] | None = None) -> tuple[Run, RunProgress]:
    """A manual run of one instance, here and now (``bss-sync sync``): the run's final row
    and its progress. Raises ``RunRefused`` (unknown or inactive instance, nothing to do)
    and ``InfrastructureError``."""
    settings = settings or get_settings()
    async with instance_session(instance_id, entity, settings) as (db, registry, ctx):
        await close_interrupted(db, instance_id)
        async with RunExecutor(db, settings, registry=registry,
                               on_change=on_change) as executor:
            pushes = direction != "pull" and executor.pushed_entities(ctx, entity)
            pulls = direction != "push" and pulled_objects(ctx, entity)
            if not pushes and not pulls:
                what = f"{entity} records" if entity else "records"
                raise RunRefused(f"instance {instance_id} may {_verb(direction)} no {what}")
            run = await RunStore(db).create(ctx.instance.org_id, instance_id, "manual",
                                            owner=executor.owner,
                                            run_id=uuid.UUID(run_id) if run_id else None)
            assert run is not None
            if on_start is not None:
                on_start(run)
            progress = await executor.execute(run, direction=direction, entity=entity,
                                              full=full)
            final = await RunStore(db).get(run.id)
            assert final is not None
            return final, progress


def _verb(direction: Direction) -> str:
    return {"push": "push", "pull": "pull", "both": "push or pull"}[direction]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.dispatcher.run``: one manual run in the foreground (what
    ``bss-sync sync`` without ``--wait`` starts, detached)."""
    parser = argparse.ArgumentParser(prog="python -m services.dispatcher.run",
                                     description="one manual run of an instance")
    parser.add_argument("--instance", required=True)
    parser.add_argument("--entity")
    parser.add_argument("--direction", choices=("push", "pull", "both"), default="both")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--run-id")
    args = parser.parse_args(argv)
    configure_logging(get_settings().log_level, service="dispatcher")
    final, _progress = asyncio.run(run_now(args.instance, direction=args.direction,
                                           entity=args.entity, full=args.full,
                                           run_id=args.run_id))
    return 0 if final.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RUN_LOCK_CLASS", "Direction", "RunExecutor", "RunProgress", "RunRefused",
           "close_interrupted", "run_now"]
