"""Pull discovery of deleted records over the real services: the local third party
(``listing_server``, objects with ``pull.deleted`` and ``pull.deletedList``), the real
RabbitMQ (``puller`` queue) and PostgreSQL (``pull_cursors``, ``audit_log``).

What is proved: a tombstoned record (``archived: true``) is published like any other,
its record inline, for the puller to decide; the ids of ``pull.deletedList`` become
``delete`` messages carrying the external id only (routed
``<entity>.delete.<org>.<instance>``), listed with their own pagination, records
pointer and incremental cursor (``<object>#deleted``); a deleted-ids listing that
fails is audited with the listing and page where it stopped and resumes there; a
listed item without an id is audited, not published. (The puller's side — the BSS
record deleted, or the delete skipped with its reason — is ``tests/e2e/test_pull_deletes.py``.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.dispatcher.discovery import DELETED_CURSOR_SUFFIX, OVERLAP
from shared.audit.writer import AuditWriter
from shared.installation.applying import apply
from shared.messaging.connection import open_connection
from shared.messaging.publisher import Publisher
from shared.messaging.topology import PULLER
from shared.runtime import InstanceRegistry
from shared.storage.db import Database
from tests.fixtures.amqp import TestTopology
from tests.integration.listing_server import ListingServer, listing_connector, stamp
from tests.integration.test_pull_discovery import INSTANCE, ORG, Harness, _time, discover

COUNT = 25
DELETED_CURSOR = "Items_page" + DELETED_CURSOR_SUFFIX


@pytest.fixture
def server() -> Iterator[ListingServer]:
    with ListingServer(COUNT, size=10) as running:
        yield running


@pytest.fixture
async def harness(db: Database, topology: TestTopology) -> AsyncIterator[Harness]:
    conn = await open_connection(topology.url, "bss-sync test-deletes")
    registry = InstanceRegistry(db)
    try:
        publisher = await Publisher.open(conn)
        async with AuditWriter(db, interval=0.02) as audit:
            yield Harness(db, topology, publisher, audit, registry)
    finally:
        await registry.aclose()
        await conn.close()


async def install(db: Database, tmp_path: Path, server_url: str) -> None:
    installation = {
        "timezone": "UTC",
        "connectors": [{"id": "listing",
                        "spec": str(listing_connector(tmp_path, deletes=True))}],
        "organizations": [{"id": ORG, "name": "Org", "instances": [{
            "id": INSTANCE, "name": "Listing", "connector": "listing", "server": server_url,
            "permissions": {"account": {"pull": ["create", "update", "delete"]}}}]}],
    }
    path = tmp_path / "installation.json"
    path.write_text(json.dumps(installation))
    await apply(db, path)


def by_action(harness: Harness) -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for message in harness.messages():
        found.setdefault(message["action"], {})[message["external_id"]] = message
    return found


async def test_a_tombstoned_record_is_published_with_its_record(harness, server,
                                                                 tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    server.archive("c00007")
    summary = await discover(harness)
    assert (summary.error, summary.published, summary.deleted_ids) == (None, COUNT, 0)
    harness.topology.wait_ready(PULLER, COUNT)
    upserts = by_action(harness)["upsert"]
    assert len(upserts) == COUNT
    assert upserts["c00007"]["record"] == {"id": "c00007", "name": "Company 7",
                                           "updatedAt": stamp(COUNT), "archived": True}
    assert "delete" not in by_action(harness)


async def test_listed_deleted_ids_become_delete_messages_with_their_own_cursor(
        harness, server, tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    removed = [f"c{i:05d}" for i in range(3, 15)]  # 12 ids: two pages of the deleted list
    for record_id in removed:
        server.remove(record_id)
    summary = await discover(harness)
    assert (summary.error, summary.published, summary.deleted_ids) == (
        None, COUNT - len(removed) + len(removed), len(removed))
    assert summary.cursor == _time(stamp(COUNT - 1))  # the cursor of pull.list, not of deletes
    harness.topology.wait_ready(PULLER, COUNT)
    messages = by_action(harness)
    assert sorted(messages["delete"]) == removed
    assert sorted(messages["upsert"]) == sorted({f"c{i:05d}" for i in range(COUNT)}
                                                - set(removed))
    for message in messages["delete"].values():
        assert "record" not in message
        assert message["_routing_key"] == f"account.delete.{ORG}.{INSTANCE}"
        assert (message["direction"], message["run_id"]) == ("pull", "run-1")
    deleted_pages = [q for _, p, q, _ in server.requests if p == "/items/deleted"]
    assert [q["_page"] for q in deleted_pages] == ["1", "2", "3"]  # the empty page ends it
    assert all("updated_gte" not in q for q in deleted_pages)  # first run: everything
    cursor = await harness.cursors.get(INSTANCE, DELETED_CURSOR)
    last_deleted = server.deleted[-1]["deletedAt"]
    assert (cursor.value, cursor.resume) == (_time(last_deleted), None)
    [_, finished] = await harness.audit_rows()
    assert (finished["details"]["deleted_ids"], finished["details"]["published"]) == (
        len(removed), COUNT)

    # The next run asks only for ids deleted since that cursor (minus the overlap).
    server.requests.clear()
    server.remove("c00020")
    again = await discover(harness)
    asked = next(q for _, p, q, _ in server.requests if p == "/items/deleted")
    since = _time(last_deleted) - OVERLAP
    assert asked["updated_gte"] == since.isoformat().replace("+00:00", "Z")
    recent = [d["id"] for d in server.deleted if _time(d["deletedAt"]) >= since]
    assert "c00020" in recent and again.deleted_ids == len(recent) < len(removed) + 1


async def test_a_failed_deleted_listing_is_audited_where_it_stopped_then_resumes(
        harness, server, tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    removed = [f"c{i:05d}" for i in range(COUNT)]
    for record_id in removed:
        server.remove(record_id)  # 25 deleted ids: 3 pages of 10
    server.fail[("/items/deleted", 2)] = [400]
    failed = await discover(harness)
    assert (failed.deleted_ids, failed.listing) == (10, "deletedList")
    assert failed.error is not None and "400" in failed.error
    [_, row] = await harness.audit_rows()
    assert row["outcome"] == "failed"
    assert (row["details"]["stopped_in"], row["details"]["stopped_at_page"]) == (
        "deletedList", 2)
    assert (await harness.cursors.get(INSTANCE, DELETED_CURSOR)).resume["query"]["_page"] == 2

    resumed = await discover(harness)
    assert (resumed.error, resumed.deleted_ids) == (None, COUNT - 10)
    harness.topology.wait_ready(PULLER, COUNT)
    assert sorted(by_action(harness)["delete"]) == removed  # each once: none missed, none twice


async def test_a_listed_deleted_item_without_an_id_is_audited_not_published(
        harness, server, tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    server.remove("c00001")
    server.deleted.append({"deletedAt": stamp(COUNT + 5)})  # no id
    summary = await discover(harness)
    assert (summary.error, summary.deleted_ids, summary.without_id) == (None, 1, 1)
    rows = await harness.db.fetch(
        "SELECT error_class, error_message FROM audit_log WHERE outcome = 'failed'")
    assert [(r["error_class"], r["error_message"]) for r in rows] == [
        ("MappingError", "deletedList: record 1 of page 1 has no external id at '/id': "
                         "not pulled")]
