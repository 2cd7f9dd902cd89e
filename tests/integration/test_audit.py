"""The audit writer (group commit) and audit search, also through the CLI."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
import structlog.testing

from shared.audit.batches import RETENTION_SECONDS, batch_committed, new_batch_id, prune_batch_ids
from shared.audit.normalise import COLUMNS
from shared.audit.record import FINAL_OUTCOMES, AuditRecord, Outcome
from shared.audit.search import AuditQuery, search
from shared.audit.settled import SettledLookup
from shared.audit.writer import AuditWriter
from shared.cli.main import main
from shared.errors import AuditRowRefused, InfrastructureError
from shared.logging import register_secret
from shared.storage.db import Database
from shared.storage.partitions import existing_partitions
from tests.fixtures.database import run_sync
from tests.fixtures.waiting import eventually
from tests.integration.pg_proxy import commit_cutter
from tests.unit.test_audit_normalise import hostile_records

pytestmark = pytest.mark.integration


def record(n: int = 0, **kw: Any) -> AuditRecord:
    fields: dict[str, Any] = {"service": "pusher", "outcome": Outcome.CREATED, "org_id": "org-1",
                              "instance_id": "inst-1", "entity": "account", "direction": "push",
                              "action": "create", "record_id": f"A-{n}",
                              "message_id": f"msg-{n}"}
    fields.update(kw)
    return AuditRecord(**fields)


# --- group commit ------------------------------------------------------------------------------


async def test_concurrent_writes_all_land_in_few_transactions(
        db: Database, audit_writer: AuditWriter) -> None:
    await asyncio.gather(*(audit_writer.write(record(n)) for n in range(2000)))
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 2000
    assert await db.fetchval("SELECT count(DISTINCT record_id) FROM audit_log") == 2000
    # shared transactions, not one per row: full batches (and a few more at the edges)
    assert audit_writer.batches_written <= 2000 // audit_writer.batch_size + 5


async def test_rows_that_came_during_a_commit_are_the_next_batch_at_once(db: Database) -> None:
    """Under load nothing waits for company: the rows that arrived while a batch
    committed are committing as soon as it has, while more keep coming every turn
    (waiting for those would hold the window's messages until a batch fills)."""
    record_id = COLUMNS.index("record_id")
    async with AuditWriter(db, batch_size=10_000, interval=60.0) as writer:
        first = asyncio.ensure_future(writer.write(record(0)))
        while not writer._inflight:  # the first batch is committing
            await asyncio.sleep(0)
        during = asyncio.gather(*(writer.write(record(n)) for n in (1, 2, 3)))
        trickled = 0
        while not first.done():  # a row every turn of the loop, however long it takes
            writer.submit(record(100 + trickled), lambda _error: None)
            trickled += 1
            await asyncio.sleep(0)
        # The turn that saw the first batch commit: the next one is already committing
        # (the writer before waited while each turn brought a row, up to 10,000 or 60 s).
        assert {"A-1", "A-2", "A-3"} <= {row[record_id] for row, _ in writer._inflight}
        await asyncio.gather(first, during)
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 4 + trickled


async def test_write_returns_only_after_the_row_is_committed(
        db: Database, audit_writer: AuditWriter, database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as observer:

        async def write_then_look(n: int) -> int:
            await audit_writer.write(record(n))
            cur = await observer.execute(
                "SELECT count(*) FROM audit_log WHERE message_id = %s", (f"msg-{n}",))
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        seen = [await write_then_look(0)]
        seen += await asyncio.gather(*(write_then_look(n) for n in range(1, 100)))
    assert seen == [1] * 100


@pytest.fixture
async def failing_inserts(db: Database) -> AsyncIterator[None]:
    """Inserting a row with ``details.fail`` aborts its transaction (serialization failure)."""
    await db.execute(
        "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'injected failure' USING ERRCODE = 'serialization_failure'; END $$")
    await db.execute("CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log"
                     " FOR EACH ROW WHEN (NEW.details ? 'fail') EXECUTE FUNCTION fail_audit()")
    try:
        yield
    finally:
        await db.execute("DROP TRIGGER fail_audit ON audit_log")
        await db.execute("DROP FUNCTION fail_audit()")


async def test_a_failing_commit_fails_every_waiter_of_the_batch(
        db: Database, failing_inserts: None) -> None:
    writer = AuditWriter(db, interval=0.2)
    await writer.start()
    try:
        innocent = [writer.write(record(n)) for n in range(49)]
        poisoned = writer.write(record(99, details={"fail": True}))
        results = await asyncio.gather(*innocent, poisoned, return_exceptions=True)
        assert all(isinstance(r, InfrastructureError) for r in results), results
        assert await db.fetchval("SELECT count(*) FROM audit_log") == 0
        await writer.write(record(100))  # the writer keeps working afterwards
        assert await db.fetchval("SELECT count(*) FROM audit_log") == 1
    finally:
        await writer.close()


@pytest.fixture
async def poison_rows(db: Database) -> AsyncIterator[None]:
    """Rows whose details carry ``poison`` violate a (test-only) check."""
    await db.execute(
        "ALTER TABLE audit_log ADD CONSTRAINT no_poison CHECK (NOT details ? 'poison')")
    try:
        yield
    finally:
        await db.execute("ALTER TABLE audit_log DROP CONSTRAINT no_poison")


async def test_a_row_refused_for_its_data_fails_only_its_writer(
        db: Database, poison_rows: None) -> None:
    writer = AuditWriter(db, interval=0.2)
    await writer.start()
    try:
        good = [writer.write(record(n)) for n in range(20)]
        bad = writer.write(record(99, details={"poison": 1}))
        results = await asyncio.gather(*good, bad, return_exceptions=True)
    finally:
        await writer.close()
    assert results[:20] == [None] * 20
    # refused for its data: writing it again would not help (not an InfrastructureError)
    assert isinstance(results[20], AuditRowRefused), results[20]
    assert "no_poison" in str(results[20])
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 20


async def test_time_and_duration_are_stored_exactly(db: Database,
                                                     audit_writer: AuditWriter) -> None:
    """PostgreSQL stores the row's instant (to the microsecond, whatever its offset; a
    time without a zone read as UTC) and the same double."""
    moments = [datetime(2026, 7, 1, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-5))),
               datetime(2026, 1, 1, 0, 0, tzinfo=UTC), datetime(2026, 3, 4, 5, 6, 7, 8)]
    durations = [0.1 + 0.2, 1e-9, 123456.789012345]
    await audit_writer.write_many([record(n, at=at, duration_ms=duration) for n, (at, duration)
                                   in enumerate(zip(moments, durations, strict=True))])
    rows = await db.fetch("SELECT at, duration_ms FROM audit_log ORDER BY record_id")
    assert [row["at"] for row in rows] == [moments[0], moments[1],
                                           moments[2].replace(tzinfo=UTC)]
    assert [row["duration_ms"] for row in rows] == durations


