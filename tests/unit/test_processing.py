"""The order of settling and the de-duplication rules, with in-memory stand-ins.

The integration tests prove the same against RabbitMQ and PostgreSQL; these pin
the order of steps (copy confirmed → audit committed → ack) where a real broker
could not show a wrong order reliably.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import pika
import pytest
import structlog
import structlog.testing

from shared.audit.record import AuditRecord, Outcome
from shared.errors import RemoteRejected, RemoteUnavailable
from shared.message_context import MessageContext
from shared.messaging.codec import InboundMessage
from shared.messaging.delivery import ConsumeSession, Delivery
from shared.messaging.processing import MessageProcessor, _audit_record
from shared.messaging.settle import Ack
from shared.messaging.topology import PUSH_EXCHANGE
from tests.fixtures.waiting import eventually
from tests.unit.messaging_doubles import (
    QUEUE,
    RETRY,
    FakePublisher,
    GatedSink,
    Recorder,
    Sink,
    body,
    delivery,
    new_session,
    processor_for,
)


async def setup(handler: Any, *, fail_audit: int = 0, refuse_copies: bool = False,
                always_deduplicate: bool = False, gated: bool = False,
                refuse_rows: Any = None):
    """``gated``: the audit sink commits only once the test opens ``sink.gate``;
    ``refuse_rows``: which rows the sink refuses for their data."""
    rec = Recorder()
    session, _channel = new_session(rec)
    sink = GatedSink(rec) if gated else Sink(rec, fail_audit, refuse_rows)
    publisher = FakePublisher(rec, refuse_copies)
    processor = processor_for(handler, sink, publisher, always_deduplicate=always_deduplicate)
    return rec, session, sink, publisher, processor


def acked(events: list[str]) -> set[int]:
    """The delivery tags the recorded acks cover (``ack N and before`` covers 1…N)."""
    tags: set[int] = set()
    for event in events:
        if event.startswith("ack "):
            tag = int(event.split()[1])
            tags |= set(range(1, tag + 1)) if event.endswith("and before") else {tag}
    return tags


async def settled(processor: MessageProcessor, session: ConsumeSession) -> None:
    """Until every delivery is settled and its ack sent (the processor's own hook)."""
    await processor.settled()
    await session.flushed()


async def test_success_is_audited_then_acked() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.CREATED

    rec, session, _sink, _, processor = await setup(handler)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await settled(processor, session)
    assert rec.events == ["audit created 0", "ack 1 and before"]


async def test_a_retry_copy_is_confirmed_before_the_audit_row_before_the_ack() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        raise RemoteUnavailable("503", http_status=503)

    rec, session, _, publisher, processor = await setup(handler)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await settled(processor, session)
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
    await settled(processor, session)
    assert rec.events == [RETRY, "audit refused", "audit refused",
                          "audit retrying 0", "ack 1 and before"]
    assert len(publisher.copies) == 1


async def test_a_redelivered_message_with_a_row_is_acked_without_handling() -> None:
    calls: list[int] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.context.attempt)
        return Outcome.UPDATED

    rec, session, _sink, _, processor = await setup(handler)
    message_id = str(uuid.uuid4())
    await processor.process(delivery(session, 1, body(message_id)))
    await processor.process(delivery(session, 2, body(message_id), redelivered=True))
    await settled(processor, session)
    assert calls == [0]
    # the redelivery waits for the first delivery's row, finds it, and is acked unhandled
    assert rec.events == ["audit updated 0", "ack 1 and before", "ack 2 and before"]
    assert processor.counts["duplicate"] == 1


