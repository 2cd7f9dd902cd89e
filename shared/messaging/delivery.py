"""Deliveries and the consume channel they belong to.

A delivery tag means something only on the channel that delivered it. Each consume
channel therefore gets a :class:`ConsumeSession`; a :class:`Delivery` settles
through its session, and once the session is over (the channel or the connection
died) its acks and nacks are dropped: the broker has already put those messages
back and will redeliver them, and an ack on a new channel would hit the wrong
message.

Acks are batched: a settled delivery is only *marked* done, and once per turn of
the event loop the session acks the longest run of done tags from the oldest
unsettled one with a single ``basic.ack(multiple=True)``, and the done tags
beyond a still-running delivery one by one. Nothing is acked before its
delivery called :meth:`Delivery.ack`, so acks still follow durability.
:meth:`ConsumeSession.flushed` returns once the acks marked so far are sent (what
:meth:`~shared.messaging.consumer.Consumer.join` waits for).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from typing import Any

import pika.exceptions
import structlog
from pika.channel import Channel

log = structlog.get_logger(__name__)


class ConsumeSession:
    """One consume channel's lifetime, its unsettled delivery tags and its batched acks."""

    def __init__(self, channel: Channel, closed: asyncio.Future[BaseException]) -> None:
        self.channel = channel
        self.closed = closed
        self.consumer_tag: str | None = None
        self.accepting = True
        self._loop = asyncio.get_running_loop()
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self._settled_singly: set[int] = set()
        self._flush_scheduled = False
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: Resolved when the broker cancels our subscription (the queue was deleted).
        self.cancelled: asyncio.Future[str] = self._loop.create_future()

    def cancel_by_broker(self) -> None:
        if not self.cancelled.done():
            self.cancelled.set_result("the broker cancelled the subscription")

    @property
    def alive(self) -> bool:
        return not self.closed.done() and self.channel.is_open

    @property
    def active(self) -> int:
        """Deliveries being processed right now."""
        return self._active

    def received(self, tag: int) -> None:
        self._order.append(tag)

    def started(self) -> None:
        self._active += 1
        self._idle.clear()

    def finished(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no delivery of this session is being processed."""
        await self._idle.wait()

    def ack(self, tag: int) -> None:
        """Mark ``tag`` done; it is acked at the end of this turn of the event loop."""
        if not self.alive:
            return
        self._done.add(tag)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def nack(self, tag: int, *, requeue: bool) -> None:
        """Return ``tag`` to the queue (``requeue``) or drop it to the dead-letter exchange."""
        if not self.alive:
            return
        try:
            self.channel.basic_nack(tag, requeue=requeue)
        except pika.exceptions.AMQPError as exc:
            log.warning("nack not sent; the message will be redelivered", error=str(exc))
            return
        self._settled_singly.add(tag)

    async def flushed(self) -> None:
        """Return once every ack marked so far has been handed to the channel (at once
        when none is waiting for the end of the turn). Cancellable."""
        if not self._flush_scheduled:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._flush_waiters.append(waiter)
        await waiter

    def flush(self) -> None:
        """Send the acks marked so far (see the module docstring)."""
        self._flush_scheduled = False
        try:
            self._send_acks()
        finally:
            if self._flush_waiters:  # resolved last: when they resume, the acks are sent
                waiters, self._flush_waiters = self._flush_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    def _send_acks(self) -> None:
        if not self._done or not self.alive:
            return
        order, done, singly = self._order, self._done, self._settled_singly
        last = None
        while order:
            tag = order[0]
            if tag in done:
                done.discard(tag)
                last = tag
            elif tag in singly:
                singly.discard(tag)
            else:
                break
            order.popleft()
        try:
            if last is not None:
                self.channel.basic_ack(last, multiple=True)
            for tag in done:
                self.channel.basic_ack(tag)
                singly.add(tag)
        except pika.exceptions.AMQPError as exc:
            log.warning("acks not sent; the messages will be redelivered", error=str(exc))
        done.clear()


@dataclasses.dataclass(slots=True, eq=False)
class Delivery:
    """One message as received, bound to the session that can settle it."""

    session: ConsumeSession
    tag: int
    exchange: str
    routing_key: str
    redelivered: bool
    properties: Any
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    def ack(self) -> None:
        self.session.ack(self.tag)

    def nack(self, *, requeue: bool) -> None:
        self.session.nack(self.tag, requeue=requeue)


class Inbox:
    """Deliveries received and not yet taken by a worker (a lean ``asyncio.Queue``).

    Waking a worker costs a turn of the event loop, so ``put`` wakes one only when
    no worker is already on its way: a worker that takes a delivery and sees more
    waiting wakes the next one before it starts. When handlers return without
    suspending, one worker drains a burst of deliveries by itself; when they
    suspend, the chain wakes as many workers as there are deliveries.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: deque[Delivery] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waking = 0  # workers woken that have not taken a delivery yet
        self._empty_waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._items)

    def put(self, delivery: Delivery) -> None:
        self._items.append(delivery)
        if not self._waking:
            self._wake_one()

    async def get(self) -> Delivery:
        items = self._items
        while not items:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._waking -= 1  # woken, then cancelled: pass the wake on
                    if items and not self._waking:
                        self._wake_one()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            self._waking -= 1
        delivery = items.popleft()
        if items:
            if not self._waking:
                self._wake_one()
        elif self._empty_waiters:
            self._wake_emptied()
        return delivery

    async def emptied(self) -> None:
        """Return once every delivery put has been taken (or cleared); at once when none
        waits. A worker that took the last one has started it by the time this returns."""
        if not self._items:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._empty_waiters.append(waiter)
        await waiter

    def _wake_emptied(self) -> None:
        waiters, self._empty_waiters = self._empty_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._waking += 1
                return

    def clear(self) -> None:
        self._items.clear()
        self._wake_emptied()
