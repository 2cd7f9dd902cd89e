"""Publishing with publisher confirms tracked asynchronously (docs/architecture.md §4).

Every message is persistent (delivery mode 2), JSON, carries a message id, and is
published *mandatory* on a channel in confirm mode. :meth:`Publisher.publish`
resolves when the broker confirmed the message; thousands can be in flight at once
(no round trip per message): each publish gets a future keyed by its delivery tag,
and ``basic.ack``/``basic.nack`` — ``multiple`` or not — resolve them.

A nacked message is the broker saying "not now": a quorum queue that lost its leader
may refuse publishes until it has elected another. :meth:`Publisher.publish_many`
(and :meth:`Publisher.publish`) publish the nacked messages again, with backoff, for
up to ``nack_patience`` seconds (30 by default) before they give up with
:class:`PublishNacked`: a broker's failover must not spend the retry ladder of the
message being handled, which exists for the third party's failures. Meanwhile that
message stays unacknowledged in its queue, so nothing is lost if the process dies.

A nack also makes the publisher move to a fresh channel (at most once a second):
RabbitMQ (3.10) keeps, per channel, the quorum queue's members as they were at the
channel's first publish to it, and a channel whose first publish found the recorded
leader's node down nacks every later publish to that queue, even once a new leader
serves it; a new channel reads the queue's current leader. Publishes already on the
old channel keep their confirms there; it is closed once they are all in. Only a
publisher opened on a connection (:meth:`Publisher.open`) moves.

An unroutable message comes back as ``basic.return`` (before its ack); it fails
its future with :class:`Unroutable` instead of vanishing. A return carries no
delivery tag, so it is matched to the oldest pending publish with the same
exchange, routing key and message id (two such publishes route alike).

Errors (all :class:`~shared.errors.InfrastructureError`, so transient):

    PublishFailed            the broker did not take the message
    ├── Unroutable           no queue is bound for it (basic.return)
    └── PublishNacked        the broker nacked it
    InfrastructureError      the channel or connection closed before the confirm
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pika
import structlog
from pika.channel import Channel
from pika.spec import Basic

from shared.errors import InfrastructureError
from shared.logging import redact
from shared.messaging.connection import AmqpConnection, Backoff, channel_closed_future, rpc

log = structlog.get_logger("shared.messaging")

CONTENT_TYPE = "application/json"
PERSISTENT = 2
#: Unconfirmed messages ``publish_many`` keeps in flight before it waits.
DEFAULT_WINDOW = 5000
#: Seconds ``publish_many`` keeps publishing nacked messages again before it gives up.
NACK_PATIENCE = 30.0
#: Seconds between two moves to a fresh channel after nacks.
RENEW_INTERVAL = 1.0


class PublishFailed(InfrastructureError):
    """The broker did not take a message."""


class Unroutable(PublishFailed):
    """No queue is bound for the message's exchange and routing key."""


class PublishNacked(PublishFailed):
    """The broker refused the message (basic.nack), e.g. a queue over its length limit."""


@dataclasses.dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to publish."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None = None
    headers: Mapping[str, Any] | None = None
    correlation_id: str | None = None


@dataclasses.dataclass(slots=True)
class _Pending:
    future: asyncio.Future[None]
    exchange: str
    routing_key: str
    message_id: str | None


class _Lane:
    """One confirm-mode channel and the publishes awaiting its confirms."""

    __slots__ = ("channel", "closed", "next_tag", "on_nack", "order", "pending", "retired")

    def __init__(self, channel: Channel, closed: asyncio.Future[BaseException],
                 on_nack: Callable[[_Lane], None]) -> None:
        self.channel = channel
        self.closed = closed
        self.on_nack = on_nack
        self.next_tag = 1
        self.pending: dict[int, _Pending] = {}
        self.order: deque[int] = deque()
        self.retired = False

    def send(self, exchange: str, routing_key: str, body: bytes,
             properties: pika.BasicProperties, future: asyncio.Future[None]) -> None:
        try:
            self.channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        except pika.exceptions.AMQPError as exc:
            raise InfrastructureError(f"cannot publish: {redact(str(exc))}") from exc
        tag = self.next_tag
        self.next_tag = tag + 1
        self.pending[tag] = _Pending(future, exchange, routing_key, properties.message_id)
        self.order.append(tag)

    def retire(self) -> None:
        """Take no more publishes; close the channel once every confirm is in."""
        self.retired = True
        self._close_if_drained()

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, Basic.Nack)
        if method.multiple:
            order = self.order
            last = method.delivery_tag
            while order and order[0] <= last:
                self._settle(order.popleft(), nack)
        else:
            self._settle(method.delivery_tag, nack)
            self._trim_order()
        if nack:
            self.on_nack(self)
        if self.retired:
            self._close_if_drained()

    def on_return(self, _channel: Channel, method: Basic.Return,
                  properties: pika.BasicProperties, _body: bytes) -> None:
        for pending in self.pending.values():  # oldest first; returns are rare
            if (not pending.future.done() and pending.exchange == method.exchange
                    and pending.routing_key == method.routing_key
                    and pending.message_id == properties.message_id):
                pending.future.set_exception(Unroutable(
                    f"no queue is bound for {_where(pending)} "
                    f"({method.reply_code} {method.reply_text}); is the topology declared?"))
                return

    def fail_pending(self, reason: BaseException | None) -> None:
        pending, self.pending = self.pending, {}
        self.order.clear()
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(InfrastructureError(
                    f"the channel closed before RabbitMQ confirmed the message for "
                    f"{_where(item)}: {redact(str(reason))}"))

    def _settle(self, tag: int, nack: bool) -> None:
        pending = self.pending.pop(tag, None)
        if pending is None or pending.future.done():
            return
        if nack:
            pending.future.set_exception(PublishNacked(
                f"RabbitMQ refused the message for {_where(pending)}"))
        else:
            pending.future.set_result(None)

    def _trim_order(self) -> None:
        """Forget tags at the front of the order that single confirms already settled."""
        order, pending = self.order, self.pending
        while order and order[0] not in pending:
            order.popleft()

    def _close_if_drained(self) -> None:
        if not self.pending and self.channel.is_open:
            self.channel.close()


