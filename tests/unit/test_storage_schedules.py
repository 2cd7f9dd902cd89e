"""The most-specific-wins schedule resolution (pure; cron validation: test_scheduling)."""

from __future__ import annotations

from shared.storage.schedules import DEFAULT_CRON, resolve_schedule


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