async def test_a_retry_copy_of_a_message_done_at_another_attempt_is_acked_unhandled() -> None:
    """The copy the broker stored without confirming it, after its original was handled
    again to a final outcome: the copy is looked up, found done, acked. A copy of a
    message that only went ``retrying`` is handled."""
    done, flaky = str(uuid.uuid4()), str(uuid.uuid4())
    calls: list[tuple[str | None, int]] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append((m.context.message_id, m.context.attempt))
        if m.context.message_id == flaky and m.context.attempt == 0:
            raise RemoteUnavailable("503")
        return Outcome.CREATED

    rec, session, _sink, _, processor = await setup(handler)
    for tag, data in enumerate((body(done), body(done, attempt=1), body(flaky),
                                body(flaky, attempt=1)), 1):
        await processor.process(delivery(session, tag, data))
        await settled(processor, session)  # each row committed before the next delivery
    assert calls == [(done, 0), (flaky, 0), (flaky, 1)]
    assert processor.counts["duplicate"] == 1
    assert [e for e in rec.events if e.startswith("audit")] == [
        "audit created 0", "audit retrying 0", "audit created 1"]


async def test_a_copy_that_found_nothing_to_do_after_another_copy_did_it_writes_no_row() -> None:
    """An original and its retry copy both alive (the connection lost between the copy's
    confirm and the original's ack), handled side by side: the original creates, the
    copy — it started before that row committed — finds the record pushed and answers
    ``unchanged``. One final row for the message, not two. A copy with nothing final
    elsewhere keeps its row."""
    message_id, alone = str(uuid.uuid4()), str(uuid.uuid4())
    original_done = asyncio.Event()

    async def handler(m: InboundMessage[Any]) -> Outcome:
        if m.context.message_id == alone:
            return Outcome.UNCHANGED
        if m.context.attempt == 0:
            return Outcome.CREATED
        await original_done.wait()  # still running when the original's row commits
        return Outcome.UNCHANGED

    rec, session, sink, _, processor = await setup(handler)
    copy = asyncio.create_task(processor.process(
        delivery(session, 1, body(message_id, attempt=1))))
    await processor.process(delivery(session, 2, body(message_id), redelivered=True))
    await eventually(lambda: len(sink.rows) == 1, what="the original's row committed")
    original_done.set()
    await copy
    await processor.process(delivery(session, 3, body(alone, attempt=1)))
    await settled(processor, session)

    assert [(r.message_id, r.attempt, r.outcome) for r in sink.rows] == [
        (message_id, 0, Outcome.CREATED), (alone, 1, Outcome.UNCHANGED)]
    assert processor.counts["duplicate"] == 1
    assert acked(rec.events) == {1, 2, 3}


async def test_a_copy_that_finds_the_record_in_sync_after_another_copy_died_writes_its_row(
) -> None:
    """Another copy of the message was dead-lettered (its claim was busy, say) while
    this one ran; this one found the record in sync (another delivery pushed it): a dead
    copy did no work, so this row — the record is in sync — is written."""
    message_id = str(uuid.uuid4())
    dead_written = asyncio.Event()

    async def handler(m: InboundMessage[Any]) -> Outcome:
        if m.context.attempt == 3:
            raise RemoteRejected("refused")
        await dead_written.wait()
        return Outcome.UNCHANGED

    rec, session, sink, _, processor = await setup(handler)
    copy = asyncio.create_task(processor.process(
        delivery(session, 1, body(message_id, attempt=1))))
    await processor.process(delivery(session, 2, body(message_id, attempt=3)))
    await eventually(lambda: len(sink.rows) == 1, what="the dead copy's row committed")
    dead_written.set()
    await copy
    await settled(processor, session)

    assert [(r.attempt, r.outcome) for r in sink.rows] == [(3, Outcome.DEAD),
                                                          (1, Outcome.UNCHANGED)]
    assert processor.counts["duplicate"] == 0
    assert acked(rec.events) == {1, 2}


