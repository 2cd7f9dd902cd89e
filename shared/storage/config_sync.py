"""Make the configuration tables match a desired state, touching only what differs.

``sync`` is the storage half of ``bss-sync apply``: in one transaction (under an
advisory lock, so two applies never interleave) it inserts what is new, updates
only rows whose values differ (an unchanged row keeps its ``updated_at``),
deactivates organizations and instances that are no longer desired (never
deletes them: links, runs and audit rows refer to them) and replaces schedules.
Consumers may ``LISTEN bss_sync_config`` to drop their caches after a change.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.storage.db import Connection, Database
from shared.storage.instances import Permission

CONFIG_LOCK_CLASS = 0x62737375
NOTIFY_CHANNEL = "bss_sync_config"


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredConnector:
    id: str
    title: str
    version: str
    sha256: str
    document: dict[str, Any]
    sources: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredOrganization:
    id: str
    name: str
    timezone: str
    active: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredInstance:
    id: str
    org_id: str
    connector_id: str
    name: str
    server_url: str | None = None
    variables: dict[str, Any] = dataclasses.field(default_factory=dict)
    credentials: dict[str, str] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    active: bool = True
    permissions: frozenset[Permission] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredSchedule:
    scope: str
    scope_id: str
    cron: str
    timezone: str | None = None
    enabled: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything an installation file declares."""

    connectors: Sequence[DesiredConnector] = ()
    organizations: Sequence[DesiredOrganization] = ()
    instances: Sequence[DesiredInstance] = ()
    schedules: Sequence[DesiredSchedule] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One change made (or, in a dry run, that would be made)."""

    action: str  # created | updated | deactivated | reactivated | removed
    kind: str  # connector | organization | instance | schedule
    id: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.kind} {self.id}" + (f": {self.detail}" if self.detail else "")


async def sync(db: Database, desired: DesiredState, *, dry_run: bool = False) -> list[Change]:
    """Apply ``desired``; return the changes (rolled back when ``dry_run``).

    Raises ``InfrastructureError`` on database failure; nothing is written then.
    """
    changes: list[Change] = []
    async with db.connection() as conn:
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                                   (CONFIG_LOCK_CLASS, db.schema))
                changes += await _sync_connectors(conn, desired.connectors)
                changes += await _sync_organizations(conn, desired.organizations)
                changes += await _sync_instances(conn, desired.instances)
                changes += await _sync_schedules(conn, desired.schedules)
                if dry_run:
                    raise psycopg.Rollback()
                if changes:
                    payload = json.dumps({"changes": len(changes)})
                    await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
        except psycopg.Rollback:  # pragma: no cover - psycopg swallows it in the block
            pass
    return changes


class _Now:
    """Marks a value written as the transaction's ``now()``."""


NOW = _Now()


def _sql_value(value: Any) -> tuple[str, list[Any]]:
    if value is NOW:
        return "now()", []
    return "%s", [Jsonb(value) if isinstance(value, dict | list) else value]


async def _rows(conn: Connection, sql: str) -> dict[str, dict[str, Any]]:
    cur = await conn.execute(sql)
    return {row["id"]: row for row in await cur.fetchall()}


async def _insert(conn: Connection, table: str, values: dict[str, Any]) -> None:
    marks, params = zip(*(_sql_value(v) for v in values.values()), strict=True)
    await conn.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join(marks)})",
                       [p for group in params for p in group])


async def _update(conn: Connection, table: str, key: dict[str, Any],
                  values: dict[str, Any]) -> None:
    sets: list[str] = []
    params: list[Any] = []
    for column, value in values.items():
        mark, extra = _sql_value(value)
        sets.append(f"{column} = {mark}")
        params += extra
    sets.append("updated_at = now()")
    where = " AND ".join(f"{c} = %s" for c in key)
    await conn.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE {where}",
                       [*params, *key.values()])


def _differences(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in wanted.items() if current.get(k) != v}


async def _sync_connectors(conn: Connection, wanted: Iterable[DesiredConnector]) -> list[Change]:
    current = await _rows(conn, "SELECT id, title, version, sha256, sources FROM connectors"
                                " FOR UPDATE")
    changes: list[Change] = []
    for item in wanted:
        values = {"title": item.title, "version": item.version, "sha256": item.sha256,
                  "sources": item.sources}
        row = current.get(item.id)
        if row is None:
            await _insert(conn, "connectors", {"id": item.id, **values,
                                               "document": item.document})
            changes.append(Change("created", "connector", item.id,
                                  f"version {item.version}, sha256 {item.sha256[:12]}"))
        else:
            diff = _differences(row, values)
            if not diff:
                continue
            update = {**diff, "document": item.document} if "sha256" in diff else diff
            await _update(conn, "connectors", {"id": item.id}, update)
            changes.append(Change("updated", "connector", item.id, _describe(row, diff)))
        await conn.execute(
            "INSERT INTO connector_versions (connector_id, sha256, title, version, document)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (item.id, item.sha256, item.title, item.version, Jsonb(item.document)),
        )
    return changes


async def _sync_organizations(conn: Connection,
                              wanted: Iterable[DesiredOrganization]) -> list[Change]:
    current = await _rows(conn, "SELECT * FROM organizations FOR UPDATE")
    changes: list[Change] = []
    for org in wanted:
        values = {"name": org.name, "timezone": org.timezone, "active": org.active}
        changes += await _upsert_activatable(conn, "organization", "organizations", org.id,
                                             current.pop(org.id, None), values)
    changes += await _deactivate(conn, "organization", "organizations", current.values())
    return changes


