"""Batch ids: whether an audit batch committed, when the answer to its commit was lost.

Every batch the audit writer stores gets a new id, inserted into ``audit_batches`` by
the batch's own statement (:data:`shared.audit.writer.INSERT_SQL`), which commits on
its own. When that round trip fails, the batch may have committed
or not; writing its rows again could store them twice. :func:`batch_committed` tells
which, for good (docs/architecture.md §6):

* it inserts the same id marked ``abandoned``. PostgreSQL makes the insert wait while
  a transaction holding that id is still in progress (the old one, committing), so
  the answer is never premature;
* a conflict with a row not marked abandoned: the batch committed;
* a new row: the batch did not commit, and never will — its transaction, should its
  ``COMMIT`` still reach the server, would now conflict with the abandoned id and roll
  back. Its rows may be written again.

Asking twice gives the same answer (a lost answer to the question itself is harmless).
Ids are UUIDv7 (RFC 9562): their first 48 bits are the time in milliseconds, so ids
older than :data:`RETENTION_SECONDS` are pruned by a range of the primary key
(:func:`prune_batch_ids`).
"""

from __future__ import annotations

import time
import uuid

from shared.ids import uuid7
from shared.storage.db import Database

#: How long a batch id is kept: longer than any writer waits to learn a commit's fate.
RETENTION_SECONDS = 3600.0
#: How long the question waits for a commit still in progress before it is asked again.
LOCK_TIMEOUT = "10s"

_CLAIM_SQL = ("INSERT INTO audit_batches (id, abandoned) VALUES (%s, true)"
              " ON CONFLICT (id) DO NOTHING RETURNING id")


def new_batch_id(now: float | None = None) -> uuid.UUID:
    """A new UUIDv7 (:func:`shared.ids.uuid7`): ``now`` (default: the clock) in
    milliseconds, then 74 random bits."""
    return uuid7(now)


def batch_time(batch_id: uuid.UUID) -> float:
    """When a UUIDv7 was made, in seconds since the epoch."""
    return (batch_id.int >> 80) / 1000


def oldest_kept(now: float, retention: float = RETENTION_SECONDS) -> uuid.UUID:
    """The smallest id made at or after ``now - retention``: every smaller one may go."""
    return uuid.UUID(int=_millis(now - retention) << 80)


def _millis(seconds: float) -> int:
    return round(seconds * 1000)


async def batch_committed(db: Database, batch_id: uuid.UUID) -> bool:
    """Whether the batch ``batch_id`` committed; see the module docstring.

    Once this returns ``False`` the batch never commits. Raises
    :class:`~shared.errors.InfrastructureError` when PostgreSQL cannot answer (or a
    commit in progress holds the id longer than :data:`LOCK_TIMEOUT`): ask again.
    """
    async with db.transaction() as conn:
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        claimed = await (await conn.execute(_CLAIM_SQL, (batch_id,))).fetchone()
        if claimed is not None:
            return False  # committed at the block's end; asked again, the conflict says so
        row = await (await conn.execute(
            "SELECT abandoned FROM audit_batches WHERE id = %s", (batch_id,))).fetchone()
    return row is not None and row["abandoned"] is False


async def prune_batch_ids(db: Database, now: float | None = None,
                          retention: float = RETENTION_SECONDS) -> int:
    """Delete the batch ids older than ``retention``; return how many.

    Raises :class:`~shared.errors.InfrastructureError`.
    """
    floor = oldest_kept(time.time() if now is None else now, retention)
    return await db.execute("DELETE FROM audit_batches WHERE id < %s", (floor,))
