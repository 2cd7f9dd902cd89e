"""Versioned plain-SQL migrations: ``shared/storage/migrations/NNNN_name.sql``.

``upgrade(db)`` applies the files not yet recorded in ``schema_migrations``, in
version order, each in its own transaction, while holding a PostgreSQL advisory
lock for the schema, so two processes upgrading at once are safe: the second
waits, then finds nothing to do. A file whose content changed after it was
applied is an error (:class:`MigrationError`), never silently re-run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from shared.errors import ConfigurationError
from shared.storage.db import Database, quote_ident
from shared.storage.partitions import ensure_audit_partitions

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: First key of the two-key advisory locks bss-sync takes (ASCII "bsss").
LOCK_CLASS = 0x62737373
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(ConfigurationError):
    """The migration files and the database disagree (a changed applied file)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: str
    name: str
    sql: str
    checksum: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``NNNN_name.sql`` in ``directory``, in version order.

    Raises :class:`MigrationError` on a misnamed file or a duplicated version.
    """
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version, name = match.groups()
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        data = path.read_bytes()
        found[version] = Migration(version, name, data.decode(), hashlib.sha256(data).hexdigest())
    return [found[v] for v in sorted(found)]


async def upgrade(db: Database, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations; return the versions applied by this call.

    Also creates the schema if missing and the audit partitions ahead.
    Raises :class:`MigrationError` when an applied file changed,
    :class:`shared.errors.InfrastructureError` when PostgreSQL fails.
    """
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[str] = []
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, db.schema))
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(db.schema)}")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version, checksum FROM schema_migrations")
            recorded = {row["version"]: row["checksum"] for row in await cur.fetchall()}
            for migration in migrations:
                if migration.version in recorded:
                    _check_unchanged(migration, recorded[migration.version])
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))",
                               (LOCK_CLASS, db.schema))
    await ensure_audit_partitions(db)
    return applied_now


def _check_unchanged(migration: Migration, checksum: str) -> None:
    if checksum != migration.checksum:
        raise MigrationError(
            f"migration {migration.version}_{migration.name}.sql changed after it was applied "
            f"(recorded sha256 {checksum[:12]}…, file {migration.checksum[:12]}…); "
            "add a new migration instead of editing an applied one"
        )


async def applied_versions(db: Database) -> list[str]:
    """The versions recorded in ``schema_migrations`` (empty before the first upgrade)."""
    exists = await db.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [row["version"] for row in rows]