async def test_hostile_values_are_fitted_and_every_row_lands(
        db: Database, audit_writer: AuditWriter) -> None:
    """The unit tests' hostile records (NUL, lone surrogates, huge numbers, statuses that
    are not HTTP, long texts, deep details) against the real table, in one batch."""
    records = hostile_records(300)
    records.append(record(1, http_status=999, attempt=2**31, record_id="r\x00" + "x" * 5000,
                          external_id="\udcff" * 3000, error_message="boom\x00\ud800",
                          details={"body": "\x00\ud800", "n": float("nan"), "big": 10**400}))
    with structlog.testing.capture_logs() as logged:
        await audit_writer.write_many(records)
    assert [e for e in logged if "refused" in e["event"]] == []  # no batch went row by row
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 301
    row = await db.fetchrow("SELECT * FROM audit_log WHERE message_id = 'msg-1'")
    assert row is not None
    assert (row["http_status"], row["attempt"]) == (None, 2**31 - 1)
    assert row["details"]["normalised"]["http_status"] == 999
    assert row["details"]["normalised"]["attempt"] == 2**31
    assert row["record_id"].startswith("r\ufffdxxx") and row["record_id"].endswith("…")
    assert row["error_message"] == "boom\ufffd\ufffd"
    assert row["details"]["body"] == "\ufffd\ufffd" and row["details"]["n"] == "nan"
    assert await audit_writer.settled_outcome("msg-1", 2**31) == Outcome.CREATED