async def test_twins_in_flight_run_one_after_the_other_and_the_second_is_recognised() -> None:
    release = asyncio.Event()
    calls: list[str] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.context.message_id or "")
        await release.wait()
        return Outcome.UPDATED

    _rec, session, sink, _, processor = await setup(handler)
    message_id = str(uuid.uuid4())
    first = asyncio.create_task(processor.process(delivery(session, 1, body(message_id))))
    await eventually(lambda: calls == [message_id], what="the first delivery in its handler")
    second = asyncio.create_task(processor.process(delivery(session, 2, body(message_id))))
    third = asyncio.create_task(processor.process(delivery(session, 3, body(message_id))))
    await eventually(lambda: len(processor._in_flight.get((message_id, 0), [])) == 2,
                     what="both twins waiting for the first")
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
    await settled(processor, session)
    dead_copy = f"confirmed {QUEUE.dead_routing_key('account.update.o.i')}"
    assert rec.events == [dead_copy, "audit dead 2", "ack 1 and before"]
    [(_routing_key, _, headers)] = publisher.copies
    assert headers["x-error-class"] == "InvalidMessage" and "not JSON" in headers["x-error"]
    assert headers["x-attempts"] == 3
    assert sink.rows[0].error_class == "InvalidMessage"


async def test_a_republished_duplicate_is_handled_again_unless_always_deduplicating() -> None:
    calls: list[int] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.context.attempt)
        return Outcome.UPDATED

    for always, expected in ((False, [0, 0]), (True, [0])):
        calls.clear()
        _rec, session, _sink, _, processor = await setup(handler, always_deduplicate=always)
        message_id = str(uuid.uuid4())
        await processor.process(delivery(session, 1, body(message_id)))
        await settled(processor, session)  # the second publish is not a twin in flight
        await processor.process(delivery(session, 2, body(message_id)))  # a second publish
        assert calls == expected


async def test_a_handled_message_stays_in_progress_until_its_row_commits() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.CREATED

    rec, session, sink, _, processor = await setup(handler, gated=True)
    message_id = str(uuid.uuid4())
    await processor.process(delivery(session, 1, body(message_id)))
    await eventually(lambda: sink.parked == 1, what="the row waiting for its commit")
    # the worker moved on, but the message is neither acked nor released
    assert rec.events == [] and session.active == 1 and processor.in_progress == 1
    assert (message_id, 0) in processor._in_flight
    idle = asyncio.ensure_future(session.wait_idle())  # what a graceful stop waits for
    waiting = asyncio.ensure_future(processor.settled())  # what a test or a tool waits for
    await asyncio.sleep(0)  # not a wait: one turn, in which both start and block
    assert not idle.done() and not waiting.done()
    sink.gate.set()
    await asyncio.wait_for(waiting, 10)
    assert rec.events[0] == "audit created 0" and processor.in_progress == 0  # committed
    assert idle.done()
    await session.flushed()
    assert rec.events == ["audit created 0", "ack 1 and before"]
    assert session.active == 0 and processor._in_flight == {}


async def test_settled_returns_at_once_when_nothing_is_in_progress() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.CREATED

    rec, session, _, _, processor = await setup(handler)
    await asyncio.wait_for(processor.settled(), 10)
    await asyncio.wait_for(session.flushed(), 10)
    assert rec.events == []


async def test_settled_is_cancellable_and_the_processor_carries_on() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.UPDATED

    rec, session, sink, _, processor = await setup(handler, gated=True)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    waiting = asyncio.ensure_future(processor.settled())
    await eventually(lambda: sink.parked == 1, what="the row waiting for its commit")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await processor.process(delivery(session, 2, body(str(uuid.uuid4()))))
    sink.gate.set()
    await asyncio.wait_for(settled(processor, session), 10)
    assert rec.events == ["audit updated 0", "audit updated 0", "ack 2 and before"]


async def test_settled_waits_for_every_delivery_of_a_burst_whatever_its_outcome() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        await asyncio.sleep(0)  # not a wait: a handler that suspends, as real ones do
        if m.context.attempt == 1:
            raise RemoteUnavailable("503")
        return Outcome.UPDATED

    rec, session, sink, _, processor = await setup(handler)
    tasks = [asyncio.create_task(processor.process(delivery(
        session, tag, body(str(uuid.uuid4()), attempt=tag % 2)))) for tag in range(1, 9)]
    await asyncio.sleep(0)  # not a wait: one turn, in which the 8 deliveries start
    assert processor.in_progress == 8
    await asyncio.wait_for(settled(processor, session), 10)
    assert all(task.done() for task in tasks)
    assert sorted(r.outcome.value for r in sink.rows) == ["retrying"] * 4 + ["updated"] * 4
    assert acked(rec.events) == set(range(1, 9))
    assert processor.in_progress == 0 and session.active == 0


