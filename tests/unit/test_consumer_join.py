"""``Consumer.join``: when the consumer's queue counts as drained, with in-memory stand-ins.

The order is what is pinned here — rows committed, then acks sent, then the queue
asked, and an answer of "empty" trusted only if nothing arrived meanwhile; the
integration test (tests/integration/test_messaging.py) proves the same against
RabbitMQ and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from shared.audit.record import Outcome
from shared.messaging.codec import SYNC_CODEC, InboundMessage
from shared.messaging.consumer import Consumer, ConsumerConfig, ConsumerStopped
from shared.messaging.delivery import ConsumeSession, Inbox
from tests.fixtures.waiting import eventually
from tests.unit.messaging_doubles import (
    QUEUE,
    Channel,
    GatedSink,
    Recorder,
    Sink,
    body,
    new_session,
    unreceived,
)


async def updated(message: InboundMessage[Any]) -> Outcome:
    return Outcome.UPDATED


def consumer_for(sink: Any, **config: Any) -> Consumer:
    return Consumer(QUEUE, SYNC_CODEC, updated, sink,
                    ConsumerConfig("amqp://unused/", concurrency=4, prefetch=8, **config))


class Running:
    """A consumer as ``run()`` leaves it once connected: an inbox, workers, a session —
    without the connection (the test plays the broker)."""

    def __init__(self, consumer: Consumer, rec: Recorder) -> None:
        self.consumer, self.rec = consumer, rec
        consumer._inbox = Inbox()
        self.workers = [asyncio.create_task(consumer._work()) for _ in range(2)]
        self.session, self.channel = self.connect()

    def connect(self) -> tuple[ConsumeSession, Channel]:
        """A new consume session becomes the consumer's current one."""
        session, channel = new_session(self.rec)
        self.consumer._adopt(session)
        return session, channel

    def deliver(self, tag: int) -> None:
        self.consumer._receive(unreceived(self.session, tag, body(str(uuid.uuid4()))))

    async def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)


async def test_join_asks_the_queue_only_after_the_rows_committed_and_the_acks_went_out() -> None:
    rec = Recorder()
    sink = GatedSink(rec)
    running = Running(consumer_for(sink), rec)
    running.deliver(1)
    joining = asyncio.ensure_future(running.consumer.join())
    await eventually(lambda: sink.parked == 1, what="the row waiting for its commit")
    assert not joining.done() and running.channel.declares == []  # no question asked yet
    sink.gate.set()
    await eventually(lambda: running.channel.declares, what="the queue check")
    assert rec.events == ["audit updated 0", "ack 1 and before", "check pusher"]
    assert not joining.done()  # the broker has not answered
    running.channel.answer(0)
    await asyncio.wait_for(joining, 10)
    await running.close()


async def test_join_waits_for_ready_messages_to_arrive_and_settle() -> None:
    rec = Recorder()
    running = Running(consumer_for(Sink(rec)), rec)
    joining = asyncio.ensure_future(running.consumer.join())
    await eventually(lambda: running.channel.declares, what="the first queue check")
    running.channel.answer(2)  # two ready, not delivered to us yet
    running.deliver(1)
    running.deliver(2)
    await eventually(lambda: running.channel.declares, what="the second queue check")
    assert rec.events == ["check pusher", "audit updated 0", "audit updated 0",
                          "ack 2 and before", "check pusher"]  # asked again once, after
    running.channel.answer(0)
    await asyncio.wait_for(joining, 10)
    await running.close()


async def test_an_empty_answer_that_crossed_a_delivery_is_not_trusted() -> None:
    rec = Recorder()
    running = Running(consumer_for(Sink(rec)), rec)
    joining = asyncio.ensure_future(running.consumer.join())
    await eventually(lambda: running.channel.declares, what="the first queue check")
    running.deliver(1)  # arrives while the check is on its way
    running.channel.answer(0)
    await eventually(lambda: running.channel.declares, what="the second queue check")
    assert rec.events == ["check pusher", "audit updated 0", "ack 1 and before",
                          "check pusher"]
    assert not joining.done()
    running.channel.answer(0)
    await asyncio.wait_for(joining, 10)
    await running.close()


async def test_join_waits_for_a_session_and_follows_a_reconnection() -> None:
    rec = Recorder()
    consumer = consumer_for(Sink(rec))
    joining = asyncio.ensure_future(consumer.join())
    await asyncio.sleep(0)  # not a wait: one turn, in which join starts and blocks
    assert not joining.done()  # not connected yet
    running = Running(consumer, rec)
    await eventually(lambda: running.channel.declares, what="the queue check")
    old = running.session
    old.channel.is_open = False  # the connection drops before the broker answers
    old.closed.set_result(ConnectionError("connection reset"))
    running.consumer._adopt(None)
    running.session, running.channel = running.connect()
    await eventually(lambda: running.channel.declares, what="the check on the new session")
    running.channel.answer(0)
    await asyncio.wait_for(joining, 10)
    await running.close()


async def test_join_is_cancellable_and_says_when_the_consumer_stops() -> None:
    rec = Recorder()
    running = Running(consumer_for(Sink(rec)), rec)
    joining = asyncio.ensure_future(running.consumer.join())
    await eventually(lambda: running.channel.declares, what="the queue check")
    joining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await joining
    joining = asyncio.ensure_future(running.consumer.join())
    await eventually(lambda: len(running.channel.declares) == 2, what="a second check")
    running.channel.answer(3)  # the first, cancelled, check's answer: three ready
    running.channel.answer(3)
    running.consumer.stop()
    with pytest.raises(ConsumerStopped, match="'pusher' stopped before its queue was drained"):
        await asyncio.wait_for(joining, 10)
    await running.close()


async def test_a_burst_ends_once_drained_and_idle_for_burst_idle() -> None:
    rec = Recorder()
    running = Running(consumer_for(Sink(rec), burst_idle=0.05), rec)
    burst = asyncio.ensure_future(running.consumer._burst_done(running.session))
    await eventually(lambda: running.channel.declares, what="the queue check")
    running.channel.answer(0)
    await asyncio.wait_for(burst, 10)
    assert rec.events == ["check pusher"]
    await running.close()


async def test_a_burst_ends_quietly_when_the_consumer_stops_while_draining() -> None:
    rec = Recorder()
    running = Running(consumer_for(Sink(rec), burst_idle=30.0), rec)
    burst = asyncio.ensure_future(running.consumer._burst_done(running.session))
    await eventually(lambda: running.channel.declares, what="the queue check")
    running.channel.answer(5)  # five ready: it waits for them
    running.consumer.stop()
    await asyncio.wait_for(burst, 10)  # returned, no exception left unretrieved
    assert burst.exception() is None
    await running.close()