async def test_a_message_id_holding_a_nul_is_looked_up_as_it_was_written(
        audit_writer: AuditWriter) -> None:
    await audit_writer.write(record(outcome=Outcome.DEAD, message_id="m\x00\ud800", attempt=3))
    assert await audit_writer.settled_outcome("m\x00\ud800", 3) == Outcome.DEAD
    assert await audit_writer.final_outcome("m\x00\ud800") == Outcome.DEAD


async def test_write_after_close_is_refused(db: Database) -> None:
    writer = AuditWriter(db)
    await writer.start()
    await writer.close()
    with pytest.raises(InfrastructureError, match="not running"):
        await writer.write(record())


async def test_close_flushes_what_is_queued(db: Database) -> None:
    writer = AuditWriter(db, interval=5.0)
    await writer.start()
    pending = [asyncio.create_task(writer.write(record(n))) for n in range(10)]
    await asyncio.sleep(0)  # not a wait: one turn, in which the 10 writes are queued
    await writer.close()
    await asyncio.gather(*pending)
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 10


async def test_start_creates_partitions_ahead(db: Database) -> None:
    await db.execute("DROP TABLE audit_log_" + datetime.now(UTC).strftime("%Y_%m"))
    async with AuditWriter(db):
        pass
    assert "audit_log_" + datetime.now(UTC).strftime("%Y_%m") in await existing_partitions(db)


async def test_settled_and_final_outcomes(db: Database, audit_writer: AuditWriter) -> None:
    assert await audit_writer.settled_outcome("m", 0) is None
    await audit_writer.write(record(outcome=Outcome.RETRYING, message_id="m", attempt=0))
    await audit_writer.write(record(outcome=Outcome.DEAD, message_id="m", attempt=1))
    assert await audit_writer.settled_outcome("m", 0) == Outcome.RETRYING  # its own row first
    assert await audit_writer.settled_outcome("m", 1) == Outcome.DEAD
    assert await audit_writer.final_outcome("m") == Outcome.DEAD
    await audit_writer.write(record(outcome=Outcome.RETRYING, message_id="n"))
    assert await audit_writer.final_outcome("n") is None
    assert await audit_writer.settled_outcome("n", 1) is None  # not done: a retry copy's turn


async def test_a_copy_of_a_message_that_is_done_is_settled_whatever_its_attempt(
        audit_writer: AuditWriter) -> None:
    """A final row at any attempt settles every later (or earlier) copy of the message."""
    await audit_writer.write(record(outcome=Outcome.CREATED, message_id="m", attempt=0))
    assert await audit_writer.settled_outcome("m", 1) == Outcome.CREATED
    assert await audit_writer.settled_outcome("m", 9) == Outcome.CREATED
    await audit_writer.write(record(outcome=Outcome.UNCHANGED, message_id="k", attempt=2))
    assert await audit_writer.settled_outcome("k", 0) == Outcome.UNCHANGED
    for outcome in Outcome:
        await audit_writer.write(record(outcome=outcome, message_id=f"o-{outcome}", attempt=0))
        settles = await audit_writer.settled_outcome(f"o-{outcome}", 1) is not None
        assert settles is (outcome in FINAL_OUTCOMES), outcome


async def test_concurrent_final_outcome_lookups_share_the_settled_queries(
        db: Database, audit_writer: AuditWriter) -> None:
    """What a copy that found nothing to do asks (after a reconnection, a window's
    worth at once): the latest final outcome of any attempt, in the same queries as the
    settled look-ups, each key its own answer."""
    await audit_writer.write_many([
        record(0, outcome=Outcome.RETRYING, message_id="f-0"),
        record(0, outcome=Outcome.CREATED, message_id="f-0", attempt=1),
        record(1, outcome=Outcome.FAILED, message_id="f-1"),
        record(2, outcome=Outcome.DEAD, message_id="f-2")])
    await audit_writer.write(record(2, outcome=Outcome.UPDATED, message_id="f-2", attempt=3))
    before = audit_writer.lookups.queries
    answers = await asyncio.gather(
        *(audit_writer.final_outcome(f"f-{n}") for n in range(4)),
        audit_writer.settled_outcome("f-1", 0), audit_writer.settled_outcome("f-0", 0))
    assert audit_writer.lookups.queries - before == 1
    assert answers == [Outcome.CREATED, None, Outcome.UPDATED, None, Outcome.FAILED,
                       Outcome.RETRYING]


