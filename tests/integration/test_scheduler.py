"""The dispatcher's scheduler against a real PostgreSQL, driven by an injected clock:
each due slot becomes one run however many replicas tick, missed slots are caught up
once, daylight-saving nights neither skip nor double a run, and the most specific
schedule wins."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from services.dispatcher.run import RUN_LOCK_CLASS, close_interrupted
from services.dispatcher.schedule import DailyJob, Scheduler
from shared.storage.db import Database
from shared.storage.runs import Run, RunStore
from shared.storage.schedules import ScheduleStore
from tests.fixtures.waiting import eventually
from tests.integration.test_storage import seed

pytestmark = pytest.mark.integration

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class Launches:
    def __init__(self) -> None:
        self.runs: list[Run] = []

    async def __call__(self, run: Run) -> None:
        self.runs.append(run)


async def schedule(db: Database, scope: str, scope_id: str, cron: str,
                   timezone: str | None = None, *, since: datetime = CREATED) -> None:
    await db.execute(
        "INSERT INTO schedules (scope, scope_id, cron, timezone, enabled, updated_at)"
        " VALUES (%s, %s, %s, %s, true, %s)", (scope, scope_id, cron, timezone, since))


async def instances(db: Database, *ids: str, created: datetime = CREATED) -> None:
    for instance_id in ids:
        await seed(db, instance_id=instance_id)
    await db.execute("UPDATE instances SET created_at = %s", (created,))


def replicas(db: Database, clock: Clock, count: int) -> tuple[list[Scheduler], Launches]:
    launches = Launches()
    return [Scheduler(ScheduleStore(db), RunStore(db), launches, now=clock)
            for _ in range(count)], launches


async def slots(db: Database) -> list[tuple[str, datetime]]:
    rows = await db.fetch("SELECT instance_id, scheduled_for FROM runs"
                          " WHERE trigger = 'schedule' ORDER BY scheduled_for, instance_id")
    return [(r["instance_id"], r["scheduled_for"]) for r in rows]


async def drive(schedulers: list[Scheduler], clock: Clock, until: datetime,
                step: timedelta) -> None:
    """Every replica ticks at once, at every step of the clock until ``until``."""
    while clock.at <= until:
        await asyncio.gather(*(s.tick() for s in schedulers))
        clock.at += step


async def test_three_replicas_start_each_due_run_once_most_specific_schedule_winning(
        db: Database) -> None:
    start = datetime(2026, 1, 10, 4, 0, tzinfo=UTC)
    await instances(db, "inst-1", "inst-2", "inst-3", created=start)
    # org-1 is in Europe/Paris; inst-2 has its own schedule, in UTC; inst-3's is disabled
    await schedule(db, "organization", "org-1", "0 6 * * *", since=start)
    await schedule(db, "instance", "inst-2", "0 */12 * * *", "UTC", since=start)
    await schedule(db, "instance", "inst-3", "* * * * *", since=start)
    await db.execute("UPDATE schedules SET enabled = false WHERE scope_id = 'inst-3'")
    clock = Clock(start)
    schedulers, launches = replicas(db, clock, 3)
    await drive(schedulers, clock, datetime(2026, 1, 11, 12, 0, tzinfo=UTC),
                timedelta(minutes=10))
    expected = [("inst-1", datetime(2026, 1, 10, 5, 0, tzinfo=UTC)),   # 06:00 Paris
                ("inst-2", datetime(2026, 1, 10, 12, 0, tzinfo=UTC)),
                ("inst-2", datetime(2026, 1, 11, 0, 0, tzinfo=UTC)),
                ("inst-1", datetime(2026, 1, 11, 5, 0, tzinfo=UTC)),
                ("inst-2", datetime(2026, 1, 11, 12, 0, tzinfo=UTC))]
    assert await slots(db) == expected
    assert sorted((r.instance_id, r.scheduled_for) for r in launches.runs) == sorted(expected)
    assert {r.trigger for r in launches.runs} == {"schedule"}


async def test_slots_missed_while_every_dispatcher_was_down_are_caught_up_once(
        db: Database) -> None:
    await instances(db, "inst-1")
    clock = Clock(datetime(2026, 2, 2, 22, 30, tzinfo=UTC))  # default: 23:00 Paris
    schedulers, launches = replicas(db, clock, 2)
    await drive(schedulers, clock, clock.at, timedelta(minutes=1))
    assert await slots(db) == [("inst-1", datetime(2026, 2, 2, 22, 0, tzinfo=UTC))]
    clock.at = datetime(2026, 2, 6, 9, 0, tzinfo=UTC)  # three nights later
    await drive(schedulers, clock, clock.at + timedelta(hours=1), timedelta(minutes=5))
    assert await slots(db) == [("inst-1", datetime(2026, 2, 2, 22, 0, tzinfo=UTC)),
                               ("inst-1", datetime(2026, 2, 5, 22, 0, tzinfo=UTC))]
    assert len(launches.runs) == 2


async def test_daylight_saving_nights_run_each_tick_once(db: Database) -> None:
    start = datetime(2026, 3, 28, 23, 2, tzinfo=UTC)
    await instances(db, "inst-1", "inst-2", created=start)
    await schedule(db, "instance", "inst-1", "30 2 * * *", "Europe/Paris", since=start)
    await schedule(db, "instance", "inst-2", "0 * * * *", "Europe/Paris", since=start)
    # the spring-forward night (02:00 CET → 03:00 CEST at 01:00 UTC), ticking every 5 min
    clock = Clock(start)
    schedulers, _ = replicas(db, clock, 2)
    await drive(schedulers, clock, datetime(2026, 3, 29, 3, 0, tzinfo=UTC),
                timedelta(minutes=5))
    spring = await slots(db)
    assert [s for i, s in spring if i == "inst-1"] == [datetime(2026, 3, 29, 1, 30, tzinfo=UTC)]
    assert [s for i, s in spring if i == "inst-2"] == [
        datetime(2026, 3, 29, h, 0, tzinfo=UTC) for h in (0, 1, 2)]  # 01:00, 03:00, 04:00
    # the fall-back night (03:00 CEST → 02:00 CET at 01:00 UTC): 02:30 happens twice
    await db.execute("DELETE FROM runs")
    clock.at = datetime(2026, 10, 24, 23, 2, tzinfo=UTC)
    await db.execute("UPDATE schedules SET updated_at = %s", (clock.at,))
    await drive(schedulers, clock, datetime(2026, 10, 25, 3, 0, tzinfo=UTC),
                timedelta(minutes=5))
    autumn = await slots(db)
    assert [s for i, s in autumn if i == "inst-1"] == [datetime(2026, 10, 25, 0, 30,
                                                                tzinfo=UTC)]
    assert [s for i, s in autumn if i == "inst-2"] == [
        datetime(2026, 10, 25, h, 0, tzinfo=UTC) for h in (0, 2)]  # 02:00 CEST, 03:00 CET


async def test_a_schedule_changed_today_does_not_run_a_slot_that_passed_before_it(
        db: Database) -> None:
    await instances(db, "inst-1")
    changed = datetime(2026, 4, 1, 10, 0, tzinfo=UTC)
    await schedule(db, "instance", "inst-1", "0 8 * * *", "UTC", since=changed)
    clock = Clock(changed + timedelta(minutes=1))
    schedulers, launches = replicas(db, clock, 1)
    await drive(schedulers, clock, datetime(2026, 4, 2, 8, 30, tzinfo=UTC),
                timedelta(minutes=15))
    assert await slots(db) == [("inst-1", datetime(2026, 4, 2, 8, 0, tzinfo=UTC))]
    assert len(launches.runs) == 1


async def test_the_scheduler_waits_until_the_next_slot_at_most_its_interval(
        db: Database) -> None:
    await instances(db, "inst-1")
    await schedule(db, "instance", "inst-1", "0 8 * * *", "UTC")
    clock = Clock(datetime(2026, 4, 1, 7, 59, 50, tzinfo=UTC))
    (scheduler,), _ = replicas(db, clock, 1)
    assert await scheduler.seconds_to_next() == pytest.approx(10.0)
    clock.at = datetime(2026, 4, 1, 8, 0, 1, tzinfo=UTC)
    assert await scheduler.seconds_to_next() == scheduler.interval


# ------------------------------------------------------------- the daily redelivery's job


async def test_a_daily_job_runs_once_per_slot_across_replicas_and_catches_up_once(
        db: Database) -> None:
    clock = Clock(datetime(2026, 3, 1, 20, 0, tzinfo=UTC))
    calls: list[datetime] = []

    async def action() -> dict[str, int]:
        calls.append(clock.at)
        return {"moved": len(calls)}

    async def utc() -> str:
        return "UTC"

    jobs = [DailyJob(db, "redelivery", "30 22 * * *", utc, action, now=clock)
            for _ in range(3)]
    await drive(jobs, clock, datetime(2026, 3, 1, 22, 29, tzinfo=UTC),  # type: ignore[arg-type]
                timedelta(minutes=1))
    assert calls == []  # slots before the first dispatcher's start are not caught up
    await drive(jobs, clock, datetime(2026, 3, 1, 22, 40, tzinfo=UTC),  # type: ignore[arg-type]
                timedelta(minutes=1))
    assert calls == [datetime(2026, 3, 1, 22, 30, tzinfo=UTC)]
    clock.at = datetime(2026, 3, 5, 8, 0, tzinfo=UTC)  # three nights missed
    await drive(jobs, clock, clock.at + timedelta(minutes=10),  # type: ignore[arg-type]
                timedelta(minutes=1))
    assert len(calls) == 2
    rows = await db.fetch("SELECT slot, summary, error, finished_at FROM job_slots"
                          " WHERE job = 'redelivery' ORDER BY slot")
    assert [(r["slot"], r["summary"], r["error"]) for r in rows] == [
        (datetime(2026, 3, 1, 22, 30, tzinfo=UTC), {"moved": 1}, None),
        (datetime(2026, 3, 4, 22, 30, tzinfo=UTC), {"moved": 2}, None)]
    assert all(r["finished_at"] is not None for r in rows)


async def test_a_failing_daily_job_records_its_error_and_the_next_slot_tries_again(
        db: Database) -> None:
    clock = Clock(datetime(2026, 3, 1, 22, 0, tzinfo=UTC))

    async def action() -> dict[str, int]:
        raise RuntimeError("the broker is gone")

    async def utc() -> str:
        return "UTC"

    job = DailyJob(db, "redelivery", "30 22 * * *", utc, action, now=clock)
    clock.at = datetime(2026, 3, 1, 22, 31, tzinfo=UTC)
    assert await job.tick() == datetime(2026, 3, 1, 22, 30, tzinfo=UTC)
    assert await job.tick() is None
    [row] = await db.fetch("SELECT error FROM job_slots")
    assert row["error"] == "RuntimeError: the broker is gone"
    clock.at = datetime(2026, 3, 2, 22, 31, tzinfo=UTC)
    assert await job.tick() == datetime(2026, 3, 2, 22, 30, tzinfo=UTC)


# ------------------------------------------------------------------- interrupted runs


async def test_a_run_is_closed_as_interrupted_only_once_its_owner_is_gone(
        db: Database, database_url: str) -> None:
    await instances(db, "inst-1")
    runs = RunStore(db)
    owner = "owner-of-a-process"
    run = await runs.create("org-1", "inst-1", "manual", owner=owner)
    orphan = await runs.create("org-1", "inst-1", "manual")  # no owner at all
    assert run is not None and orphan is not None
    holder = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))",
                         (RUN_LOCK_CLASS, f"{db.schema}:{owner}"))
    try:
        closed = await close_interrupted(db)
        assert [r.id for r in closed] == [orphan.id]
        assert (await runs.get(run.id)).status == "running"  # type: ignore[union-attr]
    finally:
        await holder.close()  # the owning process dies: PostgreSQL drops its lock
    # (as soon as its backend has seen the connection go: a moment, not at once)
    [closed_run] = await eventually(lambda: close_interrupted(db), timeout=10,
                                    what="the owner's lock to be released")
    assert closed_run.id == run.id and closed_run.status == "failed"
    assert closed_run.error is not None and "interrupted in phase push" in closed_run.error
    assert await close_interrupted(db) == []
