"""The order of settling and the de-duplication rules, with in-memory stand-ins.

The integration tests prove the same against RabbitMQ and PostgreSQL; these pin
the order of steps (copy confirmed → audit committed → ack) where a real broker
could not show a wrong order reliably.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pika

from shared.audit.record import AuditRecord, Outcome
from shared.errors import InfrastructureError, RemoteUnavailable
from shared.messaging.codec import SYNC_CODEC, InboundMessage
from shared.messaging.delivery import ConsumeSession, Delivery
from shared.messaging.processing import MessageProcessor
from shared.messaging.topology import PUSH_EXCHANGE, PUSHER, WorkQueue

QUEUE = WorkQueue(PUSHER, (0.01, 0.02))
RETRY = f"confirmed {QUEUE.retry_queue(0).name}"  # the copy to the first rung, confirmed


class Recorder:
    """Everything observable, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []


class Channel:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.is_open = True

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.rec.events.append(f"ack {tag}" + (" and before" if multiple else ""))

    def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.rec.events.append(f"nack {tag}")


class Sink:
    def __init__(self, rec: Recorder, fail: int = 0) -> None:
        self.rec, self.fail = rec, fail
        self.rows: list[AuditRecord] = []
        self.tasks: set[asyncio.Future[None]] = set()

    async def write(self, record: AuditRecord) -> None:
        await asyncio.sleep(0)
        if self.fail:
            self.fail -= 1
            self.rec.events.append("audit refused")
            raise InfrastructureError("db down")
        self.rows.append(record)
        self.rec.events.append(f"audit {record.outcome.value} {record.attempt}")

    def submit(self, record: AuditRecord, done: Any) -> None:
        async def commit() -> None:
            try:
                await self.write(record)
            except InfrastructureError as exc:
                done(exc)
            else:
                done(None)

        task = asyncio.ensure_future(commit())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def settled_outcome(self, message_id: str, attempt: int) -> Outcome | None:
        for row in self.rows:
            if row.message_id == message_id and row.attempt == attempt:
                return row.outcome
        return None

    async def final_outcome(self, message_id: str) -> Outcome | None:
        return None


class FakePublisher:
    def __init__(self, rec: Recorder, refuse: bool = False) -> None:
        self.rec, self.refuse = rec, refuse
        self.copies: list[tuple[str, str, dict]] = []

    def republish_nowait(self, exchange: str, routing_key: str, body: bytes,
                         properties: Any) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()

        def confirm() -> None:
            attempt = json.loads(body)["attempt"] if body.startswith(b'{"') else None
            self.copies.append((routing_key, attempt, properties.headers))
            self.rec.events.append(f"confirmed {routing_key}")
            if self.refuse:
                future.set_exception(InfrastructureError("nacked"))
            else:
                future.set_result(None)

        asyncio.get_running_loop().call_later(0.001, confirm)
        return future


def body(message_id: str, attempt: int = 0) -> bytes:
    return json.dumps({
        "id": message_id, "direction": "push", "org_id": "o", "instance_id": "i",
        "entity": "account", "action": "update", "record_id": "r", "trigger": "event",
        "attempt": attempt, "created_at": "2026-01-01T00:00:00Z"}).encode()


async def setup(handler: Any, *, fail_audit: int = 0, refuse_copies: bool = False,
                always_deduplicate: bool = False):
    rec = Recorder()
    closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    session = ConsumeSession(Channel(rec), closed)  # type: ignore[arg-type]
    sink, publisher = Sink(rec, fail_audit), FakePublisher(rec, refuse_copies)
    processor = MessageProcessor(QUEUE, SYNC_CODEC, handler, sink, lambda: publisher,
                                 concurrency=4, window=8, requeue_delay=0.01,
                                 always_deduplicate=always_deduplicate)
    return rec, session, sink, publisher, processor


def delivery(session: ConsumeSession, tag: int, data: bytes, redelivered: bool = False):
    session.received(tag)
    props = pika.BasicProperties(message_id=json.loads(data)["id"], headers={})
    return Delivery(session, tag, PUSH_EXCHANGE, "account.update.o.i", redelivered, props, data)


async def settle_turn() -> None:
    await asyncio.sleep(0.05)


async def test_success_is_audited_then_acked() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.CREATED

    rec, session, _sink, _, processor = await setup(handler)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await settle_turn()
    assert rec.events == ["audit created 0", "ack 1 and before"]


async def test_a_retry_copy_is_confirmed_before_the_audit_row_before_the_ack() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        raise RemoteUnavailable("503", http_status=503)

    rec, session, _, publisher, processor = await setup(handler)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await settle_turn()
    assert rec.events == [RETRY, "audit retrying 0", "ack 1 and before"]
    [(_, attempt, headers)] = publisher.copies
    assert attempt == 1 and headers["x-attempt"] == 1


async def test_an_unconfirmed_copy_sends_the_message_back_and_writes_no_row() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        raise RemoteUnavailable("503")

    rec, session, sink, _, processor = await setup(handler, refuse_copies=True)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    assert rec.events == [RETRY, "nack 1"]
    assert sink.rows == []


