"""The outbox relay: publishes committed events to ``bss.events``, in order, at least once.

    outbox (PostgreSQL) ──SELECT pending, ORDER BY id──▶ Publisher (confirms, mandatory)
        ▲   NOTIFY on insert wakes the relay; it also polls every ``poll_interval``
        └── UPDATE published_at, only for rows RabbitMQ confirmed

One round takes up to ``relay_batch`` pending rows, publishes them all on one
confirm-mode channel (confirms tracked asynchronously, no round trip per
message), then marks the confirmed *prefix* published. A row after a failed one
is published again in the next round, so the last event a consumer sees for a
record is always its latest change (two writes to one record are serialized by
the record's row lock, so their outbox ids follow the commit order).

When RabbitMQ is unreachable or refuses a message, the relay closes the
connection, waits with capped exponential backoff and starts over; when nothing
is bound to ``bss.events`` yet (mandatory routing returns the message), it keeps
the connection and retries with the same backoff. Meanwhile the app keeps taking
writes, whose events wait in the outbox. One relay per schema runs at a time (a
session advisory lock), so several app processes never publish twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg
import structlog
from psycopg.rows import tuple_row

from sandbox.migration import lock_key, notify_channel
from sandbox.settings import SandboxSettings
from shared.errors import InfrastructureError
from shared.logging import redact
from shared.messaging.connection import (
    AmqpConnection,
    Backoff,
    channel_closed_future,
    connection_name,
    open_connection,
    rpc,
)
from shared.messaging.publisher import OutgoingMessage, Publisher, Unroutable
from shared.messaging.topology import EVENTS_EXCHANGE, TopologyConflict, declare_topology
from shared.settings import get_settings
from shared.storage.db import Database, quote_ident

log = structlog.get_logger("sandbox.relay")

_PENDING = ("SELECT id, routing_key, body::text, body->>'id' FROM outbox"
            " WHERE published_at IS NULL ORDER BY id LIMIT %s")
_MARK = "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY(%s)"
_PRUNE = "DELETE FROM outbox WHERE published_at < clock_timestamp() - make_interval(secs => %s)"
PRUNE_EVERY = 60.0
STOP_GRACE = 10.0


class OutboxRelay:
    """Publishes the outbox of ``settings.schema``; ``start`` / ``stop`` in the app's lifespan."""

    def __init__(self, db: Database, settings: SandboxSettings) -> None:
        self.db = db
        self.settings = settings
        self.published = 0
        self.last_error: str | None = None
        self.connected = False
        self.standby = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(base=0.2, cap=settings.backoff_cap)
        self._topology_declared = not settings.declare_topology
        self._last_prune = 0.0

    @property
    def state(self) -> str:
        """``connected``, ``standby`` (another process relays this schema) or ``retrying``."""
        if self.connected:
            return "connected"
        return "standby" if self.standby else "retrying"

    def start(self) -> None:
        """Run in the background of the current event loop."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the round in progress (at most ``STOP_GRACE`` seconds), then stop."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        """Relay until :meth:`stop`, reconnecting with backoff after any failure."""
        while not self._stopping.is_set():
            try:
                await self._session()
            except (InfrastructureError, psycopg.Error, OSError) as exc:
                self._note_failure(exc, "outbox relay interrupted; reconnecting")
            except Exception:  # never let the relay die with the app still serving
                log.exception("outbox relay failed; retrying")
            self.connected = False
            await self._pause(self._backoff.next_delay())

    # ------------------------------------------------------------------ one session

    async def _session(self) -> None:
        """One LISTEN connection + one AMQP connection, draining until something fails."""
        async with await psycopg.AsyncConnection.connect(
                self.db.url, autocommit=True, options=f"-c search_path={self.settings.schema}",
                application_name="bss-sync sandbox relay") as listener:
            await listener.execute(f"LISTEN {quote_ident(notify_channel(self.settings.schema))}")
            if not await self._acquire_lock(listener):
                return
            await self._declare_topology()
            amqp = await open_connection(self.settings.amqp_url, connection_name("sandbox"))
            try:
                publisher = await self._open_publisher(amqp)
                self.connected = True
                log.info("outbox relay connected")
                while not self._stopping.is_set():
                    try:
                        await self._drain(publisher)
                    except Unroutable as exc:  # nothing bound yet: keep the connection, wait
                        self._note_failure(exc, "no queue is bound to bss.events; waiting")
                        await self._pause(self._backoff.next_delay())
                        continue
                    self._backoff.reset()
                    self.last_error = None
                    await self._prune()
                    await self._wait(listener)
            finally:
                self.connected = False
                await amqp.close()

    def _note_failure(self, exc: BaseException, what: str) -> None:
        """Log a failure once per streak of the same error (the backoff retries quietly)."""
        error = redact(str(exc)) or type(exc).__name__
        if error != self.last_error:
            log.warning(what, error=error)
        self.last_error = error

    async def _acquire_lock(self, listener: psycopg.AsyncConnection[Any]) -> bool:
        """Become the schema's only relay; ``False`` when stopping first."""
        key = lock_key(self.settings.schema, "relay")
        while not self._stopping.is_set():
            cur = await listener.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
            row = await cur.fetchone()
            self.standby = not (row and row[0])
            if not self.standby:
                return True
            await self._pause(self.settings.poll_interval)
        return False

    async def _declare_topology(self) -> None:
        if self._topology_declared:
            return
        retry = get_settings()
        try:
            await asyncio.to_thread(declare_topology, self.settings.amqp_url,
                                    retry.retry_delays, retry.delivery_limit)
        except TopologyConflict as exc:
            log.warning("topology already declared with other arguments", error=str(exc))
        self._topology_declared = True

    async def _open_publisher(self, amqp: AmqpConnection) -> Publisher:
        """A confirm-mode publisher, after making sure ``bss.events`` exists."""
        channel = await amqp.channel()
        closed = channel_closed_future(channel)
        await rpc(lambda cb: channel.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True,
                                                      callback=cb),
                  closed, f"declare the {EVENTS_EXCHANGE} exchange")
        channel.close()
        return await Publisher.open(amqp)

    # ------------------------------------------------------------------ rounds

    async def _drain(self, publisher: Publisher) -> None:
        """Publish every pending row, batch after batch. Raises on the first failure."""
        if not publisher.is_open:
            raise InfrastructureError("the publishing channel is closed")
        while not self._stopping.is_set():
            rows = await self._pending()
            if not rows:
                return
            await self._publish_batch(publisher, rows)
            if len(rows) < self.settings.relay_batch:
                return

    async def _pending(self) -> list[tuple[int, str, str, str]]:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_PENDING, (self.settings.relay_batch,))
            return await cur.fetchall()

    async def _publish_batch(self, publisher: Publisher,
                             rows: list[tuple[int, str, str, str]]) -> None:
        futures: list[asyncio.Future[None]] = []
        failure: BaseException | None = None
        for _id, key, body, event_id in rows:
            try:
                futures.append(publisher.publish_nowait(OutgoingMessage(
                    EVENTS_EXCHANGE, key, body.encode(), message_id=event_id)))
            except InfrastructureError as exc:
                failure = exc
                break
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        confirmed = 0
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                break
            confirmed += 1
        if confirmed:
            await self.db.execute(_MARK, ([row[0] for row in rows[:confirmed]],))
            self.published += confirmed
        if failure is not None:
            if isinstance(failure, InfrastructureError):
                raise failure
            raise InfrastructureError(f"publishing failed: {failure}") from failure

    async def _prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        await self.db.execute(_PRUNE, (self.settings.outbox_retention,))

    # ------------------------------------------------------------------ waiting

    async def _wait(self, listener: psycopg.AsyncConnection[Any]) -> None:
        """Until a NOTIFY, ``poll_interval`` seconds, or :meth:`stop`."""
        notified = asyncio.ensure_future(
            _first_notify(listener, self.settings.poll_interval))
        stopping = asyncio.ensure_future(self._stopping.wait())
        done, pending = await asyncio.wait({notified, stopping},
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await task
        if notified in done:
            notified.result()  # a dead LISTEN connection raises here

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def _first_notify(listener: psycopg.AsyncConnection[Any], timeout: float) -> None:
    """Return after one notification or ``timeout`` seconds.

    The generator runs to its end (it holds the connection's lock while suspended).
    """
    async with contextlib.aclosing(listener.notifies(timeout=timeout, stop_after=1)) as notes:
        async for _ in notes:
            pass
