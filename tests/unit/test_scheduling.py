"""Cron slots in their time zone: daylight-saving changes, catch-up once (pure; the
clock is a value, nothing sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.scheduling import cron_problem, due_slot, latest_slot, next_slot, slots_before

PARIS = "Europe/Paris"
NEW_YORK = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def run_at_every_minute(cron: str, tz: str, start: datetime, minutes: int) -> list[datetime]:
    """The slots a dispatcher looking every minute from ``start`` would start."""
    started: list[datetime] = []
    for minute in range(minutes + 1):
        now = start + timedelta(minutes=minute)
        slot = due_slot(cron, tz, now, last_slot=started[-1] if started else None, since=start)
        if slot is not None:
            started.append(slot)
    return started


@pytest.mark.parametrize("expression", [
    "0 23 * * *", "*/15 * * * *", "0 8-18/2 * * mon-fri", "0 0 1 jan,jul *", "@daily",
    "@hourly", "  30 22 * * *  ", "0 0 29 feb *",
])
def test_croniter_accepts(expression: str) -> None:
    assert cron_problem(expression) is None


@pytest.mark.parametrize(("expression", "problem"), [
    ("0 24 * * *", "the hour field '24' is invalid: is not acceptable, out of range"),
    ("*/0 * * * *", "the minute field '*/0' is invalid"),
    ("* * *", "this one has 3"),
    ("0 0 23 * * *", "this one has 6"),
    ("0 0 30 feb *", "would never run"),
    ("@sometimes", ""),
    ("x * * * *", ""),
])
def test_croniter_refuses(expression: str, problem: str) -> None:
    found = cron_problem(expression)
    assert found is not None and problem in found


def test_the_nightly_slot_in_its_own_time_zone() -> None:
    # 23:00 in Paris is 22:00 UTC in winter, 21:00 UTC in summer
    assert latest_slot("0 23 * * *", PARIS, utc(2026, 1, 15, 22, 0)) == utc(2026, 1, 15, 22, 0)
    assert latest_slot("0 23 * * *", PARIS, utc(2026, 1, 15, 21, 59)) == utc(2026, 1, 14, 22, 0)
    assert latest_slot("0 23 * * *", PARIS, utc(2026, 7, 15, 21, 0)) == utc(2026, 7, 15, 21, 0)


def test_a_tick_in_the_skipped_hour_runs_once_a_gap_later() -> None:
    # Paris, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC); 02:30 does not exist
    started = run_at_every_minute("30 2 * * *", PARIS, utc(2026, 3, 28, 0, 0), 48 * 60)
    assert started == [utc(2026, 3, 28, 1, 30),   # 02:30 CET
                       utc(2026, 3, 29, 1, 30)]   # 03:30 CEST: the skipped 02:30, once


def test_hourly_ticks_meeting_in_the_skipped_hour_are_one_slot() -> None:
    started = run_at_every_minute("0 * * * *", PARIS, utc(2026, 3, 28, 23, 30), 4 * 60)
    assert started == [utc(2026, 3, 29, 0, 0),    # 01:00 CET
                       utc(2026, 3, 29, 1, 0),    # 03:00 CEST (02:00 and 03:00 both)
                       utc(2026, 3, 29, 2, 0),    # 04:00 CEST
                       utc(2026, 3, 29, 3, 0)]


def test_a_tick_in_the_repeated_hour_runs_once() -> None:
    # Paris, 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:30 happens twice
    started = run_at_every_minute("30 2 * * *", PARIS, utc(2026, 10, 24, 0, 0), 48 * 60)
    assert started == [utc(2026, 10, 24, 0, 30),  # 02:30 CEST
                       utc(2026, 10, 25, 0, 30)]  # the first 02:30 only
    hourly = run_at_every_minute("0 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 30), 4 * 60)
    # New York, 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00 UTC); 01:00 twice
    assert hourly == [utc(2026, 11, 1, 5, 0),     # 01:00 EDT (the first 01:00)
                      utc(2026, 11, 1, 7, 0),     # 02:00 EST: no second 01:00
                      utc(2026, 11, 1, 8, 0)]


def test_missed_slots_are_caught_up_once() -> None:
    last = utc(2026, 1, 10, 22, 0)  # the last nightly run before three nights down
    now = utc(2026, 1, 14, 9, 15)
    assert due_slot("0 23 * * *", PARIS, now, last_slot=last) == utc(2026, 1, 13, 22, 0)
    assert due_slot("0 23 * * *", PARIS, now, last_slot=utc(2026, 1, 13, 22, 0)) is None


def test_nothing_before_the_schedule_applied_is_caught_up() -> None:
    created = utc(2026, 1, 14, 9, 0)
    assert due_slot("0 23 * * *", PARIS, utc(2026, 1, 14, 9, 15), last_slot=None,
                    since=created) is None
    assert due_slot("0 23 * * *", PARIS, utc(2026, 1, 14, 22, 0), last_slot=None,
                    since=created) == utc(2026, 1, 14, 22, 0)


def test_slots_are_listed_latest_first_each_once() -> None:
    slots = list(zip(range(6), slots_before("*/30 * * * *", PARIS, utc(2026, 3, 29, 2, 0)),
                     strict=False))
    instants = [slot for _, slot in slots]
    assert instants == sorted(set(instants), reverse=True)
    assert instants[:4] == [utc(2026, 3, 29, 2, 0), utc(2026, 3, 29, 1, 30),
                            utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 0, 30)]


def test_when_to_look_next() -> None:
    assert next_slot("0 23 * * *", PARIS, utc(2026, 1, 14, 22, 0)) == utc(2026, 1, 15, 22, 0)
    assert next_slot("30 2 * * *", PARIS, utc(2026, 3, 29, 0, 0)) == utc(2026, 3, 29, 1, 30)
    assert next_slot("0 * * * *", PARIS, utc(2026, 10, 25, 0, 0)) == utc(2026, 10, 25, 2, 0)


def test_an_unknown_time_zone_is_named() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        latest_slot("0 23 * * *", "Mars/Olympus", utc(2026, 1, 1))
