"""Cron validation and the most-specific-wins schedule resolution (pure)."""

from __future__ import annotations

import pytest

from shared.storage.schedules import DEFAULT_CRON, cron_problem, resolve_schedule


@pytest.mark.parametrize("expression", [
    "0 23 * * *", "*/15 * * * *", "0 8-18/2 * * mon-fri", "0 0 1 jan,jul *", "5,35 * * * 0",
    "0 0 * * 7", "@daily", "@hourly", "  0 23 * * *  ", "0 0 29 feb *",
])
def test_valid_cron(expression: str) -> None:
    assert cron_problem(expression) is None


@pytest.mark.parametrize(("expression", "problem"), [
    ("0 24 * * *", "the hour field '24' is invalid: 24 is outside 0-23"),
    ("60 * * * *", "the minute field '60' is invalid: 60 is outside 0-59"),
    ("* * 0 * *", "the day of month field '0' is invalid: 0 is outside 1-31"),
    ("* * * 13 *", "the month field '13' is invalid: 13 is outside 1-12"),
    ("* * * * 8", "the day of week field '8' is invalid: 8 is outside 0-7"),
    ("* * *", "this one has 3"),
    ("0 0 23 * * *", "this one has 6"),
    ("*/0 * * * *", "step '0' must be a positive number"),
    ("10-5 * * * *", "range '10-5' goes backwards"),
    ("x * * * *", "'x' is not a number, a range or *"),
    ("@sometimes", "unknown cron macro '@sometimes'"),
])
def test_invalid_cron(expression: str, problem: str) -> None:
    assert problem in (cron_problem(expression) or "")


def rows(*items: tuple[str, str, str, str | None, bool]) -> dict:
    return {(s, i): {"cron": c, "timezone": tz, "enabled": e} for s, i, c, tz, e in items}


def test_default_without_any_schedule() -> None:
    schedule = resolve_schedule("i", "o", "Europe/Paris", {})
    assert (schedule.cron, schedule.timezone, schedule.scope) == (DEFAULT_CRON, "Europe/Paris",
                                                                  "default")


def test_most_specific_wins_and_timezone_falls_back_to_the_organization() -> None:
    table = rows(("installation", "", "0 22 * * *", "UTC", True),
                 ("organization", "o", "0 1 * * *", None, True),
                 ("instance", "i", "*/5 * * * *", "Asia/Tokyo", False))
    assert resolve_schedule("i", "o", "Europe/Paris", table).cron == "*/5 * * * *"
    assert not resolve_schedule("i", "o", "Europe/Paris", table).enabled
    other = resolve_schedule("j", "o", "Europe/Paris", table)
    assert (other.cron, other.timezone, other.scope) == ("0 1 * * *", "Europe/Paris",
                                                         "organization")
    elsewhere = resolve_schedule("k", "p", "America/New_York", table)
    assert (elsewhere.cron, elsewhere.timezone, elsewhere.scope) == ("0 22 * * *", "UTC",
                                                                     "installation")
