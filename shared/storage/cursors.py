"""Cursors: where the last incremental listing of an object stopped."""

from __future__ import annotations

from typing import Literal

from shared.storage.db import Database

Direction = Literal["push", "pull"]


class CursorStore:
    """One value per (instance, object, direction). Raises ``InfrastructureError``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, instance_id: str, object_name: str, direction: Direction) -> str | None:
        """The stored cursor, or ``None`` before the first run."""
        return await self.db.fetchval(
            "SELECT value FROM cursors WHERE instance_id = %s AND object = %s AND direction = %s",
            (instance_id, object_name, direction),
        )

    async def set(self, instance_id: str, object_name: str, direction: Direction,
                  value: str) -> None:
        """Store ``value`` (insert or replace)."""
        await self.db.execute(
            "INSERT INTO cursors (instance_id, object, direction, value) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (instance_id, object, direction)"
            " DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
            " WHERE cursors.value IS DISTINCT FROM EXCLUDED.value",
            (instance_id, object_name, direction, value),
        )

    async def reset(self, instance_id: str, object_name: str | None = None) -> int:
        """Forget cursors of an instance (one object or all), so the next run lists everything."""
        if object_name is None:
            return await self.db.execute("DELETE FROM cursors WHERE instance_id = %s",
                                         (instance_id,))
        return await self.db.execute(
            "DELETE FROM cursors WHERE instance_id = %s AND object = %s",
            (instance_id, object_name),
        )
