"""Pull cursors: where the incremental listing of an object stands (per instance and object).

A listing walks pages; after every page whose messages the broker confirmed, the next
page is stored as ``resume`` (with the ``since`` the listing started from and the
highest modification time seen so far). When the last page is confirmed, that highest
time becomes the ``value`` and ``resume`` is cleared. A discovery killed mid-way
therefore resumes at the first page whose messages were not all confirmed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from shared.storage.db import Database
from shared.storage.locks import advisory_lock


@dataclasses.dataclass(frozen=True, slots=True)
class PullCursor:
    """One ``pull_cursors`` row."""

    value: datetime | None = None  # the highest modification time of the last full listing
    resume: dict[str, Any] | None = None  # the next page of a listing in progress
    listing_since: datetime | None = None  # the since of the listing in progress
    listing_high: datetime | None = None  # the highest time that listing has seen
    pages: int = 0  # pages of that listing confirmed so far


class PullCursorStore:
    """Reads and advances pull cursors. Every method raises ``InfrastructureError``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, instance_id: str, object_name: str) -> PullCursor:
        """The object's cursor (an empty one before the first listing)."""
        row = await self.db.fetchrow(
            "SELECT value, resume, listing_since, listing_high, pages FROM pull_cursors"
            " WHERE instance_id = %s AND object = %s", (instance_id, object_name))
        return PullCursor() if row is None else PullCursor(**row)

    async def save_progress(self, instance_id: str, object_name: str, *,
                            resume: dict[str, Any], since: datetime | None,
                            high: datetime | None, pages: int) -> None:
        """A page is confirmed: the listing continues at ``resume``."""
        await self.db.execute(
            "INSERT INTO pull_cursors (instance_id, object, resume, listing_since,"
            " listing_high, pages) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (instance_id, object) DO UPDATE SET resume = EXCLUDED.resume,"
            " listing_since = EXCLUDED.listing_since, listing_high = EXCLUDED.listing_high,"
            " pages = EXCLUDED.pages, updated_at = now()",
            (instance_id, object_name, Jsonb(resume), since, high, pages))

    async def finish(self, instance_id: str, object_name: str, high: datetime | None) -> None:
        """The last page is confirmed: ``high`` becomes the cursor (kept when ``None``:
        a listing that saw no record does not move it back)."""
        await self.db.execute(
            "INSERT INTO pull_cursors (instance_id, object, value) VALUES (%s, %s, %s)"
            " ON CONFLICT (instance_id, object) DO UPDATE SET"
            " value = CASE WHEN EXCLUDED.value IS NULL THEN pull_cursors.value"
            "  ELSE greatest(pull_cursors.value, EXCLUDED.value) END,"
            " resume = NULL, listing_since = NULL, listing_high = NULL, pages = 0,"
            " updated_at = now()",
            (instance_id, object_name, high))

    async def reset(self, instance_id: str, object_name: str | None = None) -> int:
        """Forget the cursors of an instance (one object or all)."""
        if object_name is None:
            return await self.db.execute("DELETE FROM pull_cursors WHERE instance_id = %s",
                                         (instance_id,))
        return await self.db.execute(
            "DELETE FROM pull_cursors WHERE instance_id = %s AND object = %s",
            (instance_id, object_name))


#: Advisory-lock class of discoveries (the others: migrate, partitions, config_sync).
DISCOVERY_LOCK_CLASS = 0x62737376


@contextlib.asynccontextmanager
async def discovery_lock(db: Database, instance_id: str) -> AsyncIterator[bool]:
    """Hold the instance's discovery lock for the block (``shared.storage.locks``);
    yields ``False`` at once when another discovery holds it."""
    async with advisory_lock(db, DISCOVERY_LOCK_CLASS, instance_id) as held:
        yield held
