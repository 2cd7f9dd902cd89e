"""Fresh planner statistics on the sandbox's ``records`` after bursts of writes.

PostgreSQL plans a query from statistics that ``ANALYZE`` gathers; autovacuum runs it
once a table changed enough, minutes late after a bulk load, and never where it is
off. A table filled meanwhile is planned blind: the sandbox's reads are written so
that no guess can make them read a whole collection (``sandbox.store``), but a blind
planner still costs every other query on guesses. So the sandbox analyzes the table
itself, as autovacuum would but right away: after its seed, and whenever the writes
since the last ``ANALYZE`` pass a threshold — at least :data:`ANALYZE_AFTER`, and a
fifth of the rows the table held then (autovacuum's scale factor is a tenth), so the
work stays a small share of the writes however big the table grows.

The ``ANALYZE`` runs in a background task, one at a time, on a pooled connection:
a write never waits for it, and its lock (``SHARE UPDATE EXCLUSIVE``) blocks neither
reads nor writes. A failure is logged and the next burst tries again.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from shared.errors import InfrastructureError
from shared.storage.db import Database

log = structlog.get_logger("sandbox.statistics")

#: Writes after which ``records`` is analyzed again, at the least.
ANALYZE_AFTER = 1000
#: Beyond that, the share of the table's rows (at the last ``ANALYZE``) written since.
ANALYZE_FRACTION = 0.2


class RecordStatistics:
    """Counts the committed writes to ``records`` and analyzes it after each burst."""

    def __init__(self, db: Database, *, after: int = ANALYZE_AFTER,
                 fraction: float = ANALYZE_FRACTION) -> None:
        """``after`` = 0 turns the counting off (``analyze`` still works)."""
        if after < 0 or fraction < 0:
            raise ValueError("after and fraction must not be negative")
        self.db = db
        self.after = after
        self.fraction = fraction
        self._written = 0
        self._threshold = after
        self._running: asyncio.Task[None] | None = None

    def wrote(self, count: int = 1) -> None:
        """Count ``count`` committed writes; past the threshold, start an ``ANALYZE`` in
        the background unless one is running. Never waits, never raises."""
        if self.after == 0:
            return
        self._written += count
        if self._written < self._threshold or self.running:
            return
        self._written = 0
        self._running = asyncio.get_running_loop().create_task(self._analyze_quietly())

    @property
    def running(self) -> bool:
        return self._running is not None and not self._running.done()

    async def analyze(self) -> None:
        """``ANALYZE records`` now; the next threshold follows from the rows it counted.
        Raises :class:`~shared.errors.InfrastructureError`."""
        await self.db.execute("ANALYZE records")
        rows = await self.db.fetchval(
            "SELECT reltuples FROM pg_class WHERE oid = 'records'::regclass")
        self._threshold = max(self.after, int(max(rows or 0, 0) * self.fraction))

    async def close(self) -> None:
        """Wait for a running ``ANALYZE`` to end (before the pool closes)."""
        if self._running is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._running

    async def _analyze_quietly(self) -> None:
        try:
            await self.analyze()
        except InfrastructureError as exc:
            log.warning("could not analyze the records table; the next burst retries",
                        error=str(exc))


__all__ = ["ANALYZE_AFTER", "ANALYZE_FRACTION", "RecordStatistics"]
