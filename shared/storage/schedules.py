"""Schedules: cron at installation, organization or instance level; most specific wins.

Without any row the default is ``0 23 * * *`` (the nightly run at 23:00). A
schedule's timezone, when it names none, is the organization's (which itself
defaults to the installation's when the installation file gives none).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.storage.db import Database

DEFAULT_CRON = "0 23 * * *"
DEFAULT_TIMEZONE = "UTC"
SCOPES = ("installation", "organization", "instance")


@dataclasses.dataclass(frozen=True, slots=True)
class EffectiveSchedule:
    """When an instance runs: the winning schedule and where it came from."""

    instance_id: str
    org_id: str
    cron: str
    timezone: str
    enabled: bool
    scope: str  # installation | organization | instance | default


def resolve_schedule(
    instance_id: str,
    org_id: str,
    org_timezone: str | None,
    rows: dict[tuple[str, str], dict[str, Any]],
) -> EffectiveSchedule:
    """The schedule in force for one instance, from ``{(scope, scope_id): row}``. Pure."""
    installation = rows.get(("installation", ""))
    for scope, scope_id in (("instance", instance_id), ("organization", org_id),
                            ("installation", "")):
        row = rows.get((scope, scope_id))
        if row is not None:
            timezone = (row.get("timezone") or org_timezone
                        or (installation or {}).get("timezone") or DEFAULT_TIMEZONE)
            return EffectiveSchedule(instance_id, org_id, row["cron"], timezone,
                                     bool(row.get("enabled", True)), scope)
    return EffectiveSchedule(instance_id, org_id, DEFAULT_CRON,
                             org_timezone or DEFAULT_TIMEZONE, True, "default")


class ScheduleStore:
    """Reads schedules (written by ``shared.installation.apply``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _rows(self) -> dict[tuple[str, str], dict[str, Any]]:
        rows = await self.db.fetch("SELECT scope, scope_id, cron, timezone, enabled FROM schedules")
        return {(row["scope"], row["scope_id"]): row for row in rows}

    async def effective(self, instance_id: str) -> EffectiveSchedule | None:
        """The schedule in force for one instance, or ``None`` if it does not exist."""
        row = await self.db.fetchrow(
            "SELECT i.id, i.org_id, o.timezone FROM instances i"
            " JOIN organizations o ON o.id = i.org_id WHERE i.id = %s",
            (instance_id,),
        )
        if row is None:
            return None
        return resolve_schedule(row["id"], row["org_id"], row["timezone"], await self._rows())

    async def effective_all(self) -> list[EffectiveSchedule]:
        """The schedule in force for every enabled instance (what the dispatcher runs)."""
        instances = await self.db.fetch(
            "SELECT i.id, i.org_id, o.timezone FROM instances i"
            " JOIN organizations o ON o.id = i.org_id WHERE i.active AND o.active ORDER BY i.id"
        )
        rows = await self._rows()
        return [resolve_schedule(r["id"], r["org_id"], r["timezone"], rows) for r in instances]


_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: (name, lowest, highest, names) of the five standard cron fields.
_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a standard five-field cron expression, or ``None``. Pure.

    Accepts ``*``, numbers, ranges ``a-b``, steps ``*/n`` / ``a-b/n`` / ``a/n``,
    comma lists, month and weekday names (``jan``, ``mon``) and the macros
    ``@daily``, ``@hourly``, ``@weekly``, ``@monthly``, ``@yearly``.
    """
    text = expression.strip().lower()
    if text.startswith("@"):
        return None if text in _MACROS else f"unknown cron macro {expression.strip()!r}"
    fields = text.split()
    if len(fields) != 5:
        return (f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
                f"this one has {len(fields)}")
    for value, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        for item in value.split(","):
            problem = _item_problem(item, low, high, names)
            if problem:
                return f"the {name} field {value!r} is invalid: {problem}"
    return None


def _item_problem(item: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    base, slash, step = item.partition("/")
    if slash and not (step.isdigit() and int(step) > 0):
        return f"step {step!r} must be a positive number"
    if base == "*":
        return None
    start, dash, end = base.partition("-")
    bounds = [_number(start, names), _number(end, names) if dash else None]
    if bounds[0] is None or (dash and bounds[1] is None):
        return f"{base!r} is not a number, a range or *"
    for bound in bounds:
        if bound is not None and not low <= bound <= high:
            return f"{bound} is outside {low}-{high}"
    if dash and bounds[1] is not None and bounds[1] < bounds[0]:  # type: ignore[operator]
        return f"range {base!r} goes backwards"
    return None


def _number(text: str, names: tuple[str, ...]) -> int | None:
    if text.isdigit():
        return int(text)
    if text in names:
        return names.index(text) + (1 if names is _MONTHS else 0)
    return None