async def test_concurrent_lookups_are_one_query_and_each_gets_its_own_answer(
        db: Database, audit_writer: AuditWriter) -> None:
    """The dispatcher looks every event up: concurrent look-ups share a query (at most
    200 keys each), and each key gets the latest outcome of its own attempt, else the
    latest final outcome of its message (a copy of a message that is done)."""
    rows = [record(n, outcome=Outcome.RETRYING, message_id=f"m-{n}") for n in range(0, 150, 3)]
    rows += [record(n, outcome=Outcome.DEAD, message_id=f"m-{n}", attempt=1)
             for n in range(0, 150, 3)]
    rows += [record(n, outcome=Outcome.DISPATCHED, message_id=f"m-{n}") for n in range(1, 150, 3)]
    await audit_writer.write_many(rows)
    await audit_writer.write(record(1, outcome=Outcome.DEAD, message_id="m-1"))  # a later row
    before = audit_writer.lookups.queries
    keys = [(f"m-{n}", attempt) for n in range(150) for attempt in (0, 1)]
    answers = await asyncio.gather(*(audit_writer.settled_outcome(*key) for key in keys))
    assert audit_writer.lookups.queries - before == 2  # 300 keys: 200, then 100
    expected = {0: (Outcome.RETRYING, Outcome.DEAD),
                1: (Outcome.DISPATCHED, Outcome.DISPATCHED), 2: (None, None)}
    wanted = [expected[int(message_id[2:]) % 3][attempt] for message_id, attempt in keys]
    wanted[keys.index(("m-1", 0))] = Outcome.DEAD  # its latest row
    wanted[keys.index(("m-1", 1))] = Outcome.DEAD  # its message's latest final row
    assert answers == wanted


async def test_a_lookup_that_fails_fails_with_infrastructure_error(database_url: str) -> None:
    closed = Database(database_url, min_size=1, max_size=1)
    await closed.open()
    await closed.close()
    lookups = SettledLookup(closed)
    results = await asyncio.gather(lookups.settled_outcome("m", 0),
                                   lookups.settled_outcome("n", 0), return_exceptions=True)
    assert [type(r) for r in results] == [InfrastructureError, InfrastructureError]


async def test_secrets_never_reach_audit_rows(db: Database, audit_writer: AuditWriter) -> None:
    register_secret("tok-9f8e7d6c5b4a")
    await audit_writer.write(record(
        outcome=Outcome.FAILED, error_class="RemoteRejected",
        error_message="401 for https://bob:pa55word@crm.example/api with token tok-9f8e7d6c5b4a",
        details={"authorization": "Bearer abc", "echo": "tok-9f8e7d6c5b4a", "nul": "a\x00b"}))
    row = await db.fetchrow("SELECT error_message, details::text AS details FROM audit_log")
    assert row is not None
    text = row["error_message"] + row["details"]
    for secret in ("tok-9f8e7d6c5b4a", "pa55word", "Bearer abc"):
        assert secret not in text
    assert "***" in row["error_message"]


# --- a commit whose answer is lost --------------------------------------------------------------


async def write_until_durable(writer: AuditWriter, row: AuditRecord) -> None:
    """Write ``row`` as the consumer runtime does: again while its commit fails."""
    while True:
        try:
            return await writer.write(row)
        except InfrastructureError:
            await asyncio.sleep(0.05)  # the runtime's backoff before writing it again


async def rows_per_message(db: Database) -> dict[str, int]:
    found = await db.fetch("SELECT message_id, count(*) AS n FROM audit_log GROUP BY message_id")
    return {r["message_id"]: r["n"] for r in found}


