"""The dispatcher's scheduler: starts each instance's scheduled run once per slot.

Every ``interval`` seconds (and at the next slot, whichever comes first) it reads the
schedule in force for every active instance (``shared.storage.schedules``: instance,
then organization, then installation, then ``0 23 * * *``) and asks
``shared.scheduling.due_slot`` for the slot to run now. A due slot becomes a ``runs``
row through ``RunStore.create(..., scheduled_for=slot)``: the ``runs_one_per_slot``
constraint lets one dispatcher win, however many replicas race, and only the winner
launches the run. The slot, not the moment a dispatcher noticed it, is the run's
identity: slots missed while every dispatcher was down are caught up once (the
latest), and a daylight-saving change neither skips nor doubles a run
(``shared.scheduling``).

The clock is a port (``now``), so tests drive the scheduler through any instant
without sleeping until a minute boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from psycopg.types.json import Jsonb

from services.dispatcher.run import RunExecutor, close_interrupted
from shared.logging import redact
from shared.messaging.redelivery import redeliver
from shared.messaging.runner import RuntimeDeps
from shared.scheduling import due_slot, next_slot
from shared.storage.db import Database
from shared.storage.runs import Run, RunStore
from shared.storage.schedules import EffectiveSchedule, ScheduleStore

log = structlog.get_logger("dispatcher.schedule")

#: Seconds between two looks at the schedules (a changed schedule is seen this late).
DEFAULT_INTERVAL = 30.0

Launch = Callable[[Run], Awaitable[None]]


def system_now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class Started:
    """A run this scheduler started, for the slot it was due."""

    run: Run
    schedule: EffectiveSchedule


class Scheduler:
    """See the module. ``await tick()`` once, or ``await run(stop)`` until ``stop`` is set."""

    def __init__(self, schedules: ScheduleStore, runs: RunStore, launch: Launch, *,
                 now: Callable[[], datetime] = system_now,
                 interval: float = DEFAULT_INTERVAL, owner: str | None = None) -> None:
        self.schedules = schedules
        self.runs = runs
        self.launch = launch
        self.now = now
        self.interval = interval
        self.owner = owner

    async def tick(self) -> list[Started]:
        """Start every run due now that no other dispatcher started; the runs started."""
        now = self.now()
        last = await self.runs.last_slots()
        started: list[Started] = []
        for schedule in await self.schedules.effective_all():
            if not schedule.enabled:
                continue
            try:
                slot = due_slot(schedule.cron, schedule.timezone, now,
                                last_slot=last.get(schedule.instance_id), since=schedule.since)
            except ValueError as exc:  # a time zone this machine does not know
                log.error("schedule.unusable", instance_id=schedule.instance_id,
                          cron=schedule.cron, timezone=schedule.timezone, error=str(exc))
                continue
            if slot is None:
                continue
            run = await self.runs.create(schedule.org_id, schedule.instance_id, "schedule",
                                         scheduled_for=slot, owner=self.owner)
            if run is None:  # another dispatcher won the slot
                continue
            log.info("schedule.run_started", instance_id=schedule.instance_id,
                     run_id=str(run.id), slot=slot.isoformat(), cron=schedule.cron,
                     timezone=schedule.timezone, scope=schedule.scope)
            started.append(Started(run, schedule))
            await self.launch(run)
        return started

    async def seconds_to_next(self) -> float:
        """Until the earliest next slot of any schedule, at most ``interval``."""
        now = self.now()
        wait = self.interval
        for schedule in await self.schedules.effective_all():
            if not schedule.enabled:
                continue
            try:
                upcoming = next_slot(schedule.cron, schedule.timezone, now)
            except ValueError:
                continue
            if upcoming is not None:
                wait = min(wait, max((upcoming - now).total_seconds(), 0.0))
        return wait

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a failed tick is logged and tried again later."""
        while not stop.is_set():
            wait = self.interval
            try:
                await self.tick()
                wait = await self.seconds_to_next()
            except Exception:  # the next tick tries again; nothing is lost
                log.exception("schedule.tick_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.05))


class DailyJob:
    """An installation-wide job on its own cron (the daily redelivery of dead letters),
    run once per slot across dispatchers: a ``job_slots`` row per job and slot, which
    one dispatcher wins. Missed slots are caught up once; before the job's first slot
    ever, slots before ``started`` (this dispatcher's start) are not caught up."""

    def __init__(self, db: Database, job: str, cron: str, timezone: Callable[[], Awaitable[str]],
                 action: Callable[[], Awaitable[dict[str, Any]]], *,
                 now: Callable[[], datetime] = system_now) -> None:
        self.db = db
        self.job = job
        self.cron = cron
        self.timezone = timezone
        self.action = action
        self.now = now
        self.started = now()

    async def tick(self) -> datetime | None:
        """Run the job if a slot is due and no other dispatcher took it; the slot run."""
        now = self.now()
        last = await self.db.fetchval("SELECT max(slot) FROM job_slots WHERE job = %s",
                                      (self.job,))
        slot = due_slot(self.cron, await self.timezone(), now, last_slot=last,
                        since=None if last is not None else self.started)
        if slot is None:
            return None
        won = await self.db.fetchval(
            "INSERT INTO job_slots (job, slot) VALUES (%s, %s) ON CONFLICT DO NOTHING"
            " RETURNING slot", (self.job, slot))
        if won is None:
            return None
        log.info("job.started", job=self.job, slot=slot.isoformat())
        summary: dict[str, Any] = {}
        error = None
        try:
            summary = await self.action()
        except Exception as exc:  # the slot says so; the next slot tries again
            error = f"{type(exc).__name__}: {redact(str(exc))}"[:1000]
            log.error("job.failed", job=self.job, slot=slot.isoformat(), error=error)
        await self.db.execute(
            "UPDATE job_slots SET finished_at = now(), summary = %s, error = %s"
            " WHERE job = %s AND slot = %s", (Jsonb(summary), error, self.job, slot))
        return slot

    async def seconds_to_next(self) -> float:
        upcoming = next_slot(self.cron, await self.timezone(), self.now())
        return DEFAULT_INTERVAL if upcoming is None else max(
            (upcoming - self.now()).total_seconds(), 0.0)


def file_clock(path: str) -> Callable[[], datetime]:
    """A clock that reads the current time (ISO 8601) from ``path`` at every call — for
    tests that drive the dispatcher's schedules; the system clock when it is unreadable."""
    def now() -> datetime:
        try:
            with open(path, encoding="utf-8") as file:
                value = datetime.fromisoformat(file.read().strip())
        except (OSError, ValueError) as exc:
            log.error("schedule.clock_unreadable", path=path, error=str(exc))
            return system_now()
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return now


async def run_schedules(deps: RuntimeDeps, stop: asyncio.Event) -> None:
    """The dispatcher's companion (``shared.messaging.runner``): close the runs of
    dispatchers that stopped, start due runs (each executed here as a task), and run the
    daily redelivery on its cron, until ``stop``. Runs in flight at a stop are left
    ``running`` and closed as interrupted by the next dispatcher to look."""
    settings = deps.settings
    if not settings.schedules_enabled:
        log.info("schedule.off", hint="SCHEDULES_ENABLED=false: no runs, no daily redelivery")
        return
    now = file_clock(settings.clock_file) if settings.clock_file else system_now
    tasks: set[asyncio.Task[Any]] = set()
    async with RunExecutor(deps.db, settings) as executor:
        async def launch(run: Run) -> None:
            task = asyncio.create_task(executor.execute(run))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def redeliver_now() -> dict[str, Any]:
            max_age = (timedelta(days=settings.redelivery_max_age_days)
                       if settings.redelivery_max_age_days else None)
            report = await redeliver(settings.amqp_url, deps.db, deps.audit, max_age=max_age,
                                     now=now())
            return {"moved": report.moved, "parked": report.parked, "failed": report.failed}

        schedules = ScheduleStore(deps.db)
        scheduler = Scheduler(schedules, RunStore(deps.db), launch, now=now,
                              interval=settings.schedule_interval, owner=executor.owner)
        redelivery = DailyJob(deps.db, "redelivery", settings.redelivery_schedule,
                              schedules.installation_timezone, redeliver_now, now=now)
        while not stop.is_set():
            wait = settings.schedule_interval
            try:
                await close_interrupted(deps.db)
                await redelivery.tick()
                await scheduler.tick()
                wait = min(await scheduler.seconds_to_next(),
                           await redelivery.seconds_to_next(), settings.schedule_interval)
            except Exception:  # the next look tries again; nothing is lost
                log.exception("schedule.tick_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.05))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
