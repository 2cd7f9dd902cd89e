"""The messaging runtime against a real RabbitMQ and the real PostgreSQL audit table.

Every test waits for observable state (queue depths, audit rows) with a deadline,
never for a fixed time. Consumers run either in the test's event loop or, where a
process must die, as real subprocesses (``tests/integration/consumer_app.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from kombu import Connection

from shared.audit.record import AuditRecord, Outcome
from shared.errors import InfrastructureError, RemoteRejected, RemoteUnavailable
from shared.logging import register_secret
from shared.messaging.codec import SYNC_CODEC, InboundMessage
from shared.messaging.connection import open_connection
from shared.messaging.consumer import Consumer, ConsumerConfig, ConsumerStopped
from shared.messaging.envelope import SyncMessage, encode
from shared.messaging.publisher import OutgoingMessage, Publisher, Unroutable
from shared.messaging.tooling import publish_blocking
from shared.messaging.topology import (
    DEAD_EXCHANGE,
    PUSH_EXCHANGE,
    PUSHER,
    TopologyConflict,
    WorkQueue,
    declare_topology,
    queues_of,
    sync_routing_key,
    work_queues,
)
from shared.paths import project_root
from tests.fixtures.amqp import TEST_DELIVERY_LIMIT, TEST_RETRY_DELAYS, TestTopology
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

#: The pusher's queues on the tests' ladder (names from shared.messaging.topology).
PUSH = WorkQueue(PUSHER, TEST_RETRY_DELAYS)
RETRY_1, RETRY_2 = (PUSH.retry_queue(rung).name for rung in (0, 1))

FINAL = [o.value for o in (Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED, Outcome.UNCHANGED,
                           Outcome.SKIPPED, Outcome.DEAD)]


# ---------------------------------------------------------------------------- helpers


def sync_message(record_id: str, **overrides: Any) -> SyncMessage:
    fields: dict[str, Any] = dict(
        id=str(uuid.uuid4()), direction="push", org_id="org1", instance_id="inst1",
        entity="account", action="update", trigger="event", attempt=0,
        created_at=datetime.now(UTC).isoformat(), record_id=record_id)
    fields.update(overrides)
    return SyncMessage(**fields)


def outgoing(message: SyncMessage) -> OutgoingMessage:
    key = sync_routing_key(message.entity, message.action, message.org_id, message.instance_id)
    return OutgoingMessage(PUSH_EXCHANGE, key, encode(message), message.id)


async def publish(url: str, messages: Iterable[OutgoingMessage]) -> None:
    conn = await open_connection(url, "bss-sync test-publisher")
    try:
        publisher = await Publisher.open(conn)
        await publisher.publish_many(list(messages))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[Consumer]:
    """Run ``consumer`` in this loop for the block; stop it (and surface its errors) after."""
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


def pusher(topology: TestTopology, handler: Any, audit: Any, **config: Any) -> Consumer:
    return Consumer(topology.queue(PUSHER), SYNC_CODEC, handler, audit,
                    ConsumerConfig(topology.url, **config))


async def rows(db: Any, where: str = "TRUE", params: tuple[Any, ...] = ()) -> list[dict]:
    return await db.fetch(
        f"SELECT message_id, outcome, attempt, error_class, error_message, http_status"
        f" FROM audit_log WHERE {where} ORDER BY at, id", params)


async def final_counts(db: Any) -> dict[str, int]:
    """message id → number of final audit rows."""
    found = await db.fetch(
        "SELECT message_id, count(*) AS n FROM audit_log WHERE outcome = ANY(%s)"
        " GROUP BY message_id", (FINAL,))
    return {r["message_id"]: r["n"] for r in found}


async def updated_handler(message: InboundMessage[SyncMessage]) -> Outcome:
    return Outcome.UPDATED


# ---------------------------------------------------------------------------- topology


def test_declaring_the_topology_twice_changes_nothing(topology: TestTopology) -> None:
    before = {q["name"]: q["arguments"] for q in topology.management.queues()}
    again = declare_topology(topology.url, TEST_RETRY_DELAYS, TEST_DELIVERY_LIMIT)
    after = {q["name"]: q["arguments"] for q in topology.management.queues()}
    assert again == topology.declared
    assert before == after
    declared = {queue.name for service in work_queues(TEST_RETRY_DELAYS)
                for queue in queues_of(service, TEST_DELIVERY_LIMIT)}
    # work, retries, dead for 3 services; parked for the pusher and the puller
    assert len(declared) == 3 * (2 + len(TEST_RETRY_DELAYS)) + 2
    assert declared <= set(after)
    assert after[PUSH.name]["x-delivery-limit"] == TEST_DELIVERY_LIMIT
    assert after[RETRY_2]["x-message-ttl"] == 400


def test_a_changed_queue_argument_is_a_clear_error(topology: TestTopology) -> None:
    with pytest.raises(TopologyConflict) as caught:
        declare_topology(topology.url, TEST_RETRY_DELAYS, TEST_DELIVERY_LIMIT + 1)
    text = str(caught.value)
    assert PUSH.name in text and "x-delivery-limit" in text
    assert "run `bss-sync topology declare` to migrate" in text


def test_a_message_that_keeps_coming_back_ends_in_the_dead_queue(
        topology: TestTopology) -> None:
    """The safety net: a consumer that dies on a message again and again."""
    publish_blocking(topology.url, [outgoing(sync_message("r1"))])
    deliveries = 0
    with Connection(topology.url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(PUSH.name, no_ack=False)) is not None:
            deliveries += 1
            channel.basic_reject(message.delivery_tag, requeue=True)
            assert deliveries <= TEST_DELIVERY_LIMIT + 1
    assert deliveries == TEST_DELIVERY_LIMIT + 1
    topology.wait_ready(PUSH.dead_queue, 1)  # quorum queues dead-letter asynchronously
    [dead] = topology.peek(PUSH.dead_queue)
    assert dead.headers["x-death"][0]["reason"] == "delivery_limit"


async def test_an_unroutable_publish_fails_and_the_publisher_carries_on(
        topology: TestTopology) -> None:
    conn = await open_connection(topology.url, "bss-sync test")
    try:
        publisher = await Publisher.open(conn)
        with pytest.raises(Unroutable, match=r"no\.such\.queue"):
            await publisher.publish("", "no.such.queue", b"{}", message_id="m-1")
        await publisher.publish_many([outgoing(sync_message(f"r{i}")) for i in range(2000)])
    finally:
        await conn.close()
    assert topology.ready(PUSH.name) == 2000


async def test_messages_the_broker_refuses_for_a_while_are_published_again(
        topology: TestTopology) -> None:
    # a queue that holds two messages and refuses (nacks) the rest: the broker saying
    # "not now", as a quorum queue does while it elects a new leader
    queue = f"refusing-{uuid.uuid4().hex[:8]}"
    with Connection(topology.url) as kombu_conn:
        channel = kombu_conn.default_channel
        channel.queue_declare(queue, durable=True, auto_delete=False, arguments={
            "x-max-length": 2, "x-overflow": "reject-publish"})
        conn = await open_connection(topology.url, "bss-sync test")
        taken: list[str] = []

        async def drain() -> None:  # room for one more message every 100 ms
            while len(taken) < 6:
                await asyncio.sleep(0.1)
                got = await asyncio.to_thread(channel.basic_get, queue, no_ack=True)
                if got is not None:
                    taken.append(got.properties["message_id"])

        drainer = asyncio.create_task(drain())
        try:
            publisher = await Publisher.open(conn)
            await publisher.publish_many(
                [OutgoingMessage("", queue, b"{}", f"m{i}") for i in range(6)])
            await asyncio.wait_for(drainer, timeout=30)
        finally:
            drainer.cancel()
            await conn.close()
            channel.queue_delete(queue)
    assert sorted(taken) == [f"m{i}" for i in range(6)]


async def test_frames_buffered_in_one_turn_go_out_in_one_send(topology: TestTopology) -> None:
    conn = await open_connection(topology.url, "bss-sync test")
    sends: list[int] = []
    transport = conn.raw._transport
    send = transport._sigint_safe_send

    def counted(sock: Any, data: bytes) -> int:
        sends.append(len(data))
        return send(sock, data)

    transport._sigint_safe_send = counted
    try:
        publisher = await Publisher.open(conn)
        sends.clear()
        await publisher.publish_many([outgoing(sync_message(f"r{i}")) for i in range(300)])
    finally:
        await conn.close()
    assert topology.ready(PUSH.name) == 300
    # 300 publishes are 900 frames; pika alone would send each with a syscall of its own
    assert 0 < len(sends) <= 30


# ---------------------------------------------------------------------------- failures


async def test_a_transient_failure_walks_the_ladder_then_dies_while_others_flow(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    register_secret("s3cr3t-token")
    attempts: list[int] = []

    async def handler(message: InboundMessage[SyncMessage]) -> Outcome:
        if message.context.record_id == "bad":
            attempts.append(message.context.attempt)
            raise RemoteUnavailable("remote said 503 for s3cr3t-token", http_status=503)
        return Outcome.UPDATED

    bad = sync_message("bad")
    good = [sync_message(f"good-{i}") for i in range(50)]
    async with running(pusher(topology, handler, audit_writer)):
        await publish(topology.url, [outgoing(bad)] + [outgoing(m) for m in good[:25]])
        await eventually(lambda: topology.ready(RETRY_1) == 1, what="1st retry")
        await publish(topology.url, [outgoing(m) for m in good[25:]])
        await eventually(lambda: topology.ready(PUSH.dead_queue) == 1, what="the dead letter")

    assert attempts == [0, 1, 2]  # a ladder of 2 delays allows 3 attempts
    history = await rows(db, "message_id = %s", (bad.id,))
    assert [(r["outcome"], r["attempt"]) for r in history] == [
        ("retrying", 0), ("retrying", 1), ("dead", 2)]
    assert all(r["http_status"] == 503 and r["error_class"] == "RemoteUnavailable"
               for r in history)
    counts = await final_counts(db)
    assert all(counts.get(m.id) == 1 for m in good)
    good_done = await db.fetchval(
        "SELECT max(at) FROM audit_log WHERE message_id = ANY(%s)", ([m.id for m in good],))
    died = await db.fetchval("SELECT at FROM audit_log WHERE message_id = %s AND outcome = 'dead'",
                             (bad.id,))
    assert good_done < died  # the good ones did not wait behind the failing one

    [dead] = topology.peek(PUSH.dead_queue)
    h = dead.headers
    assert dead.message_id == bad.id
    assert h["x-error-class"] == "RemoteUnavailable"
    assert "503" in h["x-error"] and "s3cr3t-token" not in h["x-error"]
    assert all("s3cr3t-token" not in r["error_message"] for r in history)
    assert h["x-http-status"] == 503
    assert h["x-attempts"] == 3
    assert h["x-first-failed-at"] <= datetime.now(UTC).isoformat()
    assert (h["x-org-id"], h["x-instance-id"], h["x-entity"], h["x-record-id"]) == (
        "org1", "inst1", "account", "bad")
    assert h["x-original-exchange"] == PUSH_EXCHANGE
    assert h["x-original-routing-key"] == "account.update.org1.inst1"
    assert h["x-service"] == PUSHER
    assert dead.routing_key == PUSH.dead_routing_key("account.update.org1.inst1")
    assert SYNC_CODEC.decode(dead.body, None).context.attempt == 2


async def test_a_permanent_failure_goes_to_the_dead_queue_at_once(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    async def handler(message: InboundMessage[SyncMessage]) -> Outcome:
        raise RemoteRejected("422: name is required", http_status=422)

    message = sync_message("r1")
    async with running(pusher(topology, handler, audit_writer)):
        await publish(topology.url, [outgoing(message)])
        await eventually(lambda: topology.ready(PUSH.dead_queue) == 1, what="the dead letter")
        await eventually(lambda: rows(db), what="the audit row")

    assert [(r["outcome"], r["attempt"], r["http_status"]) for r in await rows(db)] == [
        ("dead", 0, 422)]
    [dead] = topology.peek(PUSH.dead_queue)
    assert dead.headers["x-attempts"] == 1
    assert dead.headers["x-error-class"] == "RemoteRejected"
    assert topology.ready(RETRY_1) == topology.ready(RETRY_2) == 0


def test_the_cli_lists_dead_letters_and_leaves_them(
        topology: TestTopology, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from shared.cli.main import main
    from shared.settings import get_settings

    publish_blocking(topology.url, [OutgoingMessage(
        DEAD_EXCHANGE, PUSH.dead_routing_key("account.update.org1.inst1"), b"{}", "m-dead",
        {"x-error-class": "RemoteRejected", "x-error": "422: name is required",
         "x-attempts": 1, "x-record-id": "42", "x-failed-step": "address"})])
    monkeypatch.setenv("AMQP_URL", topology.url)
    monkeypatch.setenv("RETRY_DELAYS", str(list(TEST_RETRY_DELAYS)))
    monkeypatch.setenv("DELIVERY_LIMIT", str(TEST_DELIVERY_LIMIT))
    get_settings.cache_clear()
    try:
        assert main(["topology", "declare"]) == 0
        assert f"queue {PUSH.dead_queue} (quorum)" in capsys.readouterr().out
        assert main(["dead", "list", "--service", PUSHER]) == 0
        out = capsys.readouterr().out
        assert main(["dead", "list", "--json", "--limit", "5"]) == 0
        [line] = capsys.readouterr().out.splitlines()
    finally:
        get_settings.cache_clear()
    assert "message m-dead" in out
    assert "x-error: 422: name is required" in out and "x-record-id: 42" in out
    assert "x-failed-step: address" in out
    listed = json.loads(line)
    assert listed["message_id"] == "m-dead" and listed["body"] == "{}"
    assert listed["headers"]["x-error-class"] == "RemoteRejected"
    topology.wait_ready(PUSH.dead_queue, 1)  # peeked, not taken


async def test_poison_messages_are_dead_lettered_with_a_reason_and_consuming_goes_on(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    valid = sync_message("r-ok")
    broken = sync_message("r-broken").to_dict()
    del broken["org_id"]

    poison = [
        OutgoingMessage(PUSH_EXCHANGE, "account.update.org1.inst1", b"\xffnot json", "p-1"),
        OutgoingMessage(PUSH_EXCHANGE, "account.update.org1.inst1", json.dumps(broken).encode(),
                        broken["id"]),
    ]
    async with running(pusher(topology, updated_handler, audit_writer)):
        await publish(topology.url, [*poison, outgoing(valid)])
        await eventually(lambda: topology.ready(PUSH.dead_queue) == 2, what="2 dead letters")
        await eventually(lambda: final_counts(db), what="audit rows")
        counts = await eventually(
            lambda: _when(final_counts(db), lambda c: c.get(valid.id) == 1),
            what="the valid message settled")

    dead = {d.message_id: d.headers for d in topology.peek(PUSH.dead_queue)}
    assert dead["p-1"]["x-error-class"] == "InvalidMessage"
    assert "not JSON" in dead["p-1"]["x-error"]
    assert "org_id" in dead[broken["id"]]["x-error"]
    assert counts[valid.id] == 1
    assert topology.ready(PUSH.name) == 0


async def _when(value: Any, check: Any) -> Any:
    result = await value
    return result if check(result) else None


# ---------------------------------------------------------------------------- durability


async def test_a_redelivered_message_already_audited_is_acked_not_handled_again(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    message = sync_message("r1")
    await publish(topology.url, [outgoing(message)])
    # An earlier delivery: its audit row committed, then it died before the ack.
    with Connection(topology.url) as conn:
        channel = conn.channel()
        assert channel.basic_get(PUSH.name, no_ack=False) is not None
        await audit_writer.write(AuditRecord(PUSHER, Outcome.UPDATED, message_id=message.id,
                                             attempt=0))
        channel.close()  # the unacked message goes back, flagged redelivered
    handled: list[str] = []

    async def handler(m: InboundMessage[SyncMessage]) -> Outcome:
        handled.append(m.context.record_id or "")
        return Outcome.UPDATED

    later = sync_message("r2")
    consumer = pusher(topology, handler, audit_writer)
    async with running(consumer):
        await publish(topology.url, [outgoing(later)])
        await eventually(lambda: _when(final_counts(db), lambda c: later.id in c),
                         what="the later message settled")
        await eventually(lambda: consumer.processor.counts["duplicate"] == 1,
                         what="the redelivery recognised")
    assert handled == ["r2"]
    assert await final_counts(db) == {message.id: 1, later.id: 1}
    assert topology.ready(PUSH.name) == 0


async def test_a_retry_copy_of_a_message_already_done_is_acked_not_handled_again(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    """A broker killed while a retry copy was being published: it stored the copy but
    never confirmed it, so the original went back to the queue and was handled again
    (``created``, a final row at attempt 0). The copy, attempt 1, comes out of its
    retry queue later: the message is done, so it is acked as a duplicate."""
    handled: list[tuple[str, int]] = []

    async def handler(m: InboundMessage[SyncMessage]) -> Outcome:
        handled.append((m.context.record_id or "", m.context.attempt))
        return Outcome.CREATED if m.context.attempt == 0 else Outcome.UNCHANGED

    message, later = sync_message("r1"), sync_message("r2")
    consumer = pusher(topology, handler, audit_writer)
    async with running(consumer):
        await publish(topology.url, [outgoing(message)])
        await eventually(lambda: _when(final_counts(db), lambda c: message.id in c),
                         what="the original settled")
        conn = await open_connection(topology.url, "bss-sync test-broker")
        try:  # the copy as the runtime publishes it, stored in the first rung
            await (await Publisher.open(conn)).publish(
                "", RETRY_1, encode(message.with_attempt(1)), message_id=message.id,
                headers={"x-attempt": 1, "x-error-class": "RemoteUnavailable"})
        finally:
            await conn.close()
        counts = consumer.processor.counts
        await eventually(lambda: counts["duplicate"] + counts["ack"] == 2,
                         what="the copy taken off the queue")
        assert counts["duplicate"] == 1
        await publish(topology.url, [outgoing(later)])
        await eventually(lambda: _when(final_counts(db), lambda c: later.id in c),
                         what="the later message settled")
    assert handled == [("r1", 0), ("r2", 0)]
    assert await final_counts(db) == {message.id: 1, later.id: 1}
    assert [(r["outcome"], r["attempt"]) for r in await rows(
        db, "message_id = %s", (message.id,))] == [("created", 0)]
    assert topology.ready(PUSH.name) == topology.ready(RETRY_1) == 0


class FlakyAudit:
    """The real audit writer behind a switch that fails the first ``failures`` writes."""

    def __init__(self, writer: Any, failures: int) -> None:
        self.writer = writer
        self.failures = failures
        self.refused = 0

    async def write(self, record: AuditRecord) -> None:
        if self.refused < self.failures:
            self.refused += 1
            raise InfrastructureError("PostgreSQL is down (test)")
        await self.writer.write(record)

    def submit(self, record: AuditRecord, done: Any) -> None:
        if self.refused < self.failures:
            self.refused += 1
            asyncio.get_running_loop().call_soon(
                done, InfrastructureError("PostgreSQL is down (test)"))
            return
        self.writer.submit(record, done)

    async def settled_outcome(self, message_id: str, attempt: int) -> Outcome | None:
        return await self.writer.settled_outcome(message_id, attempt)

    async def final_outcome(self, message_id: str) -> Outcome | None:
        return await self.writer.final_outcome(message_id)


async def test_while_the_audit_log_is_down_messages_are_held_not_acked_nor_redone(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    calls: list[int] = []

    async def handler(m: InboundMessage[SyncMessage]) -> Outcome:
        calls.append(m.context.attempt)
        raise RemoteUnavailable("503", http_status=503)

    message = sync_message("r1")
    audit = FlakyAudit(audit_writer, failures=3)
    async with running(pusher(topology, handler, audit)):
        await publish(topology.url, [outgoing(message)])
        await eventually(lambda: audit.refused == 3, what="the audit writes refused")
        # Held: not acked while its row is not durable, and its retry copy sent once.
        assert await rows(db) == []
        await eventually(lambda: topology.ready(PUSH.dead_queue) == 1, what="the dead letter")
    history = await rows(db, "message_id = %s", (message.id,))
    assert [(r["outcome"], r["attempt"]) for r in history] == [
        ("retrying", 0), ("retrying", 1), ("dead", 2)]
    assert calls == [0, 1, 2]


async def _settled_at_least(db: Any, count: int) -> bool:
    """Whether ``count`` rows are in the audit log; False while the test's own pool
    meets the connections the test killed (the probe asks again)."""
    try:
        return bool(await db.fetchval("SELECT count(*) >= %s FROM audit_log", (count,)))
    except InfrastructureError:
        return False


async def test_postgresql_connections_killed_mid_run_lose_and_double_nothing(
        topology: TestTopology, db: Any, audit_writer: Any, database_url: str) -> None:
    async def handler(message: InboundMessage[SyncMessage]) -> Outcome:
        await asyncio.sleep(0.02)  # not a wait: simulated work, so that outages hit mid-flow
        return Outcome.UPDATED

    def kill_backends() -> set[int]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
        return {pid for pid, _ in rows}

    messages = [sync_message(f"r{i}") for i in range(1500)]
    await publish(topology.url, [outgoing(m) for m in messages])
    killed: set[int] = set()
    async with running(pusher(topology, handler, audit_writer, prefetch=300)):
        for threshold in (200, 500, 800):  # three outages while messages flow
            await eventually(lambda t=threshold: _settled_at_least(db, t),
                             what=f"{threshold} settled")
            killed |= kill_backends()
        counts = await eventually(
            lambda: _when(final_counts(db), lambda c: len(c) == len(messages)),
            timeout=60, what="every message settled after the database came back")
    assert len(killed) >= 3
    assert set(counts.values()) == {1}
    assert topology.ready(PUSH.name) == 0


# ---------------------------------------------------------------------------- join


class GatedAudit(FlakyAudit):
    """The real audit writer, its commits held until ``gate`` opens (a slow PostgreSQL);
    ``held`` counts the rows handed over so far."""

    def __init__(self, writer: Any) -> None:
        super().__init__(writer, failures=0)
        self.gate = asyncio.Event()
        self.held = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, record: AuditRecord, done: Any) -> None:
        self.held += 1

        async def after_the_gate() -> None:
            await self.gate.wait()
            self.writer.submit(record, done)

        task = asyncio.create_task(after_the_gate())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def crash(consumer: Consumer) -> None:
    """What a killed process leaves behind, at once: its socket shut — acks not yet
    handed to the kernel never leave — and the consumer told not to reconnect."""
    assert consumer.session is not None
    connection = consumer.session.channel.connection
    connection._transport._sock.shutdown(socket.SHUT_RDWR)  # pika's socket
    consumer.stop()


async def returned_after_crash(topology: TestTopology) -> int:
    """Once the broker has dropped the crashed consumer (and requeued what it had not
    acked, in the same step): the messages back in the queue."""
    await eventually(lambda: topology.consumers(PUSH.name) == 0,
                     what="the broker to drop the crashed consumer")
    return topology.ready(PUSH.name)


async def test_join_returns_once_every_row_is_committed_and_every_ack_sent(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    audit = GatedAudit(audit_writer)
    messages = [sync_message(f"r{i}") for i in range(300)]
    consumer = pusher(topology, updated_handler, audit, prefetch=50, concurrency=8)
    async with running(consumer):
        # published (and confirmed) first: a join asked before would rightly return at
        # once, the queue being empty and nothing in progress
        await publish(topology.url, [outgoing(m) for m in messages])
        joined = asyncio.create_task(consumer.join())
        await eventually(lambda: audit.held == 50, what="a window of 50 rows held")
        # handled, but nothing durable: join must not have returned
        assert not joined.done() and await rows(db) == []
        assert topology.ready(PUSH.name) == 250
        audit.gate.set()
        await asyncio.wait_for(joined, 60)
        crash(consumer)  # right away: only what join waited for is done
        counts = await final_counts(db)
    assert len(counts) == 300 and set(counts.values()) == {1}  # committed
    assert await returned_after_crash(topology) == 0  # acked: nothing came back


async def test_a_crash_gives_back_what_was_not_acked(
        topology: TestTopology, audit_writer: Any) -> None:
    """The control of the test above: the crash does return unacked messages."""
    audit = GatedAudit(audit_writer)
    consumer = pusher(topology, updated_handler, audit)
    async with running(consumer):
        await publish(topology.url, [outgoing(sync_message(f"r{i}")) for i in range(3)])
        await eventually(lambda: audit.held == 3, what="3 rows held")
        crash(consumer)
        audit.gate.set()  # the rows commit, but the acks have no channel left
    assert await returned_after_crash(topology) == 3


async def test_join_is_cancellable_and_follows_the_queue_through_retries_and_stop(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    go = asyncio.Event()

    async def handler(message: InboundMessage[SyncMessage]) -> Outcome:
        await go.wait()
        if message.context.attempt == 0 and message.context.record_id == "flaky":
            raise RemoteUnavailable("503")
        return Outcome.UPDATED

    consumer = pusher(topology, handler, audit_writer)
    async with running(consumer):
        await publish(topology.url, [outgoing(sync_message("flaky")),
                                     outgoing(sync_message("fine"))])
        waiting = asyncio.create_task(consumer.join())
        await eventually(lambda: consumer.processor.in_progress == 2, what="2 in progress")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        go.set()
        await asyncio.wait_for(consumer.join(), 60)
        first = {r["outcome"] for r in await rows(db)}
        # the retry copy waits in pusher.retry.200ms: not the work queue's to wait for.
        # Dead-lettered back at least once, it is in neither queue for a moment: wait
        # until the consumer has it (in progress or done), then join follows it.
        processor = consumer.processor
        await eventually(lambda: topology.ready(PUSH.retry_queue(0).name) == 0
                         and (processor.in_progress or processor.counts["ack"] == 2),
                         what="the retry copy back in the work queue and taken")
        await asyncio.wait_for(consumer.join(), 60)
        final = await final_counts(db)
        consumer.stop()
        with pytest.raises(ConsumerStopped):
            await asyncio.wait_for(consumer.join(), 60)
    assert first == {"retrying", "updated"}
    assert sorted(final.values()) == [1, 1]


# ---------------------------------------------------------------------------- processes


def _app_env(topology: TestTopology, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFETCH",)}
    env.update(AMQP_URL=topology.url, DATABASE_URL=database_url, DB_SCHEMA="public",
               RETRY_DELAYS=str(list(TEST_RETRY_DELAYS)),
               DELIVERY_LIMIT=str(TEST_DELIVERY_LIMIT), LOG_LEVEL="WARNING",
               LOG_FORMAT="json", PYTHONPATH=str(project_root()))
    env.update(extra)
    return env


def _start_app(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.consumer_app", *args],
        env=env, cwd=project_root(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(
            f"consumer did not exit in {timeout}s:\n{out.decode()[-3000:]}") from None
    return proc.returncode, out.decode()


async def test_sigkill_with_a_thousand_in_flight_loses_nothing_and_settles_nothing_twice(
        topology: TestTopology, db: Any, database_url: str) -> None:
    messages = [sync_message(f"r{i}") for i in range(1000)]
    await publish(topology.url, [outgoing(m) for m in messages])
    # All 1,000 delivered at once (prefetch), 20 handlers of 10 ms (--sleep-ms: simulated
    # work, not a wait): ~0.5 s of work.
    env = _app_env(topology, database_url, CONCURRENCY="20", PREFETCH="1000")
    first = _start_app(env, "--sleep-ms", "10")
    try:
        await eventually(lambda: db.fetchval("SELECT count(*) >= 100 FROM audit_log"),
                         interval=0.01, what="the first messages settled")
        first.send_signal(signal.SIGKILL)
        _finish(first)
    finally:
        if first.poll() is None:
            first.kill()
    settled_before = await db.fetchval("SELECT count(*) FROM audit_log")
    assert settled_before < 1000, "the kill came too late to prove anything"

    code, out = _finish(_start_app(env, "--sleep-ms", "10", "--burst-ms", "500"))
    assert code == 0, out[-3000:]
    counts = await final_counts(db)
    assert set(counts) == {m.id for m in messages}, "lost messages"
    assert set(counts.values()) == {1}, "messages settled twice"
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 1000
    assert topology.ready(PUSH.name) == 0


async def test_the_consumer_reconnects_when_the_broker_drops_it(
        topology: TestTopology, db: Any, audit_writer: Any) -> None:
    go = asyncio.Event()  # held until the test has found the consumer's connection

    async def handler(message: InboundMessage[SyncMessage]) -> Outcome:
        await go.wait()
        await asyncio.sleep(0.005)  # not a wait: simulated work, so that the drop hits mid-flow
        if message.context.attempt == 0 and (message.context.record_id or "").endswith("7"):
            raise RemoteUnavailable("flaky remote")  # retry copies in flight too
        return Outcome.UPDATED

    messages = [sync_message(f"r{i}") for i in range(3000)]
    await publish(topology.url, [outgoing(m) for m in messages])
    consumer = pusher(topology, handler, audit_writer, prefetch=200, concurrency=32,
                      reconnect_base=0.05, reconnect_cap=0.2)
    async with running(consumer):
        connections = await eventually(lambda: topology.consumer_connections(PUSHER),
                                       what="the consumer's connection in the management API")
        go.set()
        await eventually(lambda: db.fetchval("SELECT count(*) >= 300 FROM audit_log"),
                         interval=0.01, what="some messages settled")
        topology.management.close_connection(connections[0]["name"], "test: broker drop")
        settled_before = len(await final_counts(db))
        await eventually(lambda: consumer.connections >= 2, what="a reconnection")
        counts = await eventually(
            lambda: _when(final_counts(db), lambda c: len(c) == len(messages)),
            timeout=60, what="every message settled")
    assert settled_before < len(messages), "the drop came too late to prove anything"
    assert set(counts.values()) == {1}, "messages settled twice"
    assert consumer.connections == 2
    assert topology.ready(PUSH.name) == 0
    outcomes = await db.fetch("SELECT outcome, count(*) AS n FROM audit_log GROUP BY outcome")
    assert {r["outcome"]: r["n"] for r in outcomes}.get("retrying", 0) >= 200


async def test_sigterm_finishes_in_flight_work_and_exits_zero(
        topology: TestTopology, db: Any, database_url: str) -> None:
    messages = [sync_message(f"r{i}") for i in range(60)]
    await publish(topology.url, [outgoing(m) for m in messages])
    env = _app_env(topology, database_url, CONCURRENCY="8", SHUTDOWN_TIMEOUT="20")
    proc = _start_app(env, "--sleep-ms", "400")  # handlers in flight when SIGTERM comes
    try:
        await eventually(lambda: db.fetchval("SELECT count(*) >= 8 FROM audit_log"),
                         what="the first handlers done")
        at_signal = await db.fetchval("SELECT count(*) FROM audit_log")
        proc.send_signal(signal.SIGTERM)
        code, out = _finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, out[-3000:]
    counts = await final_counts(db)
    assert len(counts) > at_signal, "in-flight handlers were abandoned, not finished"
    assert set(counts.values()) == {1}
    await eventually(lambda: len(counts) + topology.ready(PUSH.name) == len(messages),
                     what="every unsettled message back in the queue")  # none lost

    code, out = _finish(_start_app(env, "--sleep-ms", "1", "--burst-ms", "300"))
    assert code == 0, out[-3000:]
    counts = await final_counts(db)
    assert set(counts) == {m.id for m in messages}
    assert set(counts.values()) == {1}