@pytest.mark.parametrize("lost", ["answer", "request"])
async def test_a_batch_whose_commit_is_cut_is_stored_exactly_once(
        db: Database, database_url: str, lost: str) -> None:
    """The connection is cut at the batch's commit: after the server committed (its
    answer lost), or before the commit reached it. Either way each row is stored once,
    however the writer's callers write again what failed."""
    async with commit_cutter(database_url) as proxy, \
            Database(proxy.url(database_url), max_size=2) as through_proxy:
        writer = AuditWriter(through_proxy, interval=0.2)
        await writer.start()
        if lost == "answer":
            proxy.cut_answers = 1
        else:
            proxy.cut_requests = 1
        try:
            with structlog.testing.capture_logs() as logged:
                await asyncio.gather(*(write_until_durable(writer, record(n))
                                       for n in range(50)))
        finally:
            await writer.close()
    assert proxy.cuts == 1
    assert await rows_per_message(db) == {f"msg-{n}": 1 for n in range(50)}
    events = [e["event"] for e in logged]
    assert "the answer to an audit commit was lost; asking whether it committed" in events
    abandoned = await db.fetchval("SELECT count(*) FROM audit_batches WHERE abandoned")
    if lost == "answer":
        assert "audit batch committed after all" in events and abandoned == 0
    else:
        assert "audit batch did not commit; its rows are written again" in events
        assert abandoned == 1


async def test_while_postgresql_cannot_say_whether_a_batch_committed_its_rows_are_held(
        db: Database, database_url: str) -> None:
    """The commit's answer is lost and PostgreSQL is unreachable for a while: the writer
    keeps asking, the rows' writers wait (failing them would bring the duplicate back),
    and once PostgreSQL answers, each row is stored once."""
    async with commit_cutter(database_url) as proxy, \
            Database(proxy.url(database_url), max_size=2, timeout=1.0) as through_proxy:
        writer = AuditWriter(through_proxy, interval=0.2)
        await writer.start()
        proxy.cut_answers, proxy.refuse_after_cut = 1, True
        try:
            writes = asyncio.gather(*(writer.write(record(n)) for n in range(20)))
            await eventually(lambda: proxy.refused >= 2, what="the question asked twice")
            assert not writes.done()
            proxy.refusing = False
            await asyncio.wait_for(writes, 30)  # none failed: no caller writes again
            await writer.write(record(20))  # and the writer goes on
        finally:
            await writer.close()
    assert await rows_per_message(db) == {f"msg-{n}": 1 for n in range(21)}


@pytest.fixture
async def failing_batch_ids(db: Database) -> AsyncIterator[None]:
    """Storing a batch id fails (the server answers an error to the batch's commit)."""
    await db.execute(
        "CREATE FUNCTION fail_batch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'injected failure' USING ERRCODE = 'serialization_failure'; END $$")
    await db.execute("CREATE TRIGGER fail_batch BEFORE INSERT ON audit_batches"
                     " FOR EACH ROW EXECUTE FUNCTION fail_batch()")
    try:
        yield
    finally:
        await db.execute("DROP TRIGGER fail_batch ON audit_batches")
        await db.execute("DROP FUNCTION fail_batch()")


async def test_an_error_answered_to_the_commit_is_not_taken_for_a_lost_answer(
        db: Database, failing_batch_ids: None) -> None:
    writer = AuditWriter(db, interval=0.2)
    await writer.start()
    try:
        with structlog.testing.capture_logs() as logged:
            results = await asyncio.gather(*(writer.write(record(n)) for n in range(5)),
                                           return_exceptions=True)
    finally:
        await writer.close()
    assert all(isinstance(r, InfrastructureError) and "injected failure" in str(r)
               for r in results), results
    assert [e for e in logged if "lost" in e["event"]] == []  # it was answered: no question
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 0


