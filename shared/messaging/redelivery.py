"""Operations on dead queues: the daily redelivery, replay, purge, and reading them.

* :func:`redeliver` — every dead letter of ``pusher.dead`` and ``puller.dead`` back to
  its work queue (``trigger: redelivery``, ``redeliveries`` raised, a derived id:
  :mod:`shared.messaging.dead_letters`); with a maximum age, older ones to
  ``<service>.parked`` instead. For the dispatcher's schedule to call once a day
  (``30 22 * * *``, before the nightly run; not wired yet), and ``bss-sync dlq
  redeliver`` now. One at a time across replicas: it holds a PostgreSQL advisory
  lock, and a second caller is told another pass is running (:class:`RedeliveryBusy`).
* :func:`replay` — the letters a filter picks back to their work queue (``trigger:
  manual``); :func:`purge` — removes them; :func:`read_letters` — reads them and
  leaves every one.

**A pass** (:class:`DeadQueuePass`) consumes the dead queue with manual acks and no
prefetch limit, and takes at most the messages ready when it starts: a letter that
dies again during the pass (moved back, failed at once) waits for the next pass
instead of going round. For each letter taken, in this order:

1. publish what replaces it (the copy moved back, or the parked copy) and await the
   broker's confirm;
2. write its audit row (service ``dlq``; outcome ``retrying`` for a move — the record
   is being tried again — and ``dead`` for a letter parked or purged, with
   ``details.operation``) and await the commit;
3. ack the dead letter.

Nothing is lost if the process dies at any point: an unacked letter goes back to the
dead queue. Dying between 1 and 3 leaves the copy *and* the letter; the next pass
moves the letter again under the same derived id, and the consumer acks the second
copy as a duplicate (tested). Letters a pass does not take (a filter that does not
pick them, a body that is not an envelope) are held unacked until the pass ends and
then given back, in order; held, they are invisible to other readers, and a letter
another process holds is invisible to this one — so a replay or a purge running
beside another never loses the other's messages.

Thousands of copies are in flight at once (confirms tracked asynchronously, audit
rows group-committed, acks batched): ``bench/redelivery.py`` measures 10,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from shared.audit.record import AuditRecord, AuditSink, Outcome
from shared.errors import InfrastructureError
from shared.logging import redact
from shared.messaging.connection import (
    AmqpConnection,
    channel_closed_future,
    open_connection,
    rpc,
)
from shared.messaging.dead_letters import (
    DEAD_LETTER_SERVICES,
    DeadLetter,
    LetterFilter,
    moved_copy,
    parked_copy,
    too_old,
)
from shared.messaging.delivery import ConsumeSession, Delivery
from shared.messaging.publisher import OutgoingMessage, Publisher
from shared.messaging.tooling import QueueMissing
from shared.messaging.topology import WorkQueue
from shared.storage.db import Database
from shared.storage.locks import advisory_lock

log = structlog.get_logger("shared.messaging.redelivery")

#: The service column of the audit rows written by these operations.
AUDIT_SERVICE = "dlq"
REDELIVERY = "redelivery"
MANUAL = "manual"
#: Advisory-lock class of the daily redelivery (the others: migrate, partitions,
#: config_sync, discoveries).
REDELIVERY_LOCK_CLASS = 0x62737377
#: Copies published and not yet settled (confirmed, audited, acked) at most.
WINDOW = 2000
#: A pass that got nothing for this long asks the queue whether anything is left.
IDLE_CHECK = 0.5


class RedeliveryBusy(InfrastructureError):
    """Another process is running the daily redelivery right now."""


class Action(enum.Enum):
    """What a pass does with one letter."""

    KEEP = "kept"        # give it back at the end
    MOVE = "moved"       # a copy to its work queue, then ack
    PARK = "parked"      # a copy to <service>.parked, then ack
    DROP = "purged"      # ack (purge)


@dataclasses.dataclass(slots=True)
class PassReport:
    """What one pass over one dead queue did."""

    queue: str
    ready: int = 0
    taken: int = 0
    moved: int = 0
    parked: int = 0
    purged: int = 0
    kept: int = 0
    #: Letters whose copy or audit row failed: left in (or given back to) the dead queue.
    failed: int = 0
    #: Letters kept because their body is not an envelope (they cannot be moved back).
    not_envelopes: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    #: The letters read (``read_letters`` only).
    letters: list[DeadLetter] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        parts = [f"{self.queue}: {self.taken} of {self.ready} read"]
        for name in ("moved", "parked", "purged", "kept", "not_envelopes", "failed"):
            value = getattr(self, name)
            if value:
                parts.append(f"{value} {name.replace('_', ' ')}")
        return ", ".join(parts)


Chooser = Callable[[DeadLetter], Action]


class DeadQueuePass:
    """One pass over ``<service>.dead`` (module docstring): ``choose`` says what to do
    with each letter; moves carry ``trigger``; ``audit`` receives a row per letter
    moved, parked or purged (required unless the chooser only keeps)."""

    def __init__(self, connection: AmqpConnection, amqp_url: str, service: str,
                 choose: Chooser, *, trigger: str = MANUAL, audit: AuditSink | None = None,
                 limit: int | None = None, keep_letters: bool = False,
                 now: datetime | None = None, operation: str | None = None) -> None:
        self.connection = connection
        self.amqp_url = amqp_url
        self.queue = WorkQueue(service)
        self.choose = choose
        self.trigger = trigger
        self.audit = audit
        self.limit = limit
        self.keep_letters = keep_letters
        self.now = now or datetime.now(UTC)
        self.operation = operation
        self.report = PassReport(self.queue.dead_queue)
        self._pending = 0
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self) -> PassReport:
        """Take the letters, settle them, give back the rest. Raises
        :class:`QueueMissing` when the dead queue does not exist, else
        ``InfrastructureError`` (what was settled before stays settled)."""
        publisher = await Publisher.open(self.connection)
        channel = await self.connection.channel()
        closed = channel_closed_future(channel)
        try:
            ready = await self._ready(channel, closed)
            self.report.ready = ready
            wanted = ready if self.limit is None else min(ready, self.limit)
            if wanted:
                await self._consume(channel, closed, publisher, wanted)
        finally:
            if channel.is_open:
                channel.close()  # held letters go back to the queue, in order
                await asyncio.wait({closed}, timeout=10)
            await publisher.close()
        return self.report

    async def _ready(self, channel: Any, closed: asyncio.Future[BaseException]) -> int:
        name = self.queue.dead_queue
        try:
            frame = await rpc(lambda cb: channel.queue_declare(name, passive=True, callback=cb),
                              closed, f"look at queue {name!r}")
        except InfrastructureError as exc:
            if "NOT_FOUND" in str(exc) or "404" in str(exc):
                raise QueueMissing(name, self.amqp_url) from exc
            raise
        return int(frame.method.message_count)

    async def _consume(self, channel: Any, closed: asyncio.Future[BaseException],
                       publisher: Publisher, wanted: int) -> None:
        session = ConsumeSession(channel, closed)
        inbox: deque[Delivery] = deque()
        arrived = asyncio.Event()

        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            session.received(method.delivery_tag)
            inbox.append(Delivery(session, method.delivery_tag, method.exchange,
                                  method.routing_key, method.redelivered, properties, body))
            arrived.set()

        await rpc(lambda cb: channel.basic_qos(prefetch_count=0, callback=cb), closed,
                  "set the prefetch")
        await rpc(lambda cb: channel.basic_consume(self.queue.dead_queue, on_message,
                                                   callback=cb),
                  closed, f"consume queue {self.queue.dead_queue!r}")
        tag = channel.consumer_tags[0]
        report = self.report
        while report.taken < wanted:
            if not inbox:
                arrived.clear()
                waiter = asyncio.ensure_future(arrived.wait())
                done, _ = await asyncio.wait({waiter, closed}, timeout=IDLE_CHECK,
                                             return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if closed in done:
                    raise InfrastructureError(f"the channel reading {report.queue} closed: "
                                              f"{redact(str(closed.result()))}")
                if not done and not inbox and await self._ready(channel, closed) == 0:
                    break  # the rest is held by another reader
                continue
            if not self._room.is_set():
                await self._room.wait()
            report.taken += 1
            self._take(inbox.popleft(), publisher)
            if report.taken % 64 == 0:
                await asyncio.sleep(0)  # let pika send and read
        with contextlib.suppress(InfrastructureError, TimeoutError):
            await asyncio.wait_for(rpc(lambda cb: channel.basic_cancel(tag, callback=cb),
                                       closed, "cancel the subscription"), 5.0)
        await self._idle.wait()
        session.flush()
        await session.flushed()

    # ------------------------------------------------------------------ one letter

    def _take(self, delivery: Delivery, publisher: Publisher) -> None:
        letter = DeadLetter.read(self.queue.service, delivery.properties, delivery.body)
        action = self.choose(letter)
        if self.keep_letters:
            self.report.letters.append(letter)
        if action is Action.KEEP:
            self.report.kept += 1
            return
        copy: OutgoingMessage | None = None
        try:
            if action is Action.MOVE:
                copy = moved_copy(letter, self.trigger)
            elif action is Action.PARK:
                copy = parked_copy(letter, self.now)
        except ValueError as exc:  # not an envelope: it stays where it is
            self.report.not_envelopes += 1
            self._note(f"{letter.message_id}: {exc}")
            return
        self._begin()
        if copy is None:
            self._audit(delivery, letter, action, None)
            return
        try:
            confirmed = publisher.publish_nowait(copy)
        except InfrastructureError as exc:
            self._fail(letter, exc)
            return
        confirmed.add_done_callback(
            lambda f: self._confirmed(f, delivery, letter, action, copy))

    def _confirmed(self, future: asyncio.Future[None], delivery: Delivery, letter: DeadLetter,
                   action: Action, copy: OutgoingMessage) -> None:
        error = future.exception() if not future.cancelled() else InfrastructureError("cancelled")
        if error is not None:
            self._fail(letter, error)
            return
        self._audit(delivery, letter, action, copy)

    def _audit(self, delivery: Delivery, letter: DeadLetter, action: Action,
               copy: OutgoingMessage | None) -> None:
        if self.audit is None:
            self._settled(delivery, action, None, letter)
            return
        record = audit_row(letter, action, copy, self.operation)
        try:
            self.audit.submit(record, lambda error: self._settled(delivery, action, error,
                                                                   letter))
        except (InfrastructureError, ValueError, TypeError) as exc:
            self._fail(letter, exc)

    def _settled(self, delivery: Delivery, action: Action, error: BaseException | None,
                 letter: DeadLetter) -> None:
        if error is not None:
            self._fail(letter, error)
            return
        delivery.ack()
        if action is Action.MOVE:
            self.report.moved += 1
        elif action is Action.PARK:
            self.report.parked += 1
        else:
            self.report.purged += 1
        self._end()

    def _fail(self, letter: DeadLetter, error: BaseException) -> None:
        self.report.failed += 1
        self._note(f"{letter.message_id}: {redact(str(error)) or type(error).__name__}")
        self._end()

    def _note(self, text: str) -> None:
        if len(self.report.errors) < 20:
            self.report.errors.append(text)

    def _begin(self) -> None:
        self._pending += 1
        self._idle.clear()
        if self._pending >= WINDOW:
            self._room.clear()

    def _end(self) -> None:
        self._pending -= 1
        if self._pending < WINDOW:
            self._room.set()
        if self._pending == 0:
            self._idle.set()


def audit_row(letter: DeadLetter, action: Action, copy: OutgoingMessage | None,
              operation: str | None = None) -> AuditRecord:
    """The audit row of one letter moved, parked or purged (``service`` ``dlq``)."""
    outcome = Outcome.RETRYING if action is Action.MOVE else Outcome.DEAD
    details: dict[str, Any] = {"operation": operation or action.value,
                               "dead_queue": WorkQueue(letter.service).dead_queue}
    if copy is not None:
        details["queue"] = copy.routing_key
    if action is Action.MOVE and copy is not None:
        details["redelivered_as"] = copy.message_id
        details["redeliveries"] = letter.redeliveries + 1
    if letter.error_class:
        details["last_error_class"] = letter.error_class
    return AuditRecord.for_message(AUDIT_SERVICE, outcome, letter.context(),
                                   error_class=letter.error_class,
                                   error_message=letter.error or None, details=details)


# --------------------------------------------------------------------------- operations


@dataclasses.dataclass(frozen=True, slots=True)
class RedeliveryReport:
    """The daily redelivery's result: one pass per dead queue."""

    passes: tuple[PassReport, ...]

    @property
    def moved(self) -> int:
        return sum(p.moved for p in self.passes)

    @property
    def parked(self) -> int:
        return sum(p.parked for p in self.passes)

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.passes)


