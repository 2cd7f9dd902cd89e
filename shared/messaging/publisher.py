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
from collections.abc import Iterable, Mapping
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


class Publisher:
    """Publishes on one confirm-mode channel; see the module docstring."""

    def __init__(self, channel: Channel, closed: asyncio.Future[BaseException], *,
                 nack_patience: float = NACK_PATIENCE) -> None:
        self._channel = channel
        self.nack_patience = nack_patience
        self._closed = closed
        self._loop = asyncio.get_running_loop()
        self._next_tag = 1
        self._pending: dict[int, _Pending] = {}
        self._order: deque[int] = deque()
        self._failure: InfrastructureError | None = None
        closed.add_done_callback(self._on_channel_closed)

    @classmethod
    async def open(cls, connection: AmqpConnection) -> Publisher:
        """A publisher on a new channel of ``connection``. Raises ``InfrastructureError``."""
        channel = await connection.channel()
        closed = channel_closed_future(channel)
        publisher = cls(channel, closed)
        channel.add_on_return_callback(publisher._on_return)
        await rpc(lambda cb: channel.confirm_delivery(publisher._on_confirm, callback=cb),
                  closed, "enable publisher confirms")
        return publisher

    @property
    def closed(self) -> asyncio.Future[BaseException]:
        """Resolves with the reason once the channel is closed."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Messages published and not yet confirmed."""
        return len(self._pending)

    @property
    def is_open(self) -> bool:
        return self._failure is None and self._channel.is_open

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

        The nacked ones are published again, with backoff, until the broker takes
        them or ``nack_patience`` seconds have passed. Raises the first failure (see
        :meth:`publish`) after every confirm is in; messages published before and
        after a failed one may have been taken.
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
        if self._channel.is_open:
            self._channel.close()
        await asyncio.wait({self._closed}, timeout=10)

    # ------------------------------------------------------------------ broker callbacks

    def _send(self, exchange: str, routing_key: str, body: bytes,
              properties: pika.BasicProperties) -> asyncio.Future[None]:
        try:
            self._channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        except pika.exceptions.AMQPError as exc:
            raise InfrastructureError(f"cannot publish: {redact(str(exc))}") from exc
        tag = self._next_tag
        self._next_tag = tag + 1
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[tag] = _Pending(future, exchange, routing_key, properties.message_id)
        self._order.append(tag)
        return future

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, Basic.Nack)
        if method.multiple:
            self._settle_up_to(method.delivery_tag, nack)
        else:
            self._settle(method.delivery_tag, nack)
            self._trim_order()

    def _settle_up_to(self, last: int, nack: bool) -> None:
        order = self._order
        while order and order[0] <= last:
            self._settle(order.popleft(), nack)

    def _settle(self, tag: int, nack: bool) -> None:
        pending = self._pending.pop(tag, None)
        if pending is None or pending.future.done():
            return
        if nack:
            pending.future.set_exception(PublishNacked(
                f"RabbitMQ refused the message for {_where(pending)}"))
        else:
            pending.future.set_result(None)

    def _trim_order(self) -> None:
        """Forget tags at the front of the order that single confirms already settled."""
        order, pending = self._order, self._pending
        while order and order[0] not in pending:
            order.popleft()

    def _on_return(self, _channel: Channel, method: Basic.Return,
                   properties: pika.BasicProperties, _body: bytes) -> None:
        for pending in self._pending.values():  # oldest first; returns are rare
            if (not pending.future.done() and pending.exchange == method.exchange
                    and pending.routing_key == method.routing_key
                    and pending.message_id == properties.message_id):
                pending.future.set_exception(Unroutable(
                    f"no queue is bound for {_where(pending)} "
                    f"({method.reply_code} {method.reply_text}); is the topology declared?"))
                return

    def _on_channel_closed(self, closed: asyncio.Future[BaseException]) -> None:
        reason = closed.result() if not closed.cancelled() else None
        self._failure = InfrastructureError(
            f"the publishing channel closed: {redact(str(reason)) or 'closed'}")
        pending, self._pending = self._pending, {}
        self._order.clear()
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(InfrastructureError(
                    f"the channel closed before RabbitMQ confirmed the message for "
                    f"{_where(item)}: {redact(str(reason))}"))


def _where(pending: _Pending) -> str:
    exchange = pending.exchange or "(default exchange)"
    return f"exchange {exchange!r} routing key {pending.routing_key!r}"


async def _outcome(future: asyncio.Future[None]) -> BaseException | None:
    try:
        await future
    except InfrastructureError as exc:
        return exc
    return None
