"""Instances: an organization's link to one deployment of a connector's system."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from shared.errors import ConfigurationError
from shared.storage.db import Database
from shared.storage.vocabulary import ACTIONS

Permission = tuple[str, str, str]
"""``(entity, direction, action)``, e.g. ``("account", "push", "create")``."""


@dataclasses.dataclass(frozen=True, slots=True)
class Instance:
    """An instance with what a consumer needs to process its records.

    ``credentials`` holds references (``env:NAME``, ``file:PATH``) only; resolve
    them at use time with :func:`shared.credentials.resolve_credential`.
    """

    id: str
    org_id: str
    connector_id: str
    name: str
    server_url: str | None
    variables: dict[str, Any]
    credentials: dict[str, str]
    settings: dict[str, Any]
    active: bool
    created_at: datetime
    updated_at: datetime
    deactivated_at: datetime | None
    connector_sha256: str
    org_active: bool
    permissions: frozenset[Permission] = frozenset()

    @property
    def enabled(self) -> bool:
        """Whether records of this instance are processed at all."""
        return self.active and self.org_active

    @property
    def lookups(self) -> dict[str, dict[str, Any]]:
        """The per-instance lookup tables overlaying the connector's."""
        return dict(self.settings.get("lookups") or {})

    def conflict_override(self, entity: str) -> str | None:
        """The instance's conflict policy for ``entity`` (installation file: ``conflict``,
        one policy or ``{entity: policy}``), ``None`` when it keeps the connector's."""
        override = self.settings.get("conflict")
        if isinstance(override, dict):
            override = override.get(entity)
        return override if isinstance(override, str) else None

    def is_permitted(self, entity: str, direction: str, action: str) -> bool:
        """Whether this instance may ``action`` ``entity`` records in ``direction``."""
        return (entity, direction, action) in self.permissions

    def permitted_actions(self, entity: str, direction: str) -> list[str]:
        """The actions permitted for ``entity`` in ``direction``, in create/update/delete order."""
        return [a for a in ACTIONS if self.is_permitted(entity, direction, a)]


_SELECT = """
SELECT i.*, c.sha256 AS connector_sha256, o.active AS org_active,
       coalesce((SELECT array_agg(ARRAY[p.entity, p.direction, p.action])
                   FROM permissions p WHERE p.instance_id = i.id), '{}') AS permission_rows
  FROM instances i
  JOIN organizations o ON o.id = i.org_id
  JOIN connectors c ON c.id = i.connector_id
"""


def _instance(row: dict[str, Any]) -> Instance:
    fields = {f.name for f in dataclasses.fields(Instance)} - {"permissions"}
    perms = frozenset(tuple(p) for p in row["permission_rows"] or ())
    return Instance(**{k: row[k] for k in fields}, permissions=perms)  # type: ignore[arg-type]


class InstanceStore:
    """Reads instances with their permissions (written by ``shared.installation.apply``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, instance_id: str) -> Instance | None:
        """The instance, active or not, or ``None``. Raises ``InfrastructureError``."""
        row = await self.db.fetchrow(_SELECT + " WHERE i.id = %s", (instance_id,))
        return None if row is None else _instance(row)

    async def require(self, instance_id: str) -> Instance:
        """The instance. Raises ``ConfigurationError`` when it does not exist."""
        instance = await self.get(instance_id)
        if instance is None:
            raise ConfigurationError(f"unknown instance {instance_id!r}")
        return instance

    async def list(self, org_id: str | None = None, *, active_only: bool = False) -> list[Instance]:
        """Instances (of one organization when ``org_id`` is given), by org then id."""
        where, params = _filters(org_id=org_id, active_only=active_only)
        rows = await self.db.fetch(_SELECT + where + " ORDER BY i.org_id, i.id", params)
        return [_instance(row) for row in rows]

    async def permitted(
        self, org_id: str, entity: str, direction: str, action: str
    ) -> list[Instance]:
        """Enabled instances of ``org_id`` permitted ``action`` on ``entity`` in ``direction``.

        The dispatcher's fan-out: one push message per instance returned.
        """
        rows = await self.db.fetch(
            _SELECT + " WHERE i.org_id = %s AND i.active AND o.active AND EXISTS ("
            "SELECT 1 FROM permissions p WHERE p.instance_id = i.id"
            " AND p.entity = %s AND p.direction = %s AND p.action = %s) ORDER BY i.id",
            (org_id, entity, direction, action),
        )
        return [_instance(row) for row in rows]

    async def ids(self, instance_ids: Iterable[str]) -> set[str]:
        """Which of ``instance_ids`` exist."""
        rows = await self.db.fetch("SELECT id FROM instances WHERE id = ANY(%s)",
                                   (list(instance_ids),))
        return {row["id"] for row in rows}


def _filters(*, org_id: str | None, active_only: bool) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if org_id is not None:
        clauses.append("i.org_id = %s")
        params.append(org_id)
    if active_only:
        clauses.append("i.active AND o.active")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
