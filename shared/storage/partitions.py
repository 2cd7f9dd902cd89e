"""Monthly partitions of ``audit_log``, created ahead of time.

Partitions are named ``audit_log_YYYY_MM`` and cover ``[first of month, first of
next month)`` in UTC. Rows that landed in the DEFAULT partition (nothing existed
for their month) are moved into the month's partition when it is created, in
the same transaction, because PostgreSQL refuses to attach a range the DEFAULT
partition already holds rows for.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from shared.storage.db import Connection, Database, quote_ident

DEFAULT_MONTHS_AHEAD = 3
#: Second advisory-lock class: partition maintenance (first is ``migrate.LOCK_CLASS``).
PARTITION_LOCK_CLASS = 0x62737374


def partition_name(month: date) -> str:
    """``audit_log_YYYY_MM`` for the month containing ``month``."""
    return f"audit_log_{month.year:04d}_{month.month:02d}"


def add_months(month: date, count: int) -> date:
    """The first day of the month ``count`` months after ``month``'s."""
    index = month.year * 12 + (month.month - 1) + count
    return date(index // 12, index % 12 + 1, 1)


def months_to_cover(today: date, months_ahead: int) -> list[date]:
    """First days of the current month and the ``months_ahead`` following ones."""
    first = today.replace(day=1)
    return [add_months(first, n) for n in range(months_ahead + 1)]


_PARTITIONS_SQL = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'audit_log'::regclass"
)


async def existing_partitions(db: Database) -> set[str]:
    """Names of the partitions attached to ``audit_log`` (``audit_log_default`` included)."""
    return {row["relname"] for row in await db.fetch(_PARTITIONS_SQL)}


async def ensure_audit_partitions(
    db: Database, months_ahead: int = DEFAULT_MONTHS_AHEAD, *, today: date | None = None
) -> list[str]:
    """Create the partitions for this month and ``months_ahead`` more; return those created.

    Safe to call concurrently from several processes (advisory lock) and cheap
    when everything exists. Raises :class:`shared.errors.InfrastructureError`.
    """
    today = today or datetime.now(UTC).date()
    wanted = months_to_cover(today, months_ahead)
    existing = await existing_partitions(db)
    missing = [m for m in wanted if partition_name(m) not in existing]
    if not missing:
        return []
    created: list[str] = []
    async with db.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                           (PARTITION_LOCK_CLASS, db.schema))
        existing = await _existing(conn)
        for month in missing:
            if partition_name(month) not in existing:
                await _create_partition(conn, month)
                created.append(partition_name(month))
    return created


async def _existing(conn: Connection) -> set[str]:
    cur = await conn.execute(_PARTITIONS_SQL)
    return {row["relname"] for row in await cur.fetchall()}


async def _create_partition(conn: Connection, month: date) -> None:
    name = quote_ident(partition_name(month))
    start, end = month.isoformat(), add_months(month, 1).isoformat()
    bounds = f"FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"
    execute = conn.execute
    await execute(f"CREATE TABLE {name} (LIKE audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    stranded = "WHERE at >= %s::timestamptz AND at < %s::timestamptz"
    params = (f"{start} 00:00:00+00", f"{end} 00:00:00+00")
    await execute("SET LOCAL bss_sync.audit_maintenance = 'on'")
    await execute(f"INSERT INTO {name} OVERRIDING SYSTEM VALUE"
                  f" SELECT * FROM audit_log_default {stranded}", params)
    await execute(f"DELETE FROM audit_log_default {stranded}", params)
    await execute("SET LOCAL bss_sync.audit_maintenance = 'off'")
    await execute(f"ALTER TABLE audit_log ATTACH PARTITION {name} FOR VALUES {bounds}")
