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
from datetime import UTC, datetime

import structlog

from shared.scheduling import due_slot, next_slot
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
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.schedules = schedules
        self.runs = runs
        self.launch = launch
        self.now = now
        self.interval = interval

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
                                         scheduled_for=slot)
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
