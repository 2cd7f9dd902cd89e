"""Confirm tracking and ack batching, driven by stand-ins for pika's channel and
connection.

The broker side is exercised by tests/integration; here the bookkeeping is pinned:
``multiple`` acks and nacks, nacked messages published again (within the patience),
the move to a fresh channel after a nack (the old one closed once its confirms are
in), returns, a channel that dies with confirms pending, and acks that never cover a
delivery still being processed.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pika
import pytest
from pika.spec import Basic, Confirm

from shared.errors import InfrastructureError
from shared.messaging import publisher as publisher_module
from shared.messaging.delivery import ConsumeSession
from shared.messaging.publisher import OutgoingMessage, Publisher, PublishNacked, Unroutable
from shared.messaging.topology import PUSH_EXCHANGE


class FakeChannel:
    """Records what the runtime sends; ``is_open`` until closed. ``confirm`` and
    ``returned`` play the broker's answers through the callbacks pika would call."""

    def __init__(self) -> None:
        self.is_open = True
        self.published: list[tuple[str, str, bytes, Any]] = []
        self.acks: list[tuple[int, bool]] = []
        self.nacks: list[tuple[int, bool]] = []
        self.on_confirm: Any = None
        self.on_return: Any = None
        self.on_close: list[Any] = []

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, properties: Any,
                      mandatory: bool = False) -> None:
        assert mandatory
        self.published.append((exchange, routing_key, body, properties))

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))

    def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.nacks.append((tag, requeue))

    def confirm_delivery(self, ack_nack_callback: Any, callback: Any) -> None:
        self.on_confirm = ack_nack_callback
        callback(SimpleNamespace(method=Confirm.SelectOk()))

    def add_on_return_callback(self, callback: Any) -> None:
        self.on_return = callback

    def add_on_close_callback(self, callback: Any) -> None:
        self.on_close.append(callback)

    def close(self, reason: BaseException | None = None) -> None:
        self.is_open = False
        for callback in self.on_close:
            callback(self, reason or ConnectionError("closed by the client"))

    def confirm(self, tag: int, *, multiple: bool = False, nack: bool = False) -> None:
        method = Basic.Nack(tag, multiple) if nack else Basic.Ack(tag, multiple)
        self.on_confirm(SimpleNamespace(method=method))

    def returned(self, routing_key: str, message_id: str) -> None:
        self.on_return(self, Basic.Return(312, "NO_ROUTE", "", routing_key),
                       pika.BasicProperties(message_id=message_id), b"{}")


class FakeConnection:
    """Hands out a new :class:`FakeChannel` for each channel asked for."""

    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []

    async def channel(self) -> FakeChannel:
        self.channels.append(FakeChannel())
        return self.channels[-1]


def message(i: int) -> OutgoingMessage:
    return OutgoingMessage(PUSH_EXCHANGE, f"k{i}", b"{}", f"m{i}")


async def make_publisher(
    nack_patience: float = 30.0,
) -> tuple[Publisher, FakeChannel, FakeConnection]:
    connection = FakeConnection()
    publisher = await Publisher.open(connection, nack_patience=nack_patience)  # type: ignore[arg-type]
    return publisher, connection.channels[0], connection


async def test_messages_are_persistent_json_with_their_id() -> None:
    publisher, channel, _ = await make_publisher()
    publisher.publish_nowait(OutgoingMessage(PUSH_EXCHANGE, "k", b"{}", "m1", {"x-a": 1}, "c1"))
    props = channel.published[0][3]
    assert (props.delivery_mode, props.content_type, props.message_id, props.headers,
            props.correlation_id) == (2, "application/json", "m1", {"x-a": 1}, "c1")


async def test_single_and_multiple_acks_resolve_the_right_futures() -> None:
    publisher, channel, _ = await make_publisher()
    futures = [publisher.publish_nowait(message(i)) for i in range(1, 7)]
    channel.confirm(2)
    assert [f.done() for f in futures] == [False, True, False, False, False, False]
    channel.confirm(4, multiple=True)
    assert [f.done() for f in futures] == [True, True, True, True, False, False]
    channel.confirm(6)
    channel.confirm(5)
    assert all(f.done() and f.exception() is None for f in futures)
    assert publisher.in_flight == 0 and not publisher._lane.order


async def test_nacks_fail_their_futures() -> None:
    publisher, channel, _ = await make_publisher()
    futures = [publisher.publish_nowait(message(i)) for i in range(1, 4)]
    channel.confirm(2, multiple=True, nack=True)
    channel.confirm(3)
    assert isinstance(futures[0].exception(), PublishNacked)
    assert isinstance(futures[1].exception(), PublishNacked)
    assert futures[2].exception() is None


