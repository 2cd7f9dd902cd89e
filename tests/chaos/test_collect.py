"""The snapshot's reading of the BSS outbox, against a real PostgreSQL: a record's
latest event is the one the BSS wrote last, whatever its id looks like."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator

import psycopg
import pytest

from sandbox.migration import migrate
from shared.storage.db import Database, quote_ident
from tests.chaos.collect import outbox_events

pytestmark = pytest.mark.integration


@pytest.fixture
def outbox_schema(database_url: str) -> Iterator[str]:
    """A sandbox schema of the test's own (its real migration); dropped afterwards."""
    schema = f"sandbox_c_{secrets.token_hex(4)}"

    async def create() -> None:
        async with Database(database_url, schema, max_size=1) as db:
            await migrate(db, schema)

    asyncio.run(create())
    yield schema
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


def test_the_latest_event_is_the_last_written_not_the_greatest_id(
        database_url: str, outbox_schema: str) -> None:
    # ids chosen so that their text order is the reverse of the write order (the
    # chaos run CHAOS_SEED=547873 blamed a create for its record's later update)
    written = [("acc_1", "f4ec12c2-0000-0000-0000-000000000000", True),
               ("acc_1", "aac88c8b-0000-0000-0000-000000000000", True),
               ("acc_2", "99ae3d2f-0000-0000-0000-000000000000", True),
               ("acc_2", "0821e8c8-0000-0000-0000-000000000000", False),
               ("acc_3", "11111111-0000-0000-0000-000000000000", True)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for record_id, event_id, published in written:
            org = "org-other" if record_id == "acc_3" else "org-1"
            conn.execute(
                f"INSERT INTO {quote_ident(outbox_schema)}.outbox (routing_key, body,"
                " published_at) VALUES ('k', %s, CASE WHEN %s THEN now() END)",
                (json.dumps({"id": event_id, "recordId": record_id,
                             "organizationId": org}), published))
        latest, events, unpublished = outbox_events(conn, "org-1", outbox_schema)
    assert latest == {"acc_1": "aac88c8b-0000-0000-0000-000000000000",
                      "acc_2": "0821e8c8-0000-0000-0000-000000000000"}
    assert events == ["f4ec12c2-0000-0000-0000-000000000000",
                      "aac88c8b-0000-0000-0000-000000000000",
                      "99ae3d2f-0000-0000-0000-000000000000"]
    assert unpublished == 1
