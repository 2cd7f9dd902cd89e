"""Pull discovery end to end over the real services: a real local third party
(``listing_server``), the real RabbitMQ (``puller`` queue) and PostgreSQL (instances,
``pull_cursors``, ``audit_log``).

What is proved: N records over several pages become N pull messages in the ``puller``
queue, payload inline, routed ``<entity>.upsert.<org>.<instance>``, and the cursor is
stored; a second run with no change publishes only the records of the overlap window
(the cursor minus 60 s); ``--full`` lists everything again; a discovery that fails
mid-way is audited with the page where it stopped and the next run resumes at that
page (every record published, none twice); ``pull.read`` or a record over 64 KB sends
the external id only; a foreign next link fails the discovery, audited.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from services.dispatcher.discovery import MAX_INLINE_BYTES, OVERLAP, Discovery
from services.dispatcher.listing import ListingRetry
from shared.audit.writer import AuditWriter
from shared.installation.applying import apply
from shared.messaging.connection import open_connection
from shared.messaging.publisher import Publisher
from shared.messaging.topology import PULLER
from shared.runtime import InstanceRegistry
from shared.storage.db import Database
from shared.storage.pull_cursors import PullCursorStore
from tests.fixtures.amqp import TestTopology
from tests.integration.listing_server import ListingServer, listing_connector, stamp

ORG, INSTANCE = "org-1", "inst-1"
COUNT = 35


@pytest.fixture
def server() -> Iterator[ListingServer]:
    with ListingServer(COUNT, size=10) as running:
        yield running


async def install(db: Database, tmp_path: Path, server_url: str, *, read: bool = False,
                  sorted_page: bool = False) -> None:
    spec = listing_connector(tmp_path, read=read, sorted_page=sorted_page)
    installation = {
        "timezone": "UTC",
        "connectors": [{"id": "listing", "spec": str(spec)}],
        "organizations": [{"id": ORG, "name": "Org", "instances": [{
            "id": INSTANCE, "name": "Listing", "connector": "listing", "server": server_url,
            "permissions": {"account": {"pull": ["create", "update"]}}}]}],
    }
    path = tmp_path / "installation.json"
    path.write_text(json.dumps(installation))
    await apply(db, path)


class Harness:
    def __init__(self, db: Database, topology: TestTopology, publisher: Publisher,
                 audit: AuditWriter, registry: InstanceRegistry) -> None:
        self.db, self.topology, self.publisher = db, topology, publisher
        self.audit, self.registry = audit, registry
        self.cursors = PullCursorStore(db)

    async def discovery(self) -> Discovery:
        ctx = await self.registry.get(INSTANCE)
        assert ctx is not None
        return Discovery(ctx, publisher=self.publisher, cursors=self.cursors, audit=self.audit,
                         run_id="run-1", retry=ListingRetry(delays=(0.05,)))

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(m.body) | {"_routing_key": m.routing_key}
                for m in self.topology.peek(PULLER, limit=1000)]

    async def audit_rows(self) -> list[dict[str, Any]]:
        return await self.db.fetch(
            "SELECT outcome, error_message, details FROM audit_log WHERE action = 'discover'"
            " ORDER BY at, id")


@pytest.fixture
async def harness(db: Database, topology: TestTopology) -> AsyncIterator[Harness]:
    conn = await open_connection(topology.url, "bss-sync test-discovery")
    registry = InstanceRegistry(db)
    try:
        publisher = await Publisher.open(conn)
        async with AuditWriter(db, interval=0.02) as audit:
            yield Harness(db, topology, publisher, audit, registry)
    finally:
        await registry.aclose()
        await conn.close()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def discover(harness: Harness, object_name: str = "Items_page", **kw: Any) -> Any:
    discovery = await harness.discovery()
    return await discovery.discover(discovery.ctx.connector.object(object_name), **kw)


async def test_records_over_pages_become_messages_and_the_cursor_is_stored(
        harness, server, tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    summary = await discover(harness)
    assert (summary.error, summary.records, summary.published, summary.pages) == (
        None, COUNT, COUNT, 5)  # 4 pages of records and the empty page that ends the walk
    harness.topology.wait_ready(PULLER, COUNT)
    messages = harness.messages()
    assert sorted(m["external_id"] for m in messages) == [r["id"] for r in server.records]
    assert all(m["record"] == server.records[int(m["external_id"][1:])] for m in messages)
    assert {(m["_routing_key"], m["direction"], m["action"], m["trigger"], m["run_id"])
            for m in messages} == {(f"account.upsert.{ORG}.{INSTANCE}", "pull", "upsert",
                                    "manual", "run-1")}
    cursor = await harness.cursors.get(INSTANCE, "Items_page")
    assert (cursor.value, cursor.resume) == (_time(stamp(COUNT - 1)), None)
    rows = await harness.audit_rows()
    assert [(r["outcome"], r["details"]["stage"]) for r in rows] == [
        ("dispatched", "started"), ("dispatched", "finished")]
    assert rows[1]["details"]["published"] == COUNT


async def test_a_second_run_without_changes_publishes_the_overlap_window_only(
        harness, server, tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    await discover(harness)
    harness.topology.wait_ready(PULLER, COUNT)
    server.requests.clear()

    again = await discover(harness)
    window = int(OVERLAP.total_seconds() // 10) + 1  # updatedAt are 10 s apart, bounds kept
    assert (again.error, again.published) == (None, window)
    assert again.since == _time(stamp(COUNT - 1)) - OVERLAP
    assert server.requests[0][2]["updated_gte"] == stamp(COUNT - 1 - window + 1)
    harness.topology.wait_ready(PULLER, COUNT + window)

    server.add(3)  # three records changed since: listed with the window
    third = await discover(harness)
    assert third.published == window + 3
    assert (await harness.cursors.get(INSTANCE, "Items_page")).value == _time(stamp(COUNT + 2))

    full = await discover(harness, full=True)
    assert (full.since, full.published) == (None, COUNT + 3)


async def test_a_discovery_stopped_mid_way_resumes_at_the_page_it_stopped(
        harness, server, tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    server.fail[("/items/page", 3)] = [400]  # permanent: the discovery stops there
    failed = await discover(harness)
    assert (failed.published, failed.pages) == (20, 2)
    assert failed.error is not None and "400" in failed.error
    cursor = await harness.cursors.get(INSTANCE, "Items_page")
    assert (cursor.value, cursor.pages, cursor.resume["query"]["_page"]) == (None, 2, 3)
    rows = await harness.audit_rows()
    assert [(r["outcome"], r["details"]["stage"]) for r in rows] == [
        ("dispatched", "started"), ("failed", "failed")]
    assert rows[1]["details"]["stopped_at_page"] == 3
    assert "400" in rows[1]["error_message"]

    resumed = await discover(harness)
    assert (resumed.error, resumed.resumed_at_page, resumed.published) == (None, 3, COUNT - 20)
    harness.topology.wait_ready(PULLER, COUNT)
    ids = [m["external_id"] for m in harness.messages()]
    assert sorted(ids) == [r["id"] for r in server.records]  # each once: none missed, none twice
    cursor = await harness.cursors.get(INSTANCE, "Items_page")
    assert (cursor.value, cursor.resume) == (_time(stamp(COUNT - 1)), None)


@pytest.mark.parametrize("sorted_page", [True, False], ids=["sorted", "page-numbers"])
async def test_a_listing_ordered_by_time_restarts_from_its_highest_confirmed_time(
        harness, server, tmp_path, sorted_page: bool) -> None:
    """A record changed while a discovery was stopped moves to the end of a listing
    ordered by time, and every record after it moves up one place: resuming at the
    stored page number skips the one that moved onto the last confirmed page. Declared
    ``incremental.sorted``, the listing starts over from its highest confirmed time minus
    the overlap instead, and misses nothing."""
    await install(harness.db, tmp_path, server.url, sorted_page=sorted_page)
    server.fail[("/items/page", 3)] = [400]
    failed = await discover(harness)
    assert (failed.published, failed.pages) == (20, 2)
    server.touch("c00005")  # changed while stopped: c00020 moves up onto page 2

    resumed = await discover(harness)
    assert resumed.error is None
    harness.topology.wait_ready(PULLER, failed.published + resumed.published)
    published = [m["external_id"] for m in harness.messages()]
    missed = sorted({r["id"] for r in server.records} - set(published))
    if sorted_page:
        assert missed == [] and resumed.resumed_at_page is None
        assert published.count("c00005") == 2  # before and after its change
        # from the highest confirmed time (c00019's) minus 60 s: c00013 on, not page 1
        assert "c00012" not in published[20:] and "c00013" in published[20:]
    else:  # the page number kept: the record shifted onto page 2 is never listed
        assert missed == ["c00020"] and resumed.resumed_at_page == 3


async def test_retries_spent_fail_the_discovery_audited(harness, server, tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    server.fail[("/items/page", 2)] = [503] * 5
    failed = await discover(harness)
    assert failed.published == 10 and failed.error is not None
    assert len(server.paths("/items/page")) == 1 + 2  # one retry (the harness's ladder)
    [_, row] = await harness.audit_rows()
    assert (row["outcome"], row["details"]["stopped_at_page"]) == ("failed", 2)


async def test_a_foreign_next_link_fails_the_discovery_audited(harness, server,
                                                               tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    server.next_host = server.other_url
    failed = await discover(harness, "Items_link")
    assert failed.published == 10
    assert f"{server.other_url}/items/link" in (failed.error or "")
    assert server.paths() == ["/items/link"]
    [_, row] = await harness.audit_rows()
    assert (row["outcome"], row["details"]["stopped_at_page"]) == ("failed", 2)
    assert "another host" in row["error_message"]


async def test_pull_read_or_a_large_record_sends_the_external_id_only(
        harness, server, tmp_path) -> None:
    server.records[3]["name"] = "x" * (MAX_INLINE_BYTES + 10)
    await install(harness.db, tmp_path, server.url)
    inline = await discover(harness)
    assert (inline.published, inline.by_reference) == (COUNT, 1)
    harness.topology.wait_ready(PULLER, COUNT)
    by_id = {m["external_id"]: m for m in harness.messages()}
    assert "record" not in by_id["c00003"] and by_id["c00004"]["record"]["name"] == "Company 4"

    await install(harness.db, tmp_path, server.url, read=True)
    await harness.registry.aclose()
    harness.registry = InstanceRegistry(harness.db)
    by_reference = await discover(harness, "Items_cursor", full=True)
    assert (by_reference.published, by_reference.by_reference) == (COUNT, COUNT)
    harness.topology.wait_ready(PULLER, 2 * COUNT)
    assert sum("record" not in m for m in harness.messages()) == COUNT + 1


async def test_only_objects_the_instance_may_pull(harness, server, tmp_path) -> None:
    await install(harness.db, tmp_path, server.url)
    discovery = await harness.discovery()
    assert len(discovery.objects("account")) == 7
    assert discovery.objects("contact") == []


async def test_one_discovery_of_an_instance_at_a_time(harness, server, tmp_path,
                                                      database_url) -> None:
    from services.dispatcher.pull import DiscoveryRefused, run_pull
    from shared.settings import Settings
    from shared.storage.pull_cursors import discovery_lock

    await install(harness.db, tmp_path, server.url)
    settings = Settings(database_url=database_url, amqp_url=harness.topology.url)
    async with discovery_lock(harness.db, INSTANCE) as held:
        assert held
        with pytest.raises(DiscoveryRefused, match="already running"):
            await run_pull(INSTANCE, entity="account", settings=settings)
    assert server.paths() == []
    report = await run_pull(INSTANCE, entity="account", settings=settings)
    assert report.ok and len(report.objects) == 7
    assert report.counts()["published"] == 7 * COUNT
