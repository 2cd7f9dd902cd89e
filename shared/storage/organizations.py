"""Organizations: the tenants of the BSS."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from shared.storage.db import Database


@dataclasses.dataclass(frozen=True, slots=True)
class Organization:
    """One ``organizations`` row."""

    id: str
    name: str
    timezone: str
    active: bool
    created_at: datetime
    updated_at: datetime
    deactivated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Organization:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


class OrganizationStore:
    """Reads organizations (they are written by ``shared.installation.apply``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, org_id: str) -> Organization | None:
        """The organization, or ``None``. Raises ``InfrastructureError``."""
        row = await self.db.fetchrow("SELECT * FROM organizations WHERE id = %s", (org_id,))
        return None if row is None else Organization.from_row(row)

    async def list(self, *, active_only: bool = False) -> list[Organization]:
        """Every organization, by id. Raises ``InfrastructureError``."""
        sql = "SELECT * FROM organizations"
        if active_only:
            sql += " WHERE active"
        rows = await self.db.fetch(sql + " ORDER BY id")
        return [Organization.from_row(row) for row in rows]

    async def instance_counts(self) -> dict[str, tuple[int, int]]:
        """``{org_id: (active instances, all instances)}``."""
        rows = await self.db.fetch(
            "SELECT org_id, count(*) FILTER (WHERE active) AS active, count(*) AS total"
            " FROM instances GROUP BY org_id"
        )
        return {row["org_id"]: (row["active"], row["total"]) for row in rows}
