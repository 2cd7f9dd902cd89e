"""PostgreSQL session advisory locks: one process at a time, released if it dies.

A session lock lives as long as the connection that took it: a process killed while
holding it (SIGKILL, a lost host) releases it when PostgreSQL notices the connection is
gone. That makes a lock a liveness probe too: a ``running`` row whose lock can be taken
was left by a process that stopped (``shared.storage.runs``).

Each kind of lock has its own class (the first key); the second is ``hashtext`` of a
text key that includes the database schema, so that test schemas never collide.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from shared.storage.db import Database


@contextlib.asynccontextmanager
async def advisory_lock(db: Database, lock_class: int, key: str) -> AsyncIterator[bool]:
    """Try to take the lock ``(lock_class, key)`` for the block, on one pooled connection
    held throughout; yields whether it was taken (``False`` at once when another session
    holds it — never waits)."""
    async with db.connection() as conn:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS held",
                                    (lock_class, f"{db.schema}:{key}"))
        row = await cursor.fetchone()
        held = bool(row and (row["held"] if isinstance(row, dict) else row[0]))
        try:
            yield held
        finally:
            if held:
                await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))",
                                   (lock_class, f"{db.schema}:{key}"))