async def test_a_failing_audit_log_holds_the_message_and_never_republishes() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        raise RemoteUnavailable("503")

    rec, session, _, publisher, processor = await setup(handler, fail_audit=2)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await settle_turn()
    assert rec.events == [RETRY, "audit refused", "audit refused",
                          "audit retrying 0", "ack 1 and before"]
    assert len(publisher.copies) == 1


async def test_a_redelivered_message_with_a_row_is_acked_without_handling() -> None:
    calls: list[int] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.attempt)
        return Outcome.UPDATED

    rec, session, _sink, _, processor = await setup(handler)
    message_id = str(uuid.uuid4())
    await processor.process(delivery(session, 1, body(message_id)))
    await processor.process(delivery(session, 2, body(message_id), redelivered=True))
    await settle_turn()
    assert calls == [0]
    # the redelivery waits for the first delivery's row, finds it, and is acked unhandled
    assert rec.events == ["audit updated 0", "ack 1 and before", "ack 2 and before"]
    assert processor.counts["duplicate"] == 1


async def test_twins_in_flight_run_one_after_the_other_and_the_second_is_recognised() -> None:
    release = asyncio.Event()
    calls: list[str] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.message_id or "")
        await release.wait()
        return Outcome.UPDATED

    _rec, session, sink, _, processor = await setup(handler)
    message_id = str(uuid.uuid4())
    first = asyncio.create_task(processor.process(delivery(session, 1, body(message_id))))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(processor.process(delivery(session, 2, body(message_id))))
    third = asyncio.create_task(processor.process(delivery(session, 3, body(message_id))))
    await asyncio.sleep(0.01)
    assert calls == [message_id]
    release.set()
    await asyncio.gather(first, second, third)
    assert calls == [message_id]
    assert len(sink.rows) == 1 and processor.counts["duplicate"] == 2


async def test_a_poison_message_is_dead_lettered_with_its_reason() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        raise AssertionError("never called")

    rec, session, sink, publisher, processor = await setup(handler)
    props = pika.BasicProperties(message_id="p-1", headers={"x-attempt": 2})
    session.received(1)
    await processor.process(Delivery(session, 1, PUSH_EXCHANGE, "account.update.o.i", False,
                                     props, b"{not json"))
    await settle_turn()
    dead_copy = f"confirmed {QUEUE.dead_routing_key('account.update.o.i')}"
    assert rec.events == [dead_copy, "audit dead 2", "ack 1 and before"]
    [(_routing_key, _, headers)] = publisher.copies
    assert headers["x-error-class"] == "InvalidMessage" and "not JSON" in headers["x-error"]
    assert headers["x-attempts"] == 3
    assert sink.rows[0].error_class == "InvalidMessage"


async def test_a_republished_duplicate_is_handled_again_unless_always_deduplicating() -> None:
    calls: list[int] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.attempt)
        return Outcome.UPDATED

    for always, expected in ((False, [0, 0]), (True, [0])):
        calls.clear()
        _rec, session, _sink, _, processor = await setup(handler, always_deduplicate=always)
        message_id = str(uuid.uuid4())
        await processor.process(delivery(session, 1, body(message_id)))
        await settle_turn()  # settled: the second publish is not a twin in flight
        await processor.process(delivery(session, 2, body(message_id)))  # a second publish
        assert calls == expected


class GatedSink(Sink):
    """Commits only when the test opens the gate (a slow PostgreSQL)."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__(rec)
        self.gate = asyncio.Event()

    async def write(self, record: AuditRecord) -> None:
        await self.gate.wait()
        await super().write(record)


async def test_a_handled_message_stays_in_progress_until_its_row_commits() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.CREATED

    rec, session, _, publisher, _ = await setup(handler)
    sink = GatedSink(rec)
    processor = MessageProcessor(QUEUE, SYNC_CODEC, handler, sink, lambda: publisher,
                                 concurrency=4, window=8)
    message_id = str(uuid.uuid4())
    await processor.process(delivery(session, 1, body(message_id)))
    await settle_turn()
    # the worker moved on, but the message is neither acked nor released
    assert rec.events == [] and session.active == 1
    assert (message_id, 0) in processor._in_flight
    idle = asyncio.ensure_future(session.wait_idle())
    await settle_turn()
    assert not idle.done()  # what a graceful stop waits for
    sink.gate.set()
    await asyncio.wait_for(idle, 1)
    await settle_turn()
    assert rec.events == ["audit created 0", "ack 1 and before"]
    assert session.active == 0 and processor._in_flight == {}


async def test_a_success_whose_row_is_refused_is_held_and_the_row_retried() -> None:
    calls: list[int] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.attempt)
        return Outcome.CREATED

    rec, session, _, _, processor = await setup(handler, fail_audit=2)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await asyncio.sleep(1.0)  # the retry backoff starts at 0.2 s
    assert calls == [0]  # held, not handled again
    assert rec.events == ["audit refused", "audit refused", "audit created 0",
                          "ack 1 and before"]
    assert session.active == 0