@pytest.mark.parametrize("ends", ["COMMIT", "ROLLBACK"])
async def test_the_fate_of_a_batch_still_committing_waits_for_its_end(
        db: Database, database_url: str, ends: str) -> None:
    """Asked while the batch's transaction holds its id uncommitted, the question waits
    for that transaction, then answers what it did; a batch said not committed can no
    longer commit."""
    batch = new_batch_id()
    async with await psycopg.AsyncConnection.connect(database_url) as old:
        await old.execute("INSERT INTO audit_batches (id) VALUES (%s)", (batch,))
        asked = asyncio.create_task(batch_committed(db, batch))
        await eventually(lambda: db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"), what="the question waiting on the batch's lock")
        assert not asked.done()
        await old.execute(ends)
        assert await asyncio.wait_for(asked, 10) is (ends == "COMMIT")
        if ends == "ROLLBACK":  # the old transaction's commit, arriving late, fails
            with pytest.raises(psycopg.errors.UniqueViolation):
                await old.execute("INSERT INTO audit_batches (id) VALUES (%s)", (batch,))
    assert await batch_committed(db, batch) is (ends == "COMMIT")  # asked again: same answer


async def test_batch_ids_past_their_retention_are_pruned(db: Database) -> None:
    now = time.time()
    old, recent = new_batch_id(now - RETENTION_SECONDS - 60), new_batch_id(now - 60)
    for batch in (old, recent):
        await db.execute("INSERT INTO audit_batches (id) VALUES (%s)", (batch,))
    assert await prune_batch_ids(db, now) == 1
    assert await db.fetchval("SELECT array_agg(id) FROM audit_batches") == [recent]


async def test_every_batch_leaves_its_id(db: Database, audit_writer: AuditWriter) -> None:
    await asyncio.gather(*(audit_writer.write(record(n)) for n in range(10)))
    await audit_writer.write(record(10))
    assert await db.fetchval("SELECT count(*) FROM audit_batches WHERE NOT abandoned") == (
        audit_writer.batches_written)


# --- search ------------------------------------------------------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
SEED = [
    # (key, minutes ago, overrides)
    ("a1", 1, {"org_id": "org-1", "instance_id": "i-1", "entity": "account", "direction": "push",
               "outcome": Outcome.CREATED, "record_id": "A-1", "external_id": "X-1",
               "run_id": "run-1", "message_id": "m-a1"}),
    ("a2", 5, {"org_id": "org-1", "instance_id": "i-1", "entity": "account", "direction": "push",
               "outcome": Outcome.FAILED, "record_id": "A-2", "error_class": "RemoteRejected",
               "error_message": "Company Name is REQUIRED", "http_status": 422,
               "run_id": "run-1", "message_id": "m-a2"}),
    ("c1", 30, {"org_id": "org-1", "instance_id": "i-2", "entity": "contact",
                "direction": "pull", "outcome": Outcome.UPDATED, "record_id": "C-1",
                "external_id": "X-9", "message_id": "m-c1", "details": {"note": "50% off"}}),
    ("o1", 60 * 26, {"org_id": "org-2", "instance_id": "i-3", "entity": "order",
                     "direction": "push", "outcome": Outcome.DEAD,
                     "error_class": "SchemaViolation", "message_id": "m-o1"}),
    ("o2", 60 * 24 * 10, {"org_id": "org-2", "instance_id": "i-3", "entity": "order",
                          "direction": "push", "outcome": Outcome.RETRYING, "record_id": "O-2",
                          "message_id": "m-o2", "details": {"reason": "Timeout talking"}}),
]


async def seed_audit(db: Database) -> None:
    async with AuditWriter(db) as writer:
        for _key, minutes, fields in SEED:
            base = {"service": "puller" if fields["direction"] == "pull" else "pusher",
                    "action": "create", "at": NOW - timedelta(minutes=minutes)}
            await writer.write(AuditRecord(**{**base, **fields}))


@pytest.fixture
async def seeded(db: Database) -> Database:
    await seed_audit(db)
    return db


def keys(message_ids: list[str | None]) -> list[str]:
    return [str(m).removeprefix("m-") for m in message_ids]


CASES = [
    (AuditQuery(), ["a1", "a2", "c1", "o1", "o2"]),
    (AuditQuery(org="org-2"), ["o1", "o2"]),
    (AuditQuery(instance="i-1"), ["a1", "a2"]),
    (AuditQuery(entity="contact"), ["c1"]),
    (AuditQuery(direction="pull"), ["c1"]),
    (AuditQuery(outcome="failed"), ["a2"]),
    (AuditQuery(outcome=["dead", "retrying"]), ["o1", "o2"]),
    (AuditQuery(record="A-2"), ["a2"]),
    (AuditQuery(external_id="X-9"), ["c1"]),
    (AuditQuery(run="run-1"), ["a1", "a2"]),
    (AuditQuery(message="m-o1"), ["o1"]),
    (AuditQuery(service="puller"), ["c1"]),
    (AuditQuery(http_status=422), ["a2"]),
    (AuditQuery(error_class="SchemaViolation"), ["o1"]),
    (AuditQuery(action="create", attempt=0, org="org-2"), ["o1", "o2"]),
    (AuditQuery(since=NOW - timedelta(hours=1)), ["a1", "a2", "c1"]),
    (AuditQuery(until=NOW - timedelta(hours=1)), ["o1", "o2"]),
    (AuditQuery(since=NOW - timedelta(days=2), until=NOW - timedelta(hours=1)), ["o1"]),
    (AuditQuery(text="required"), ["a2"]),
    (AuditQuery(text="schemaviolation"), ["o1"]),
    (AuditQuery(text="timeout"), ["o2"]),
    (AuditQuery(text="50%"), ["c1"]),
    (AuditQuery(text="%"), ["c1"]),  # a wildcard is a literal character
    (AuditQuery(org="org-1", entity="account", outcome="created"), ["a1"]),
    (AuditQuery(limit=2), ["a1", "a2"]),
    (AuditQuery(org="nobody"), []),
]


@pytest.mark.parametrize(("query", "expected"), CASES)
async def test_search_filters_return_exactly_the_matching_rows(
        seeded: Database, query: AuditQuery, expected: list[str]) -> None:
    rows = await search(seeded, query)
    assert keys([r.message_id for r in rows]) == expected  # newest first


@pytest.fixture
def cli_seeded(database_env: str) -> Iterator[None]:
    async def go() -> None:
        async with Database(database_env) as database:
            await seed_audit(database)

    run_sync(go())
    yield


CLI_CASES = [
    ([], ["a1", "a2", "c1", "o1", "o2"]),
    (["--org", "org-1", "--entity", "account"], ["a1", "a2"]),
    (["--instance", "i-3"], ["o1", "o2"]),
    (["--direction", "pull"], ["c1"]),
    (["--outcome", "dead,retrying"], ["o1", "o2"]),
    (["--outcome", "failed", "--outcome", "created"], ["a1", "a2"]),
    (["--record", "O-2"], ["o2"]),
    (["--external-id", "X-1"], ["a1"]),
    (["--run", "run-1", "--limit", "1"], ["a1"]),
    (["--since", "1h"], ["a1", "a2", "c1"]),
    (["--since", "2d", "--until", "1h"], ["o1"]),
    (["--until", (NOW - timedelta(days=5)).date().isoformat()], ["o2"]),
    (["--text", "Company name"], ["a2"]),
    (["--http-status", "422"], ["a2"]),
    (["--error-class", "SchemaViolation"], ["o1"]),
]


@pytest.mark.parametrize(("flags", "expected"), CLI_CASES)
def test_cli_audit_search_json(cli_seeded: None, capsys: pytest.CaptureFixture[str],
                               flags: list[str], expected: list[str]) -> None:
    assert main(["audit", "search", *flags, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert keys([r["message_id"] for r in rows]) == expected


def test_cli_audit_search_table(cli_seeded: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "search", "--outcome", "failed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["AT", "SERVICE", "ORG", "INSTANCE"]
    assert len(out) == 2 and "RemoteRejected Company Name is REQUIRED" in out[1]
    assert out[1].index("failed") == out[0].index("OUTCOME")  # aligned columns


def test_cli_audit_search_rejects_bad_flags(database_env: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "search", "--outcome", "exploded"]) == 2
    assert "unknown outcome 'exploded'" in capsys.readouterr().err
    assert main(["audit", "search", "--since", "yesterday"]) == 2
    assert "neither an ISO date/time nor a duration" in capsys.readouterr().err


async def test_a_cancelled_writer_fails_its_waiters_instead_of_hanging(db: Database) -> None:
    writer = AuditWriter(db, interval=5.0)
    await writer.start()
    waiters = [asyncio.create_task(writer.write(record(n))) for n in range(5)]
    await asyncio.sleep(0)  # not a wait: one turn, in which the 5 writes are queued
    assert writer._task is not None
    writer._task.cancel()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
    assert all(r is None or isinstance(r, InfrastructureError) for r in results)
    with pytest.raises(InfrastructureError, match="not running"):
        await writer.write(record(9))