class Publisher:
    """Publishes on a confirm-mode channel; see the module docstring."""

    def __init__(self, channel: Channel, closed: asyncio.Future[BaseException], *,
                 connection: AmqpConnection | None = None,
                 nack_patience: float = NACK_PATIENCE) -> None:
        self.nack_patience = nack_patience
        self._connection = connection
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[BaseException] = self._loop.create_future()
        self._failure: InfrastructureError | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._renewed_at = float("-inf")
        self._renewals = 0
        self._lane = self._adopt(channel, closed)

    @classmethod
    async def open(cls, connection: AmqpConnection, *,
                   nack_patience: float = NACK_PATIENCE) -> Publisher:
        """A publisher on a new channel of ``connection``. Raises ``InfrastructureError``."""
        channel, closed = await cls._confirming_channel(connection)
        publisher = cls(channel, closed, connection=connection, nack_patience=nack_patience)
        await publisher._enable_confirms(publisher._lane)
        return publisher

    @property
    def closed(self) -> asyncio.Future[BaseException]:
        """Resolves with the reason once the publisher's channel is closed under it."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Messages published and not yet confirmed (on the current channel)."""
        return len(self._lane.pending)

    @property
    def renewals(self) -> int:
        """How many times the publisher moved to a fresh channel."""
        return self._renewals

    @property
    def is_open(self) -> bool:
        return self._failure is None and self._lane.channel.is_open

    def publish_nowait(self, message: OutgoingMessage) -> asyncio.Future[None]:
        """Publish now; the returned future resolves on the broker's confirm.

        Raises :class:`InfrastructureError` at once when the channel is closed.
        """
        if self._failure is not None:
            raise self._failure
        properties = pika.BasicProperties(
            delivery_mode=PERSISTENT, content_type=CONTENT_TYPE, message_id=message.message_id,
            correlation_id=message.correlation_id,
            headers=dict(message.headers) if message.headers else None,
            timestamp=int(time.time()),
        )
        return self._send(message.exchange, message.routing_key, message.body, properties)

    def republish_nowait(self, exchange: str, routing_key: str, body: bytes,
                         properties: pika.BasicProperties) -> asyncio.Future[None]:
        """Publish ``body`` with ready-made ``properties`` (made persistent); see above."""
        if self._failure is not None:
            raise self._failure
        properties.delivery_mode = PERSISTENT
        return self._send(exchange, routing_key, body, properties)

    async def publish(self, exchange: str, routing_key: str, body: bytes, *,
                      headers: Mapping[str, Any] | None = None, message_id: str | None = None,
                      correlation_id: str | None = None) -> None:
        """Publish one message and wait for its confirm.

        A nacked message is published again for up to ``nack_patience`` seconds (see
        the module docstring). Raises :class:`Unroutable`, :class:`PublishNacked`, or
        :class:`InfrastructureError` when the channel closed first.
        """
        await self.publish_many([OutgoingMessage(exchange, routing_key, body, message_id,
                                                 headers, correlation_id)])

    async def publish_many(self, messages: Iterable[OutgoingMessage], *,
                           window: int = DEFAULT_WINDOW) -> None:
        """Publish every message, at most ``window`` unconfirmed at a time; wait for all.

        The nacked ones are published again, with backoff (on a fresh channel once
        the publisher has moved), until the broker takes them or ``nack_patience``
        seconds have passed. Raises the first failure (see :meth:`publish`) after
        every confirm is in; messages published before and after a failed one may
        have been taken.
        """
        deadline = time.monotonic() + self.nack_patience
        backoff = Backoff(base=0.25, cap=4.0)
        batch: Iterable[OutgoingMessage] = messages
        while True:
            nacked, error = await self._publish_round(batch, window)
            if error is None and nacked:
                delay = backoff.next_delay()
                if time.monotonic() + delay <= deadline:
                    log.warning("publish nacked; publishing again", messages=len(nacked),
                                delay=round(delay, 2), error=str(nacked[0][1]))
                    await asyncio.sleep(delay)
                    if self._renewal is not None:  # publish them on the fresh channel
                        await asyncio.wait({self._renewal})
                    batch = [message for message, _ in nacked]
                    continue
                error = nacked[0][1]
            if error is not None:
                raise error
            return

    async def _publish_round(
        self, messages: Iterable[OutgoingMessage], window: int,
    ) -> tuple[list[tuple[OutgoingMessage, PublishNacked]], BaseException | None]:
        """Publish ``messages`` once; the nacked ones, and the first other failure."""
        futures: deque[tuple[OutgoingMessage, asyncio.Future[None]]] = deque()
        nacked: list[tuple[OutgoingMessage, PublishNacked]] = []
        first_error: BaseException | None = None

        async def settle_oldest() -> None:
            nonlocal first_error
            message, future = futures.popleft()
            error = await _outcome(future)
            if isinstance(error, PublishNacked):
                nacked.append((message, error))
            elif error is not None:
                first_error = first_error or error

        for message in messages:
            while len(futures) >= window:
                await settle_oldest()
            futures.append((message, self.publish_nowait(message)))
        while futures:
            await settle_oldest()
        return nacked, first_error

    async def close(self) -> None:
        """Close the channel; unconfirmed publishes fail with ``InfrastructureError``."""
        if self._renewal is not None:
            self._renewal.cancel()
        self._failure = self._failure or InfrastructureError("the publisher is closed")
        lane = self._lane
        if lane.channel.is_open:
            lane.channel.close()
        await asyncio.wait({lane.closed}, timeout=10)

    # ------------------------------------------------------------------ channels

    @staticmethod
    async def _confirming_channel(
        connection: AmqpConnection,
    ) -> tuple[Channel, asyncio.Future[BaseException]]:
        channel = await connection.channel()
        return channel, channel_closed_future(channel)

    async def _enable_confirms(self, lane: _Lane) -> None:
        lane.channel.add_on_return_callback(lane.on_return)
        await rpc(lambda cb: lane.channel.confirm_delivery(lane.on_confirm, callback=cb),
                  lane.closed, "enable publisher confirms")

    def _adopt(self, channel: Channel, closed: asyncio.Future[BaseException]) -> _Lane:
        lane = _Lane(channel, closed, self._on_nack)
        closed.add_done_callback(lambda done: self._on_lane_closed(lane, done))
        return lane

    def _on_nack(self, lane: _Lane) -> None:
        """A nack on ``lane``: move to a fresh channel (see the module docstring)."""
        if (lane is not self._lane or self._connection is None or self._renewal is not None
                or self._failure is not None
                or time.monotonic() - self._renewed_at < RENEW_INTERVAL):
            return
        self._renewed_at = time.monotonic()
        self._renewal = self._loop.create_task(self._renew(lane, self._connection))

    async def _renew(self, old: _Lane, connection: AmqpConnection) -> None:
        try:
            channel, closed = await self._confirming_channel(connection)
            lane = self._adopt(channel, closed)
            await self._enable_confirms(lane)
        except InfrastructureError as exc:
            log.warning("cannot open a fresh publishing channel; staying on this one",
                        error=str(exc))
            return
        finally:
            self._renewal = None
        if old is not self._lane or self._failure is not None:
            lane.retire()
            return
        self._lane = lane
        self._renewals += 1
        log.info("a publish was nacked; publishing on a fresh channel",
                 unconfirmed_on_the_old=len(old.pending))
        old.retire()

    # ------------------------------------------------------------------ broker callbacks

    def _send(self, exchange: str, routing_key: str, body: bytes,
              properties: pika.BasicProperties) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        self._lane.send(exchange, routing_key, body, properties, future)
        return future

    def _on_lane_closed(self, lane: _Lane, closed: asyncio.Future[BaseException]) -> None:
        reason = closed.result() if not closed.cancelled() else None
        lane.fail_pending(reason)
        if lane is not self._lane:
            return  # a retired channel, closed once drained (or under it: its own fail)
        self._failure = self._failure or InfrastructureError(
            f"the publishing channel closed: {redact(str(reason)) or 'closed'}")
        if not self._closed.done():
            self._closed.set_result(reason)  # type: ignore[arg-type]


def _where(pending: _Pending) -> str:
    exchange = pending.exchange or "(default exchange)"
    return f"exchange {exchange!r} routing key {pending.routing_key!r}"


async def _outcome(future: asyncio.Future[None]) -> BaseException | None:
    try:
        await future
    except InfrastructureError as exc:
        return exc
    return None