async def _upsert_activatable(conn: Connection, kind: str, table: str, row_id: str,
                              row: dict[str, Any] | None, values: dict[str, Any],
                              touch: str = "") -> list[Change]:
    """Insert or update a row with ``active``/``deactivated_at``; report what happened.

    ``touch`` describes a change in a dependent table (permissions): the row's
    ``updated_at`` moves with it, so caches keyed on it see the change.
    """
    stamp = {"deactivated_at": None if values["active"] else NOW}
    if row is None:
        await _insert(conn, table, {"id": row_id, **values, **stamp})
        return [Change("created", kind, row_id, "" if values["active"] else "inactive")]
    diff = _differences(row, values)
    if not diff and not touch:
        return []
    await _update(conn, table, {"id": row_id}, {**diff, **stamp} if "active" in diff else diff)
    if set(diff) == {"active"} and not touch:
        return [Change("reactivated" if values["active"] else "deactivated", kind, row_id)]
    detail = "; ".join(d for d in (_describe(row, diff), touch) if d)
    return [Change("updated", kind, row_id, detail)]


async def _deactivate(conn: Connection, kind: str, table: str,
                      rows: Iterable[dict[str, Any]]) -> list[Change]:
    ids = [row["id"] for row in rows if row["active"]]
    if ids:
        await conn.execute(f"UPDATE {table} SET active = false, deactivated_at = now(),"
                           f" updated_at = now() WHERE id = ANY(%s)", (ids,))
    return [Change("deactivated", kind, i, "no longer in the installation file") for i in ids]


async def _sync_instances(conn: Connection, wanted: Iterable[DesiredInstance]) -> list[Change]:
    current = await _rows(conn, "SELECT * FROM instances FOR UPDATE")
    cur = await conn.execute("SELECT instance_id, entity, direction, action FROM permissions")
    granted: dict[str, set[Permission]] = {}
    for p in await cur.fetchall():
        granted.setdefault(p["instance_id"], set()).add((p["entity"], p["direction"], p["action"]))
    changes: list[Change] = []
    for inst in wanted:
        values = {"org_id": inst.org_id, "connector_id": inst.connector_id, "name": inst.name,
                  "server_url": inst.server_url, "variables": inst.variables,
                  "credentials": inst.credentials, "settings": inst.settings,
                  "active": inst.active}
        row = current.pop(inst.id, None)
        old = granted.get(inst.id, set())
        touch = _permission_detail(old, set(inst.permissions)) if row else ""
        changes += await _upsert_activatable(conn, "instance", "instances", inst.id, row, values,
                                             touch)
        await _sync_permissions(conn, inst.id, old, inst.permissions)
    changes += await _deactivate(conn, "instance", "instances", current.values())
    return changes


def _permission_detail(old: set[Permission], new: set[Permission]) -> str:
    added = sorted(".".join(p) for p in new - old)
    removed = sorted(".".join(p) for p in old - new)
    parts = [f"+{p}" for p in added] + [f"-{p}" for p in removed]
    return f"permissions {' '.join(parts)}" if parts else ""


async def _sync_permissions(conn: Connection, instance_id: str, old: set[Permission],
                            new: frozenset[Permission]) -> None:
    for entity, direction, action in set(new) - old:
        await conn.execute(
            "INSERT INTO permissions (instance_id, entity, direction, action)"
            " VALUES (%s, %s, %s, %s)", (instance_id, entity, direction, action))
    for entity, direction, action in old - set(new):
        await conn.execute(
            "DELETE FROM permissions WHERE instance_id = %s AND entity = %s"
            " AND direction = %s AND action = %s", (instance_id, entity, direction, action))


async def _sync_schedules(conn: Connection, wanted: Iterable[DesiredSchedule]) -> list[Change]:
    cur = await conn.execute("SELECT * FROM schedules FOR UPDATE")
    current = {(r["scope"], r["scope_id"]): r for r in await cur.fetchall()}
    changes: list[Change] = []
    for item in wanted:
        key = (item.scope, item.scope_id)
        name = f"{item.scope}/{item.scope_id}" if item.scope_id else item.scope
        values = {"cron": item.cron, "timezone": item.timezone, "enabled": item.enabled}
        row = current.pop(key, None)
        if row is None:
            await _insert(conn, "schedules", {"scope": item.scope, "scope_id": item.scope_id,
                                              **values})
            changes.append(Change("created", "schedule", name, _schedule_text(values)))
        elif diff := _differences(row, values):
            await _update(conn, "schedules", {"scope": item.scope, "scope_id": item.scope_id},
                          diff)
            changes.append(Change("updated", "schedule", name, _describe(row, diff)))
    for (scope, scope_id), _row in current.items():
        await conn.execute("DELETE FROM schedules WHERE scope = %s AND scope_id = %s",
                           (scope, scope_id))
        changes.append(Change("removed", "schedule", f"{scope}/{scope_id}" if scope_id else scope))
    return changes


def _schedule_text(values: dict[str, Any]) -> str:
    text = f"{values['cron']!s}" + (f" ({values['timezone']})" if values["timezone"] else "")
    return text + ("" if values["enabled"] else ", disabled")


def _describe(row: dict[str, Any], diff: dict[str, Any]) -> str:
    """``name: 'a' -> 'b', ...``; JSON columns and credentials only named, never shown."""
    parts = []
    for column, new in diff.items():
        if isinstance(new, dict | list) or column in ("credentials", "document"):
            parts.append(f"{column} changed")
        elif column == "sha256":
            parts.append(f"sha256 {str(row.get(column))[:12]} -> {str(new)[:12]}")
        else:
            parts.append(f"{column} {row.get(column)!r} -> {new!r}")
    return ", ".join(parts)