@contextlib.asynccontextmanager
async def redelivery_lock(db: Database) -> AsyncIterator[None]:
    """Hold the redelivery's advisory lock (``shared.storage.locks``) for the block;
    :class:`RedeliveryBusy` at once when another process holds it."""
    async with advisory_lock(db, REDELIVERY_LOCK_CLASS, "redelivery") as held:
        if not held:
            raise RedeliveryBusy("another process is redelivering the dead letters right now")
        yield


async def redeliver(amqp_url: str, db: Database, audit: AuditSink, *,
                    max_age: timedelta | None = None,
                    services: tuple[str, ...] = DEAD_LETTER_SERVICES,
                    now: datetime | None = None) -> RedeliveryReport:
    """The daily redelivery (module docstring): every letter of each service's dead queue
    back to its work queue, or parked when it first failed more than ``max_age`` ago.

    Raises :class:`RedeliveryBusy` when another process runs it,
    :class:`QueueMissing` (topology not declared) or ``InfrastructureError``.
    """
    now = now or datetime.now(UTC)

    def choose(letter: DeadLetter) -> Action:
        return Action.PARK if too_old(letter, max_age, now) else Action.MOVE

    async with redelivery_lock(db):
        connection = await open_connection(amqp_url, f"bss-sync dlq redeliver {os.getpid()}")
        try:
            passes = []
            for service in services:
                one = DeadQueuePass(connection, amqp_url, service, choose, trigger=REDELIVERY,
                                    audit=audit, now=now, operation=None)
                passes.append(await one.run())
                log.info("dead letters redelivered", summary=passes[-1].line())
        finally:
            await connection.close()
    return RedeliveryReport(tuple(passes))