async def test_a_returned_message_fails_its_own_future_only() -> None:
    publisher, channel, _ = await make_publisher()
    first = publisher.publish_nowait(message(1))
    second = publisher.publish_nowait(OutgoingMessage("", "nowhere", b"{}", "m2"))
    channel.returned("nowhere", "m2")
    channel.confirm(2, multiple=True)  # the broker acks a returned message too
    assert first.exception() is None
    with pytest.raises(Unroutable, match="nowhere"):
        second.result()


async def test_a_closed_channel_fails_pending_and_later_publishes() -> None:
    publisher, channel, _ = await make_publisher()
    pending = publisher.publish_nowait(message(1))
    channel.close(ConnectionError("connection reset"))
    await asyncio.sleep(0)  # not a wait: one turn, in which the close callbacks run
    with pytest.raises(InfrastructureError, match="before RabbitMQ confirmed"):
        pending.result()
    with pytest.raises(InfrastructureError):
        publisher.publish_nowait(message(2))
    assert publisher.closed.done() and not publisher.is_open


def answering_broker(connection: FakeConnection, refuse: Any) -> asyncio.Task[None]:
    """A broker that confirms each publish on the next turn, on whichever channel it
    came: ``refuse(tag, routing_key)`` true nacks it, false acks it, ``None`` leaves
    it unanswered (tags counted per channel); runs until cancelled."""

    async def broker() -> None:
        answered: dict[int, int] = {}
        while True:
            await asyncio.sleep(0)  # not a wait: the broker answers once per turn
            for channel in list(connection.channels):
                done = answered.get(id(channel), 0)
                for tag in range(done + 1, len(channel.published) + 1):
                    nack = refuse(tag, channel.published[tag - 1][1])
                    if nack is not None:
                        channel.confirm(tag, nack=nack)
                answered[id(channel)] = len(channel.published)

    return asyncio.create_task(broker())


def published(connection: FakeConnection) -> list[tuple[str, str, bytes, Any]]:
    return [p for channel in connection.channels for p in channel.published]


async def test_publish_many_publishes_all_and_reports_the_first_failure() -> None:
    publisher, _, connection = await make_publisher(nack_patience=0)
    broker = answering_broker(connection, lambda _tag, key: key == "k2")
    try:
        with pytest.raises(PublishNacked, match="k2"):
            await publisher.publish_many([message(i) for i in range(10)], window=3)
    finally:
        broker.cancel()
    assert sorted(p[1] for p in published(connection)) == sorted(f"k{i}" for i in range(10))


async def test_nacked_messages_are_published_again_until_the_broker_takes_them() -> None:
    # a quorum queue electing a new leader refuses publishes for a while
    publisher, _, connection = await make_publisher()
    refused = {"k2": 2, "k4": 1}  # how many more times each routing key is refused

    def refuse(_tag: int, key: str) -> bool:
        if refused.get(key, 0) > 0:
            refused[key] -= 1
            return True
        return False

    broker = answering_broker(connection, refuse)
    try:
        await publisher.publish_many([message(i) for i in range(1, 6)], window=2)
    finally:
        broker.cancel()
    # each of the five once, then only the refused ones again: k2 twice, k4 once
    sent = published(connection)
    assert [p[1] for p in sent] == ["k1", "k2", "k3", "k4", "k5", "k2", "k4", "k2"]
    assert [p[3].message_id for p in sent[5:]] == ["m2", "m4", "m2"]
    assert publisher.in_flight == 0


async def test_a_single_publish_is_published_again_after_a_nack() -> None:
    publisher, _, connection = await make_publisher()
    broker = answering_broker(connection, lambda tag, _key: tag == 1 and
                              len(connection.channels) == 1)
    try:
        await publisher.publish(PUSH_EXCHANGE, "k1", b"{}", message_id="m1")
    finally:
        broker.cancel()
    assert [p[3].message_id for p in published(connection)] == ["m1", "m1"]


async def test_nacks_past_the_patience_fail_with_publish_nacked() -> None:
    publisher, _, connection = await make_publisher(nack_patience=0.6)
    broker = answering_broker(connection, lambda _tag, key: key == "k2")
    try:
        with pytest.raises(PublishNacked, match="k2"):
            await publisher.publish_many([message(i) for i in range(1, 4)])
    finally:
        broker.cancel()
    keys = [p[1] for p in published(connection)]
    assert keys[:3] == ["k1", "k2", "k3"] and set(keys[3:]) == {"k2"} and len(keys) > 3