async def test_a_success_whose_row_is_refused_is_held_and_the_row_retried() -> None:
    calls: list[int] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.context.attempt)
        return Outcome.CREATED

    rec, session, _, _, processor = await setup(handler, fail_audit=2)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await asyncio.wait_for(settled(processor, session), 10)  # the backoff starts at 0.2 s
    assert calls == [0]  # held, not handled again
    assert rec.events == ["audit refused", "audit refused", "audit created 0",
                          "ack 1 and before"]
    assert session.active == 0


# -- rows refused for their data: settled without them, never held -----------------------------

DEAD = f"confirmed {QUEUE.dead_routing_key('account.update.o.i')}"


def full_rows(record: AuditRecord) -> bool:
    """Refuse every row but the minimal one written in place of a refused row."""
    return record.error_class != "AuditRowRefused"


async def test_a_success_whose_row_is_refused_is_dead_lettered_once_not_held() -> None:
    calls: list[int] = []

    async def handler(m: InboundMessage[Any]) -> Outcome:
        calls.append(m.context.attempt)
        return Outcome.CREATED

    rec, session, sink, publisher, processor = await setup(handler, refuse_rows=full_rows)
    message_id = str(uuid.uuid4())
    with structlog.testing.capture_logs() as logged:
        await processor.process(delivery(session, 1, body(message_id)))
        await asyncio.wait_for(settled(processor, session), 10)
    assert calls == [0]
    assert rec.events == ["audit row refused created", DEAD, "audit dead 0", "ack 1 and before"]
    [(_, _, headers)] = publisher.copies
    assert headers["x-error-class"] == "AuditRowRefused"
    assert "value out of range" in headers["x-error"]
    [row] = sink.rows
    assert (row.message_id, row.outcome, row.error_class) == (message_id, Outcome.DEAD,
                                                              "AuditRowRefused")
    assert row.details == {"refused_outcome": "created", "refused_error_class": None}
    assert processor.counts["row_refused"] == 1 and processor.counts["requeued"] == 0
    [alert] = [line for line in logged if line.get("alert")]
    assert alert["log_level"] == "critical" and alert["settled_as"] == "dead"


async def test_a_retry_whose_row_is_refused_keeps_its_retry_copy_and_no_dead_copy() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        raise RemoteUnavailable("503")

    rec, session, sink, publisher, processor = await setup(handler, refuse_rows=full_rows)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await asyncio.wait_for(settled(processor, session), 10)
    assert rec.events == [RETRY, "audit row refused retrying", "audit retrying 0",
                          "ack 1 and before"]
    assert len(publisher.copies) == 1
    assert sink.rows[0].details["refused_error_class"] == "RemoteUnavailable"


async def test_a_dead_letter_whose_row_is_refused_is_not_dead_lettered_twice() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        raise RemoteRejected("422")

    rec, session, _sink, publisher, processor = await setup(handler, refuse_rows=full_rows)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await asyncio.wait_for(settled(processor, session), 10)
    assert rec.events == [DEAD, "audit row refused dead", "audit dead 0", "ack 1 and before"]
    assert [h["x-error-class"] for _, _, h in publisher.copies] == ["RemoteRejected"]


async def test_when_even_the_minimal_row_is_refused_the_message_is_acked_all_the_same() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.UPDATED

    rec, session, sink, publisher, processor = await setup(handler, refuse_rows=lambda r: True)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await asyncio.wait_for(settled(processor, session), 10)
    assert rec.events == ["audit row refused updated", DEAD, "audit row refused dead",
                          "ack 1 and before"]
    assert sink.rows == [] and len(publisher.copies) == 1


