"""The consumer runtime every service runs: connection, prefetch, workers, stop, reconnect.

``Consumer(queue, codec, handler, audit, config).run()`` consumes the service's
work queue until :meth:`Consumer.stop` (SIGTERM/SIGINT in the services) or, in
burst mode, until the queue has stayed empty for ``burst_idle`` seconds.

* **Flow**: the broker keeps at most ``prefetch`` unacked deliveries with us; a pool
  of ``prefetch`` worker coroutines takes them through
  :class:`~shared.messaging.processing.MessageProcessor`, and at most
  ``concurrency`` handlers run at once (settling — confirms, audit commits — does
  not hold a handler slot). No task is created per message.
* **Reconnection**: when the connection or a channel drops, the session's pending
  acks are dropped (delivery tags die with their channel), the deliveries not yet
  started are left to the broker, and the consumer waits for the ones in progress
  to finish — their audit rows still commit, so the redelivered copies are
  recognised as settled — before it reconnects with capped, jittered backoff. A
  message is thus never processed by two deliveries of this process at once.
* **Graceful stop**: cancel the subscription, finish the deliveries in progress
  within ``shutdown_timeout``, leave the rest unacked for redelivery, flush the
  acks, close the channel and the connection.
* **Drained** (dramatiq's ``broker.join``): :meth:`Consumer.join` returns once the
  queue reports no ready message, no delivery is waiting or in progress, and every
  ack has been sent — and read by the broker, which answered the queue check after
  them on the same channel. Burst mode ends when the queue stays drained for
  ``burst_idle`` seconds. Both wake on events (a delivery, a settle, the acks sent,
  a session starting or ending), never on a polling interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import structlog

from shared.audit.record import AuditSink
from shared.errors import InfrastructureError
from shared.logging import redact
from shared.messaging.codec import Codec, Handler
from shared.messaging.connection import (
    AmqpConnection,
    Backoff,
    channel_closed_future,
    connection_name,
    open_connection,
    rpc,
)
from shared.messaging.delivery import ConsumeSession, Delivery, Inbox
from shared.messaging.live_publisher import LivePublisher
from shared.messaging.processing import DEFAULT_REQUEUE_DELAY, MessageProcessor
from shared.messaging.publisher import Publisher
from shared.messaging.topology import WorkQueue

log = structlog.get_logger("shared.messaging")
#: A session that lasted this long resets the reconnection backoff.
STABLE_SESSION_SECONDS = 30.0
#: Deliveries a worker takes in a row before it yields to the event loop.
YIELD_EVERY = 16


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """How a consumer runs; :meth:`from_settings` reads the process settings."""

    amqp_url: str
    concurrency: int = 64
    prefetch: int | None = None
    shutdown_timeout: float = 30.0
    burst_idle: float | None = None
    requeue_delay: float = DEFAULT_REQUEUE_DELAY
    reconnect_base: float = 0.5
    reconnect_cap: float = 30.0
    #: Look every message up in the audit log (see shared.messaging.processing).
    always_deduplicate: bool = False

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ConsumerConfig:
        values = {"amqp_url": settings.amqp_url, "concurrency": settings.concurrency,
                  "prefetch": settings.prefetch, "shutdown_timeout": settings.shutdown_timeout}
        values.update(overrides)
        return cls(**values)

    @property
    def window(self) -> int:
        """Unacked deliveries the broker may hand us (prefetch, default: 4 x concurrency,
        so that messages waiting for their confirm or commit do not starve the handlers;
        measured: 256 beats 64 by ~10 % with 64 handlers).

        AMQP's prefetch count is 16 bits: at most 65,535.
        """
        return min(max(self.prefetch or 4 * self.concurrency, 1), 65_535)


class ConsumerStopped(Exception):
    """The consumer stopped (or its burst ended) before :meth:`Consumer.join` saw its
    queue drained."""


class Consumer:
    """Consumes one work queue; see the module docstring."""

    def __init__(self, queue: WorkQueue, codec: Codec[Any], handler: Handler,
                 audit: AuditSink, config: ConsumerConfig,
                 publisher: LivePublisher | None = None) -> None:
        self.queue = queue
        self.config = config
        #: The publisher of the current connection, for handlers that publish.
        self.publisher = publisher or LivePublisher()
        self.processor = MessageProcessor(
            queue, codec, handler, audit, self.publisher.current,
            concurrency=min(config.concurrency, config.window), window=config.window,
            requeue_delay=config.requeue_delay, always_deduplicate=config.always_deduplicate,
        )
        self.connections = 0
        #: The consume session of the current connection (None between connections).
        self.session: ConsumeSession | None = None
        self._stop = asyncio.Event()
        self._ended = False
        self._inbox: Inbox  # made by run(), inside the event loop
        #: Bumped by every delivery received, session started or ended, and stop.
        self._version = 0
        self._watchers: list[asyncio.Future[None]] = []

    def stop(self) -> None:
        """Ask :meth:`run` to stop gracefully (safe from a signal handler)."""
        self._stop.set()
        self._bump()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def join(self) -> None:
        """Return once the queue is drained (see the module docstring): it reported no
        ready message, no delivery received is waiting or in progress, and every ack
        has been sent to the broker. Messages waiting in the retry queues are not
        waited for (they come back after their delay).

        Waits for a connection when there is none (across reconnections). Woken by
        events, never by a timer; cancellable (bound it with ``asyncio.wait_for``).
        Raises :class:`ConsumerStopped` when the consumer stops first.
        """
        while True:
            session = await self._live_session()
            try:
                await self._drained(session)
            except InfrastructureError:
                continue  # the session ended while we looked: the next one will say
            return

    async def run(self) -> None:
        """Consume until stopped (or, in burst mode, until the queue stays empty)."""
        self._inbox = Inbox()
        workers = [asyncio.create_task(self._work(), name=f"consumer-worker-{i}")
                   for i in range(self.config.window)]
        backoff = Backoff(self.config.reconnect_base, self.config.reconnect_cap)
        try:
            while not self._stop.is_set():
                if await self._connect_and_serve(backoff, workers):
                    break
                await self._sleep_unless_stopped(backoff.next_delay())
        finally:
            self._ended = True
            self._bump()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            log.info("consumer stopped", queue=self.queue.name, **self.processor.counts)

    # ------------------------------------------------------------------ sessions

    async def _connect_and_serve(self, backoff: Backoff,
                                 workers: list[asyncio.Task[None]]) -> bool:
        """One connection's life; True when the consumer is done, False to reconnect."""
        try:
            conn = await open_connection(self.config.amqp_url,
                                         connection_name(self.queue.service))
        except InfrastructureError as exc:
            log.warning("cannot connect to RabbitMQ; retrying", error=str(exc))
            return False
        try:
            session, publisher = await self._open_session(conn)
        except InfrastructureError as exc:
            log.warning("cannot start consuming; retrying", error=str(exc))
            self.publisher.detach_all()
            await conn.close()
            return False
        self.connections += 1
        began = time.monotonic()
        log.info("consuming", queue=self.queue.name, prefetch=self.config.window,
                 concurrency=self.processor.concurrency)
        try:
            ending = await self._wait_session_end(conn, session, publisher)
        finally:
            self._adopt(None)
        self.publisher.detach(publisher)
        if time.monotonic() - began > STABLE_SESSION_SECONDS:
            backoff.reset()
        if ending == "lost":
            await self._abandon(conn, session)
            return False
        await self._shut_down(conn, session, workers)
        return True

    async def _open_session(self, conn: AmqpConnection) -> tuple[ConsumeSession, Publisher]:
        publisher = await Publisher.open(conn)
        self.publisher.attach(publisher)  # before the first delivery can need it
        channel = await conn.channel()
        closed = channel_closed_future(channel)
        await rpc(lambda cb: channel.basic_qos(prefetch_count=self.config.window, callback=cb),
                  closed, "set the prefetch")
        session = ConsumeSession(channel, closed)
        channel.add_on_cancel_callback(lambda _frame: session.cancel_by_broker())

        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            self._receive(Delivery(session, method.delivery_tag, method.exchange,
                                   method.routing_key, method.redelivered, properties, body))

        # Adopted before consuming: deliveries may be handled before basic.consume-ok
        # has resumed this coroutine, and they belong to the consumer's session.
        self._adopt(session)
        try:
            await rpc(lambda cb: channel.basic_consume(self.queue.name, on_message,
                                                       callback=cb),
                      closed, f"consume queue {self.queue.name!r}")
        except BaseException:
            self._adopt(None)
            raise
        session.consumer_tag = channel.consumer_tags[0]
        return session, publisher

    async def _wait_session_end(self, conn: AmqpConnection, session: ConsumeSession,
                                publisher: Publisher) -> str:
        """``"stop"`` (asked or burst done) or ``"lost"`` (connection/channel/consumer gone)."""
        stop = asyncio.create_task(self._stop.wait())
        burst = asyncio.create_task(self._burst_done(session)) if self.config.burst_idle else None
        ends = {conn.closed, session.closed, publisher.closed, session.cancelled, stop}
        if burst is not None:
            ends.add(burst)
        done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        for task in (stop, burst):
            if task is not None and not task.done():
                task.cancel()
        if stop in done:
            return "stop"
        if burst is not None and burst in done and burst.exception() is None:
            return "stop"
        ended = next(iter(done))
        reason = ended.exception() or ended.result()
        log.warning("lost the RabbitMQ connection; will reconnect", reason=redact(str(reason)))
        return "lost"

    async def _abandon(self, conn: AmqpConnection, session: ConsumeSession) -> None:
        """After a loss: wait for deliveries in progress, then drop the session."""
        session.accepting = False
        await conn.close()
        if session.active:
            log.info("waiting for messages in progress before reconnecting",
                     in_progress=session.active)
            await self._wait_in_progress(session)
        self._drain_inbox()

    async def _wait_in_progress(self, session: ConsumeSession) -> None:
        """Until no delivery of ``session`` is in progress; once stopping, at most the timeout."""
        idle = asyncio.ensure_future(session.wait_idle())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({idle, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not idle.done():
                await asyncio.wait({idle}, timeout=self.config.shutdown_timeout)
        finally:
            idle.cancel()
            stop.cancel()

    async def _shut_down(self, conn: AmqpConnection, session: ConsumeSession,
                         workers: list[asyncio.Task[None]]) -> None:
        """Graceful stop: cancel, finish in-progress work within the timeout, close."""
        session.accepting = False
        with contextlib.suppress(InfrastructureError, TimeoutError):
            await asyncio.wait_for(
                rpc(lambda cb: session.channel.basic_cancel(session.consumer_tag, callback=cb),
                    session.closed, "cancel the subscription"), 5.0)
        try:
            await asyncio.wait_for(session.wait_idle(), self.config.shutdown_timeout)
        except TimeoutError:
            log.warning("shutdown timeout; leaving messages unacked for redelivery",
                        in_progress=session.active)
            for worker in workers:
                worker.cancel()
        session.flush()
        self._drain_inbox()
        if session.alive:
            session.channel.close()
            await asyncio.wait({session.closed}, timeout=5.0)
        await conn.close()

    async def _burst_done(self, session: ConsumeSession) -> None:
        """Return once the queue is drained and nothing arrived for ``burst_idle`` seconds."""
        idle = self.config.burst_idle or 0.0
        while True:
            try:
                await self._drained(session)
            except ConsumerStopped:
                return  # stopping anyway
            version = self._version
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed_since(version), idle)
                continue  # a delivery (or the session's end) came first: look again
            return

    # ------------------------------------------------------------------ drained

    async def _drained(self, session: ConsumeSession) -> None:
        """Return once ``session``'s queue is drained (see :meth:`join`).

        Raises :class:`InfrastructureError` when the session ends first,
        :class:`ConsumerStopped` when the consumer stops.
        """
        inbox, processor = self._inbox, self.processor
        while True:
            self._raise_if_stopped()
            if not session.alive or not session.accepting:
                raise InfrastructureError("the consume session ended")
            await inbox.emptied()
            await processor.settled()
            await session.flushed()
            if len(inbox) or processor.in_progress:
                continue  # a delivery arrived meanwhile
            version = self._version
            frame = await rpc(lambda cb: session.channel.queue_declare(
                self.queue.name, passive=True, callback=cb), session.closed, "check the queue")
            if self._version != version or len(inbox) or processor.in_progress:
                continue
            if frame.method.message_count == 0:
                return
            # Ready messages the broker has not sent yet (it had not read our acks when
            # it counted): they come, or the session ends.
            await self._changed_since(version)

    async def _live_session(self) -> ConsumeSession:
        """The current session once there is one taking deliveries; raises
        :class:`ConsumerStopped` when the consumer stops first."""
        while True:
            self._raise_if_stopped()
            session = self.session
            if session is not None and session.alive and session.accepting:
                return session
            await self._changed_since(self._version)

    def _raise_if_stopped(self) -> None:
        if self._stop.is_set() or self._ended:
            raise ConsumerStopped(f"the consumer of {self.queue.name!r} stopped before its "
                                  "queue was drained")

    def _adopt(self, session: ConsumeSession | None) -> None:
        self.session = session
        self._bump()

    def _bump(self) -> None:
        self._version += 1
        self._wake_watchers()

    def _wake_watchers(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    async def _changed_since(self, version: int) -> None:
        """Return once a delivery arrived, a session started or ended, or stop was asked,
        after ``version``."""
        if self._version != version:
            return
        watcher: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.append(watcher)
        await watcher

    def _receive(self, delivery: Delivery) -> None:
        """A delivery arrived: queue it for the workers (pika's consumer callback)."""
        delivery.session.received(delivery.tag)
        self._inbox.put(delivery)
        self._version += 1
        if self._watchers:
            self._wake_watchers()

    def _drain_inbox(self) -> None:
        """Forget deliveries nobody started: the broker redelivers them."""
        self._inbox.clear()

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    # ------------------------------------------------------------------ workers

    async def _work(self) -> None:
        inbox, processor = self._inbox, self.processor
        streak = 0
        while True:
            # A worker whose handlers do not suspend drains the inbox by itself (see
            # Inbox); every few messages it lets the rest of the loop run — the audit
            # writer's COPY, pika's reads — so that those are not held back.
            streak += 1
            if streak >= YIELD_EVERY:
                streak = 0
                await asyncio.sleep(0)
            delivery = await inbox.get()
            session = delivery.session
            if not session.accepting or not session.alive:
                continue  # left unacked: the broker redelivers it
            try:  # counts the delivery in progress until it is settled
                await processor.process(delivery)
            except Exception:
                log.exception("the consumer runtime failed on a message (a bug); requeueing it")
                delivery.nack(requeue=True)
