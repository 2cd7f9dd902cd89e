"""The sandbox's own tables, in its own PostgreSQL schema (default ``sandbox``).

``records`` holds every entity's rows (the stored JSON already carries the system
fields, so a read is one query and no re-encoding); ``outbox`` the events waiting
for the relay; ``idempotency_keys`` the first answer to each keyed create. A
statement trigger on ``outbox`` NOTIFYs :func:`notify_channel` so the relay wakes
up as soon as a write commits.

Idempotent (``IF NOT EXISTS`` / ``OR REPLACE``) and serialized by an advisory lock,
so several processes may run it at start.
"""

from __future__ import annotations

from shared.storage.db import Database, check_schema_name, quote_ident

_DDL = """
CREATE TABLE IF NOT EXISTS {s}.records (
    org_id      text        NOT NULL,
    entity      text        NOT NULL,
    id          text        NOT NULL,
    data        jsonb       NOT NULL,
    version     integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    PRIMARY KEY (org_id, entity, id)
);
CREATE INDEX IF NOT EXISTS records_changed
    ON {s}.records (org_id, entity, updated_at, id) WHERE deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS {s}.outbox (
    id           bigserial   PRIMARY KEY,
    routing_key  text        NOT NULL,
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_pending ON {s}.outbox (id) WHERE published_at IS NULL;

CREATE TABLE IF NOT EXISTS {s}.idempotency_keys (
    org_id      text        NOT NULL,
    entity      text        NOT NULL,
    key         text        NOT NULL,
    record_id   text        NOT NULL,
    response    jsonb,
    version     integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, entity, key)
);

CREATE OR REPLACE FUNCTION {s}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({channel}, '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER outbox_notify AFTER INSERT ON {s}.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.outbox_notify();
"""


def notify_channel(schema: str) -> str:
    """The NOTIFY channel the outbox trigger of ``schema`` signals (``sandbox_outbox``)."""
    return f"{check_schema_name(schema)}_outbox"


def lock_key(schema: str, purpose: str) -> str:
    """Text hashed into an advisory lock key (``hashtext``) for ``schema``."""
    return f"bss-sync sandbox {purpose} {schema}"


async def migrate(db: Database, schema: str) -> None:
    """Create the schema and its tables if missing. Raises ``InfrastructureError``."""
    name = quote_ident(check_schema_name(schema))
    channel = "'" + notify_channel(schema) + "'"
    async with db.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                           (lock_key(schema, "migration"),))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
        await conn.execute(_DDL.format(s=name, channel=channel))
