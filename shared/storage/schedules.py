"""Schedules: cron at installation, organization or instance level; most specific wins.

Without any row the default is ``0 23 * * *`` (the nightly run at 23:00). A
schedule's timezone, when it names none, is the organization's (which itself
defaults to the installation's when the installation file gives none).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
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
    #: When this schedule began to apply to the instance (its creation, or the winning
    #: row's last change, whichever is later): slots before it are not caught up.
    since: datetime | None = None


def resolve_schedule(
    instance_id: str,
    org_id: str,
    org_timezone: str | None,
    rows: dict[tuple[str, str], dict[str, Any]],
    created_at: datetime | None = None,
) -> EffectiveSchedule:
    """The schedule in force for one instance, from ``{(scope, scope_id): row}``. Pure."""
    installation = rows.get(("installation", ""))
    for scope, scope_id in (("instance", instance_id), ("organization", org_id),
                            ("installation", "")):
        row = rows.get((scope, scope_id))
        if row is not None:
            timezone = (row.get("timezone") or org_timezone
                        or (installation or {}).get("timezone") or DEFAULT_TIMEZONE)
            changed = row.get("updated_at")
            since = max((t for t in (created_at, changed) if t is not None), default=None)
            return EffectiveSchedule(instance_id, org_id, row["cron"], timezone,
                                     bool(row.get("enabled", True)), scope, since)
    return EffectiveSchedule(instance_id, org_id, DEFAULT_CRON,
                             org_timezone or DEFAULT_TIMEZONE, True, "default", created_at)


class ScheduleStore:
    """Reads schedules (written by ``shared.installation.apply``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _rows(self) -> dict[tuple[str, str], dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT scope, scope_id, cron, timezone, enabled, updated_at FROM schedules")
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

    async def installation_timezone(self) -> str:
        """The installation's time zone: its schedule's, else ``UTC``."""
        value = await self.db.fetchval(
            "SELECT timezone FROM schedules WHERE scope = 'installation' AND scope_id = ''")
        return value or DEFAULT_TIMEZONE

    async def effective_all(self) -> list[EffectiveSchedule]:
        """The schedule in force for every enabled instance (what the dispatcher runs)."""
        instances = await self.db.fetch(
            "SELECT i.id, i.org_id, o.timezone, i.created_at FROM instances i"
            " JOIN organizations o ON o.id = i.org_id WHERE i.active AND o.active ORDER BY i.id"
        )
        rows = await self._rows()
        return [resolve_schedule(r["id"], r["org_id"], r["timezone"], rows, r["created_at"])
                for r in instances]


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a usable five-field cron expression (or macro such as
    ``@daily``), or ``None``. Pure; croniter parses (``shared.scheduling``)."""
    from shared.scheduling import cron_problem as problem

    return problem(expression)