async def test_a_refused_row_whose_dead_copy_is_not_confirmed_goes_back_to_its_queue() -> None:
    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.UPDATED

    rec, session, sink, _, processor = await setup(handler, refuse_rows=full_rows,
                                                   refuse_copies=True)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await asyncio.wait_for(settled(processor, session), 10)
    assert rec.events == ["audit row refused updated", DEAD, "nack 1"]
    assert sink.rows == []


async def test_a_row_the_sink_refuses_as_invalid_is_settled_the_same_way() -> None:
    """``submit`` raising ``ValueError`` (a row it cannot take) is no reason to hold."""

    class InvalidRows(Sink):
        def submit(self, record: AuditRecord, done: Any) -> None:
            raise ValueError("audit outcome 'exploded' is not an outcome")

        async def write(self, record: AuditRecord) -> None:
            if record.error_class != "AuditRowRefused":
                raise ValueError("audit outcome 'exploded' is not an outcome")
            await super().write(record)

    async def handler(m: InboundMessage[Any]) -> Outcome:
        return Outcome.UPDATED

    rec = Recorder()
    session, _channel = new_session(rec)
    sink = InvalidRows(rec)
    publisher = FakePublisher(rec)
    processor = processor_for(handler, sink, publisher)
    await processor.process(delivery(session, 1, body(str(uuid.uuid4()))))
    await asyncio.wait_for(settled(processor, session), 10)
    assert rec.events == [DEAD, "audit dead 0", "ack 1 and before"]
    [(_, _, headers)] = publisher.copies
    assert headers["x-error-class"] == "AuditRowRefused" and "ValueError" in headers["x-error"]
    assert processor.counts["requeued"] == 0


async def test_an_absurd_x_attempt_header_is_dead_lettered_at_decode_by_the_event_codec(
        ) -> None:
    from services.dispatcher.events import EVENT_CODEC

    async def handler(m: InboundMessage[Any]) -> Outcome:
        raise AssertionError("never called")

    rec = Recorder()
    session, _channel = new_session(rec)
    sink = Sink(rec)
    publisher = FakePublisher(rec)
    processor = MessageProcessor(QUEUE, EVENT_CODEC, handler, sink, lambda: publisher,
                                 concurrency=4, window=8, requeue_delay=0.01)
    event = (b'{"id": "e-1", "entity": "account", "event": "updated", "organizationId": "o",'
             b' "recordId": "r", "occurredAt": "2026-01-01T00:00:00Z"}')
    props = pika.BasicProperties(message_id="e-1", headers={"x-attempt": 2**31})
    session.received(1)
    await processor.process(Delivery(session, 1, "bss.events", "account.updated", False,
                                     props, event))
    await settled(processor, session)
    assert rec.events == [DEAD.replace("account.update.o.i", "account.updated"), "audit dead 0",
                          "ack 1 and before"]
    [(_, _, headers)] = publisher.copies
    assert headers["x-error-class"] == "InvalidMessage"
    assert "x-attempt header is 2147483648" in headers["x-error"]


@pytest.mark.parametrize("outcome", [Outcome.UPDATED, "updated", Ack(Outcome.UPDATED)])
def test_the_audit_row_of_a_handled_message_carries_every_field_of_its_context(
        outcome: Any) -> None:
    """The hot path builds the row positionally: each context field lands in its column."""
    context = MessageContext("m-1", "org-2", "inst-3", "account", "push", "update", "R-4",
                             "X-5", 6, "run-7", "corr-8")
    message: InboundMessage[None] = InboundMessage(None, context)
    row = _audit_record("pusher", message, outcome, Outcome.UPDATED, time.perf_counter())
    expected = AuditRecord.for_message("pusher", Outcome.UPDATED, context)
    assert type(row.outcome) is Outcome
    assert {**dataclasses.asdict(row), "at": None, "duration_ms": None} == {
        **dataclasses.asdict(expected), "at": None, "duration_ms": None}
    assert row.duration_ms is not None and row.duration_ms >= 0