async def replay(amqp_url: str, service: str, letters: LetterFilter, audit: AuditSink,
                 ) -> PassReport:
    """Move the letters ``letters`` picks back to their work queue (``trigger`` manual);
    the others stay. Raises :class:`QueueMissing` or ``InfrastructureError``."""
    def choose(letter: DeadLetter) -> Action:
        return Action.MOVE if letters.matches(letter) else Action.KEEP

    return await _one_pass(amqp_url, service, choose, audit=audit, trigger=MANUAL,
                           operation="replayed")


async def purge(amqp_url: str, service: str, letters: LetterFilter, audit: AuditSink,
                ) -> PassReport:
    """Remove the letters ``letters`` picks, each audited; the others stay. Raises
    :class:`QueueMissing` or ``InfrastructureError``."""
    def choose(letter: DeadLetter) -> Action:
        return Action.DROP if letters.matches(letter) else Action.KEEP

    return await _one_pass(amqp_url, service, choose, audit=audit, operation="purged")


async def read_letters(amqp_url: str, service: str, letters: LetterFilter | None = None,
                       ) -> list[DeadLetter]:
    """The letters of ``<service>.dead`` that ``letters`` picks (every one without), in
    queue order; every letter stays. Raises :class:`QueueMissing` or
    ``InfrastructureError``."""
    report = await _one_pass(amqp_url, service, lambda _letter: Action.KEEP,
                             keep_letters=True)
    wanted = letters or LetterFilter()
    return [letter for letter in report.letters if wanted.matches(letter)]


async def _one_pass(amqp_url: str, service: str, choose: Chooser, **kw: Any) -> PassReport:
    connection = await open_connection(amqp_url, f"bss-sync dlq {os.getpid()}")
    try:
        return await DeadQueuePass(connection, amqp_url, service, choose, **kw).run()
    finally:
        await connection.close()