async def test_a_channel_that_nacks_for_good_is_left_for_a_fresh_one() -> None:
    # RabbitMQ 3.10 nacks every publish to a quorum queue on a channel whose first
    # publish found the queue's recorded leader down; a new channel is served
    publisher, first, connection = await make_publisher()
    held = publisher.publish_nowait(message(0))  # confirmed by hand, later
    broker = answering_broker(connection, lambda _tag, key: None if key == "k0" else
                              len(connection.channels) == 1)
    try:
        await asyncio.wait_for(publisher.publish_many([message(1), message(2)]), 10)
    finally:
        broker.cancel()
    assert len(connection.channels) == 2 and publisher.renewals == 1
    second = connection.channels[1]
    assert [p[1] for p in first.published] == ["k0", "k1", "k2"]
    assert [p[1] for p in second.published] == ["k1", "k2"]
    # the old channel stays open for the confirm still owed on it, then is closed
    assert first.is_open and not held.done()
    first.confirm(1)
    assert held.exception() is None and not first.is_open
    assert publisher.is_open and not publisher.closed.done()  # its close was ours
    publisher.publish_nowait(message(3))
    assert second.published[-1][1] == "k3"


async def test_nacks_move_the_publisher_at_most_once_an_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_module, "RENEW_INTERVAL", 60.0)
    publisher, first, connection = await make_publisher(nack_patience=0.6)
    broker = answering_broker(connection, lambda _tag, _key: True)
    try:
        with pytest.raises(PublishNacked):
            await publisher.publish_many([message(1)])
    finally:
        broker.cancel()
    # nacked on the first channel, then on the fresh one, which it keeps
    assert publisher.renewals == 1 and len(connection.channels) == 2
    assert len(first.published) == 1 and len(connection.channels[1].published) >= 1


async def test_a_publisher_on_a_bare_channel_stays_on_it() -> None:
    channel = FakeChannel()
    closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    publisher = Publisher(channel, closed)  # type: ignore[arg-type]
    channel.confirm_delivery(publisher._lane.on_confirm, lambda _frame: None)
    future = publisher.publish_nowait(message(1))
    channel.confirm(1, nack=True)
    await asyncio.sleep(0)
    assert isinstance(future.exception(), PublishNacked) and publisher.renewals == 0


async def test_an_unroutable_message_is_not_published_again() -> None:
    publisher, channel, _ = await make_publisher()

    async def broker() -> None:
        while len(channel.published) < 2:
            await asyncio.sleep(0)
        channel.returned("k2", "m2")
        channel.confirm(2, multiple=True)

    task = asyncio.create_task(broker())
    with pytest.raises(Unroutable):
        await publisher.publish_many([message(1), OutgoingMessage("", "k2", b"{}", "m2")])
    await task
    assert len(channel.published) == 2


# ---------------------------------------------------------------------------- acks


async def make_session() -> tuple[ConsumeSession, FakeChannel]:
    channel = FakeChannel()
    closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    session = ConsumeSession(channel, closed)  # type: ignore[arg-type]
    for tag in range(1, 7):
        session.received(tag)
    return session, channel


async def test_acks_wait_for_the_turn_and_batch_the_contiguous_run() -> None:
    session, channel = await make_session()
    for tag in (1, 2, 3):
        session.ack(tag)
    assert channel.acks == []  # nothing until the end of this turn of the loop
    await session.flushed()
    assert channel.acks == [(3, True)]


async def test_flushed_returns_at_once_with_no_ack_pending_and_is_cancellable() -> None:
    session, channel = await make_session()
    await asyncio.wait_for(session.flushed(), 10)  # nothing marked: nothing to wait for
    session.ack(1)
    waiting = asyncio.ensure_future(session.flushed())
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(session.flushed(), 10)  # the flush still happens, once
    assert channel.acks == [(1, True)]


async def test_flushed_returns_when_the_channel_died_with_acks_marked() -> None:
    session, channel = await make_session()
    session.ack(1)
    session.closed.set_result(ConnectionError("gone"))
    await asyncio.wait_for(session.flushed(), 10)  # dropped, not waited for forever
    assert channel.acks == []


async def test_a_delivery_still_in_progress_is_never_covered_by_a_multiple_ack() -> None:
    session, channel = await make_session()
    for tag in (1, 3, 4):
        session.ack(tag)
    session.flush()
    assert channel.acks == [(1, True), (3, False), (4, False)]
    session.nack(2, requeue=True)
    session.ack(6)
    session.flush()
    assert channel.nacks == [(2, True)]
    assert channel.acks[-1] == (6, False)
    session.ack(5)
    session.flush()
    assert channel.acks[-1] == (5, True)  # 5 is the only one left unacked up to 5


async def test_acks_on_a_dead_channel_are_dropped() -> None:
    session, channel = await make_session()
    session.closed.set_result(ConnectionError("gone"))
    session.ack(1)
    session.nack(2, requeue=True)
    session.flush()
    assert channel.acks == [] and channel.nacks == []
