"""Connector documents as applied, each content version kept."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from shared.storage.db import Database


@dataclasses.dataclass(frozen=True, slots=True)
class StoredConnector:
    """One ``connectors`` row: the bundled document currently in force."""

    id: str
    title: str
    version: str
    sha256: str
    document: dict[str, Any]
    sources: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StoredConnector:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


class ConnectorStore:
    """Reads connector documents (written by ``shared.installation.apply``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, connector_id: str) -> StoredConnector | None:
        """The connector in force, or ``None``. Raises ``InfrastructureError``."""
        row = await self.db.fetchrow("SELECT * FROM connectors WHERE id = %s", (connector_id,))
        return None if row is None else StoredConnector.from_row(row)

    async def list(self) -> list[StoredConnector]:
        """Every connector, by id (documents included)."""
        rows = await self.db.fetch("SELECT * FROM connectors ORDER BY id")
        return [StoredConnector.from_row(row) for row in rows]

    async def version(self, connector_id: str, sha256: str) -> dict[str, Any] | None:
        """A document version seen before (by content hash), or ``None``."""
        return await self.db.fetchval(
            "SELECT document FROM connector_versions WHERE connector_id = %s AND sha256 = %s",
            (connector_id, sha256),
        )

    async def versions(self, connector_id: str) -> list[tuple[str, str, datetime]]:
        """``(sha256, version, first_loaded_at)`` of every version seen, oldest first."""
        rows = await self.db.fetch(
            "SELECT sha256, version, first_loaded_at FROM connector_versions"
            " WHERE connector_id = %s ORDER BY first_loaded_at, sha256",
            (connector_id,),
        )
        return [(row["sha256"], row["version"], row["first_loaded_at"]) for row in rows]
