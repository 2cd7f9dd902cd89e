"""One delivery, start to finish: decode → de-duplicate → handle → decide → settle.

Settling is one step, in this order, so that an acked message always has a durable
outcome and an audit row never claims a copy the broker did not take:

1. publish the retry copy (attempt + 1, same message id) or the dead copy, and
   await the broker's confirm;
2. write the audit row and await its commit;
3. ack the original.

If step 1 fails the message is nacked back to its queue after a short delay (the
quorum queue's delivery limit dead-letters it if that keeps happening). If step 2
fails (PostgreSQL down) the message is held unacked and the row retried with
backoff: nothing is lost, nothing is republished, and the consumer slows down
instead of crash-looping. A process that dies meanwhile leaves the message
unacked, and the broker redelivers it.

A row refused for its *data* (:class:`~shared.errors.AuditRowRefused`, or a
``ValueError`` from the sink) would be refused again however often it is written,
so the message is never held for it: a message whose outcome was a success is
dead-lettered with that reason (its dead copy confirmed first), a minimal row —
message id, attempt, outcome, the reason — is written in place of the refused one
(one that is refused too is given up on), the message is acked, and a line is
logged at ``critical`` with ``alert=True``. A message whose retry or dead copy was
already confirmed keeps that copy as its fate: its minimal row says ``retrying`` or
``dead`` (docs/architecture.md §5).

A handled message stays *in progress* until its audit row has committed: the
success path hands the row to the audit sink with a callback that acks, and the
worker moves on to the next delivery instead of waiting (no coroutine sleeps per
message on the common path). The message's slot in the session (what a graceful
stop or a reconnection waits for) and its de-duplication key are released only
by that callback.

:meth:`MessageProcessor.settled` returns once no delivery is in progress — every one
taken has been acked after its outcome became durable, or nacked back, or abandoned
with its channel (dramatiq's ``join``, for tests and tools).

A redelivered message (or a retry copy, a copy moved out of a dead queue, or a
duplicate of a message in flight here) is first looked up in the audit log: a row
for its ``(message id, attempt)`` means an earlier delivery's outcome is already
durable, and a final row of any attempt means the message is done (a retry copy the
broker stored without confirming it, its original handled again meanwhile) — either
way it is acked and nothing else happens. A message published twice by its producer
(same id, attempt 0, not flagged redelivered) is only recognised with
``always_deduplicate``, which looks every delivery up — the dispatcher's setting,
since a BSS publishes at least once.
The audit sink serves concurrent look-ups with one query (docs/architecture.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pika
import structlog

from shared.audit.record import AuditRecord, AuditSink, Outcome
from shared.errors import AuditRowRefused, InfrastructureError, InvalidMessage
from shared.logging import bind_message, redact
from shared.message_context import MessageContext
from shared.messaging.codec import Codec, Handler, HandlerResult, InboundMessage, header_attempt
from shared.messaging.connection import Backoff
from shared.messaging.delivery import Delivery
from shared.messaging.publisher import CONTENT_TYPE, Publisher
from shared.messaging.settle import (
    HANDLER_OUTCOMES,
    Ack,
    Dead,
    Decision,
    ErrorInfo,
    MessageFacts,
    Retry,
    dead,
    decide,
    describe_error,
)
from shared.messaging.topology import WorkQueue

log = structlog.get_logger("shared.messaging")
T = TypeVar("T")
_bind = bind_message
DEFAULT_REQUEUE_DELAY = 1.0


class MessageProcessor:
    """Runs the pipeline of the module docstring for one service's deliveries."""

    def __init__(
        self,
        queue: WorkQueue,
        codec: Codec[Any],
        handler: Handler,
        audit: AuditSink,
        publisher: Callable[[], Publisher | None],
        *,
        concurrency: int,
        window: int,
        requeue_delay: float = DEFAULT_REQUEUE_DELAY,
        always_deduplicate: bool = False,
    ) -> None:
        self.queue = queue
        self.codec = codec
        self.handler = handler
        self.audit = audit
        self._publisher = publisher
        self.concurrency = concurrency
        # Without a limit below the prefetch window, every delivery may run its handler.
        self._slots = HandlerSlots(concurrency) if concurrency < window else None
        self.requeue_delay = requeue_delay
        #: Look every message up in the audit log, not only the suspicious ones.
        self.always_deduplicate = always_deduplicate
        self._in_flight: dict[tuple[str, int], list[asyncio.Future[None]]] = {}
        #: Rows the audit sink could not commit at the first try, being retried.
        self._held: set[asyncio.Future[None]] = set()
        #: Deliveries taken and not settled yet (see settled()).
        self.in_progress = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.counts: dict[str, int] = dict.fromkeys(("ack", "retry", "dead", "duplicate",
                                                     "requeued", "row_refused"), 0)

    async def process(self, delivery: Delivery) -> None:
        """Take ``delivery`` to a settled state (or leave it unacked for redelivery).

        The delivery counts as in progress in its session from now until it is
        settled, which may be after this returns (see the module docstring).
        """
        started = time.perf_counter()
        self._begin(delivery)
        try:
            message = self.codec.decode(delivery.body, delivery.properties)
        except Exception as exc:
            try:
                await self._reject_undecodable(delivery, exc, started)
            finally:
                self._end(delivery)
            return
        context = message.context
        _bind(context)
        key = context.key
        waited = False
        if key is not None:
            in_flight = self._in_flight
            try:
                waited = key in in_flight and await self._wait_for_twin(key)
            except BaseException:
                self._end(delivery)
                raise
            in_flight[key] = []  # claimed with no await since the twin left: one at a time
        handed_off = False
        try:
            suspicious = (waited or delivery.redelivered or context.attempt > 0
                          or context.redeliveries > 0 or self.always_deduplicate)
            if key is not None and suspicious and await self._already_settled(key):
                self.counts["duplicate"] += 1
                delivery.ack()
                return
            handed_off = await self._handle(delivery, message, key, started, copy=(
                delivery.redelivered or context.attempt > 0 or context.redeliveries > 0))
        finally:
            if not handed_off:
                self._release(delivery, key)

    def _release(self, delivery: Delivery, key: tuple[str, int] | None) -> None:
        """The delivery is settled (or abandoned): wake its twins, free its session slot."""
        if key is not None:
            for waiter in self._in_flight.pop(key, ()):
                if not waiter.done():
                    waiter.set_result(None)
        self._end(delivery)

    async def settled(self) -> None:
        """Return once no delivery is in progress (at once when none is): each one taken
        has been acked — after its audit row committed, and its retry or dead copy was
        confirmed — or nacked back to its queue, or abandoned with its channel.

        Acks are marked on the delivery's session, which sends them at the end of the
        loop's turn (:meth:`~shared.messaging.delivery.ConsumeSession.flushed`). Woken
        by the last delivery settling, not by polling; cancellable. Under a steady flow
        it may never return: ``Consumer.join`` says when a queue is drained.
        """
        while self.in_progress:
            await self._idle.wait()

    def _begin(self, delivery: Delivery) -> None:
        """``delivery`` is in progress, in its session and here, until :meth:`_end`."""
        delivery.session.started()
        self.in_progress += 1
        self._idle.clear()

    def _end(self, delivery: Delivery) -> None:
        delivery.session.finished()
        self.in_progress -= 1
        if not self.in_progress:
            self._idle.set()

    # ------------------------------------------------------------------ steps

    async def _handle(self, delivery: Delivery, message: InboundMessage[Any],
                      key: tuple[str, int] | None, started: float, *,
                      copy: bool = False) -> bool:
        """Run the handler and settle; True when the settling was handed to the audit
        sink (it releases the delivery when the row commits)."""
        result: HandlerResult | Outcome | Exception
        slots = self._slots
        if slots is not None and not slots.try_acquire():  # free: no coroutine made
            await slots.acquire()
        try:
            result = await self.handler(message)
        except Exception as exc:
            result = exc
        finally:
            if slots is not None:
                slots.release()
        outcome = result.outcome if type(result) is HandlerResult else result
        if (copy and key is not None and outcome in NO_CHANGE
                and await self._done_by_another_copy(key)):
            self.counts["duplicate"] += 1
            delivery.ack()
            return False
        if isinstance(outcome, str) and outcome in HANDLER_OUTCOMES:  # the hot path
            record = _audit_record(self.queue.service, message, outcome, result, started)
            try:
                self.audit.submit(record, lambda error: self._committed(
                    delivery, key, message, record, error))
            except (InfrastructureError, ValueError, TypeError):  # not running; a bad row
                if await self._write_audit(delivery, message, record, placed=False):
                    self.counts["ack"] += 1
                    delivery.ack()
                return False
            return True
        facts = MessageFacts(message.context, delivery.exchange, delivery.routing_key,
                             delivery.headers)
        decision = decide(outcome, facts, self.queue, datetime.now(UTC))
        _log_failure(decision, result)
        await self._settle(delivery, message, decision, result, started)
        return False

    def _committed(self, delivery: Delivery, key: tuple[str, int] | None,
                   message: InboundMessage[Any], record: AuditRecord,
                   error: BaseException | None) -> None:
        """The audit sink's verdict on a handed-off row: ack, hold and retry the row, or
        (a row refused for its data) settle the message without it."""
        if error is None:
            self.counts["ack"] += 1
            delivery.ack()
            self._release(delivery, key)
            return
        task = asyncio.ensure_future(self._settle_held(delivery, key, message, record, error))
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def _settle_held(self, delivery: Delivery, key: tuple[str, int] | None,
                           message: InboundMessage[Any], record: AuditRecord,
                           error: BaseException) -> None:
        """The row's commit failed: keep the message unacked and retry the row — or,
        when the row itself was refused, dead-letter the message."""
        try:
            if isinstance(error, AuditRowRefused):
                done = await self._row_refused(delivery, message, record, error, placed=False)
            else:
                done = await self._write_audit(delivery, message, record, placed=False)
            if done:
                self.counts["ack"] += 1
                delivery.ack()
        finally:
            self._release(delivery, key)

    async def _settle(self, delivery: Delivery, message: InboundMessage[Any],
                      decision: Decision, result: Any, started: float) -> None:
        if isinstance(decision, Retry):
            body = self.codec.retry_body(message, delivery.body, decision.attempt)
            if not await self._publish_copy(delivery, "", decision.queue.name, body,
                                            decision.headers, message.context.message_id):
                return
        elif isinstance(decision, Dead) and not await self._publish_copy(
                delivery, decision.exchange, decision.routing_key, delivery.body,
                decision.headers, message.context.message_id):
            return
        record = _audit_record(self.queue.service, message, decision, result, started)
        if await self._write_audit(delivery, message, record,
                                   placed=not isinstance(decision, Ack)):
            self.counts[_KIND[type(decision)]] += 1
            delivery.ack()

    async def _reject_undecodable(self, delivery: Delivery, exc: Exception,
                                  started: float) -> None:
        if not isinstance(exc, InvalidMessage):
            log.error("the decoder failed (a bug); dead-lettering the message", exc_info=exc)
            exc = InvalidMessage(f"undecodable ({type(exc).__name__}: {exc})")
        props = delivery.properties
        try:
            attempt = header_attempt(props)
        except InvalidMessage:  # the header may be why it is undecodable
            attempt = 0
        context = MessageContext(props.message_id, attempt=attempt)
        message: InboundMessage[None] = InboundMessage(None, context)
        _bind(context)
        facts = MessageFacts(context, delivery.exchange, delivery.routing_key, delivery.headers)
        decision = dead(describe_error(exc), facts, self.queue, datetime.now(UTC))
        log.warning("invalid message dead-lettered", reason=decision.error.message,
                    routing_key=delivery.routing_key)
        await self._settle(delivery, message, decision, exc, started)

    async def _wait_for_twin(self, key: tuple[str, int]) -> bool:
        """Wait while another delivery of the same message attempt is in flight here."""
        waited = False
        while key in self._in_flight:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._in_flight[key].append(waiter)
            await waiter
            waited = True
        return waited

    async def _done_by_another_copy(self, key: tuple[str, int]) -> bool:
        """Whether a copy of this message (another attempt) reached a final outcome while
        this one ran: a retry copy and its original both live after a connection lost
        between the copy's confirm and the original's ack, handled side by side — the
        one that did the work has its row, the other (``unchanged``, ``skipped``) found
        nothing to do because of it, and writes no second final row. A copy that was
        dead-lettered did no work: this one's row says the record is in sync."""
        final = await _until_durable(lambda: self.audit.final_outcome(key[0]),
                                     "look up the audit log")
        done = final is not None and final != Outcome.DEAD
        if done:
            log.info("another copy of this message settled it meanwhile; acking",
                     outcome=str(final))
        return done

    async def _already_settled(self, key: tuple[str, int]) -> bool:
        outcome = await _until_durable(lambda: self.audit.settled_outcome(*key),
                                       "look up the audit log")
        if outcome is not None:
            log.info("already settled by an earlier delivery; acking", outcome=str(outcome))
        return outcome is not None

    async def _publish_copy(self, delivery: Delivery, exchange: str, routing_key: str,
                            body: bytes, headers: dict[str, Any], message_id: str | None) -> bool:
        """Publish and confirm a retry/dead copy; False (message requeued or abandoned) if not."""
        if not delivery.session.alive:
            return False  # the connection is gone: the broker redelivers the message
        publisher = self._publisher()
        if publisher is None:
            log.warning("no publisher to send the retry/dead copy; the message goes back")
            await self._requeue_later(delivery)
            return False
        props = delivery.properties
        copy = pika.BasicProperties(
            content_type=props.content_type or CONTENT_TYPE, message_id=message_id,
            correlation_id=props.correlation_id, headers=headers, timestamp=int(time.time()),
        )
        try:
            await publisher.republish_nowait(exchange, routing_key, body, copy)
        except InfrastructureError as exc:
            log.warning("retry/dead copy not confirmed; the message goes back to its queue",
                        error=str(exc))
            await self._requeue_later(delivery)
            return False
        return True

    async def _write_audit(self, delivery: Delivery, message: InboundMessage[Any],
                           record: AuditRecord, *, placed: bool) -> bool:
        """Write ``record``, retrying while PostgreSQL is down; True when the message may
        be acked. ``placed``: its retry or dead copy is confirmed already. A row that
        can never be written is handed to :meth:`_row_refused`."""
        try:
            await _until_durable(lambda: self.audit.write(record), "write the audit row")
        except (AuditRowRefused, ValueError, TypeError) as exc:
            return await self._row_refused(delivery, message, record, exc, placed=placed)
        return True

    async def _row_refused(self, delivery: Delivery, message: InboundMessage[Any],
                           record: AuditRecord, exc: Exception, *, placed: bool) -> bool:
        """Settle a message whose audit row is refused for its data (module docstring):
        dead-letter it unless a copy already holds its fate, write a minimal row, and
        say True (ack it) — False when the dead copy was not confirmed (requeued)."""
        refused = exc if isinstance(exc, AuditRowRefused) else AuditRowRefused(
            f"the audit row was refused ({type(exc).__name__}: {redact(str(exc))})")
        outcome = record.outcome if placed else Outcome.DEAD
        log.critical("audit row refused for its data; the message is settled without it",
                     alert=True, outcome=str(record.outcome), settled_as=str(outcome),
                     error=describe_error(refused).message)
        if not placed:
            facts = MessageFacts(message.context, delivery.exchange, delivery.routing_key,
                                 delivery.headers)
            decision = dead(describe_error(refused), facts, self.queue, datetime.now(UTC))
            if not await self._publish_copy(delivery, decision.exchange, decision.routing_key,
                                            delivery.body, decision.headers,
                                            message.context.message_id):
                return False
        minimal = _minimal_record(record, outcome, refused)
        try:
            await _until_durable(lambda: self.audit.write(minimal), "write the minimal audit row")
        except (AuditRowRefused, ValueError, TypeError) as again:
            log.critical("the minimal audit row was refused too; acking the message without a "
                         "row", alert=True, error=redact(str(again)))
        self.counts["row_refused"] += 1
        return True

    async def _requeue_later(self, delivery: Delivery) -> None:
        await asyncio.sleep(self.requeue_delay)
        self.counts["requeued"] += 1
        delivery.nack(requeue=True)


_KIND = {Ack: "ack", Retry: "retry", Dead: "dead"}
#: Outcomes of a delivery that changed nothing (see ``_done_by_another_copy``).
NO_CHANGE = frozenset({Outcome.UNCHANGED, Outcome.SKIPPED})


class HandlerSlots:
    """A semaphore for the handler step, cheaper than ``asyncio.Semaphore`` when free."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a free slot now, if there is one and nobody waits for it."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() handed its slot to us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was ours already: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


async def _until_durable(call: Callable[[], Awaitable[T]], doing: str) -> T:
    """``await call()``, retried with backoff while it raises ``InfrastructureError``."""
    backoff = Backoff(base=0.2, cap=10.0)
    while True:
        try:
            return await call()
        except InfrastructureError as exc:
            delay = backoff.next_delay()
            if backoff.failures == 1 or backoff.failures % 10 == 0:
                log.warning(f"cannot {doing}; holding the message and retrying",
                            error=str(exc), retry_in=round(delay, 2), tries=backoff.failures)
            await asyncio.sleep(delay)


def _audit_record(service: str, message: InboundMessage[Any], decision: Decision | str,
                  result: Any, started: float) -> AuditRecord:
    """The audit row of a settled message; ``decision`` may be the success outcome."""
    c = message.context
    duration = (time.perf_counter() - started) * 1000.0
    if type(decision) is Outcome or isinstance(decision, (Ack, str)):  # every handled message
        outcome = decision.outcome if isinstance(decision, Ack) else decision
        record = AuditRecord.for_message(
            service, outcome if type(outcome) is Outcome else Outcome(outcome), c, duration)
        if type(result) is HandlerResult:
            record.action = result.action or record.action
            record.external_id = result.external_id or record.external_id
            record.record_id = result.record_id or record.record_id
            record.http_status = result.http_status
            record.details = result.details
        if message.context.redeliveries:
            _with_trigger(record, message.context)
        return record
    record = AuditRecord.for_message(service, Outcome.DEAD, c, duration)
    _with_error(record, decision.error)
    record.details = dict(decision.error.details)  # e.g. the request, the failed step
    if isinstance(decision, Retry):
        record.outcome = Outcome.RETRYING
        record.details.update(retry_queue=decision.queue.name, retry_in_s=decision.delay)
    if message.context.redeliveries:
        _with_trigger(record, message.context)
    return record


def _with_trigger(record: AuditRecord, context: MessageContext) -> None:
    """A copy moved out of a dead queue says so in its row: ``trigger`` (``redelivery``,
    or ``manual`` for ``bss-sync dlq replay``) and ``redeliveries``."""
    record.details = {**record.details, "trigger": context.trigger,
                      "redeliveries": context.redeliveries}


def _minimal_record(record: AuditRecord, outcome: Outcome,
                    refused: AuditRowRefused) -> AuditRecord:
    """The row written in place of a refused one: what de-duplication needs (message id,
    attempt), the outcome, and why the full row is missing."""
    return AuditRecord(
        record.service, outcome, attempt=record.attempt, message_id=record.message_id,
        error_class=refused.error_class, error_message=refused.message,
        details={"refused_outcome": str(record.outcome),
                 "refused_error_class": record.error_class})


def _with_error(record: AuditRecord, error: ErrorInfo) -> None:
    record.error_class = error.error_class
    record.error_message = error.message
    record.http_status = error.http_status


def _log_failure(decision: Retry | Dead, result: Any) -> None:
    error = decision.error
    fields = {"error_class": error.error_class, "error": error.message,
              "http_status": error.http_status}
    if error.bug:
        log.error("handler failed unexpectedly (a bug)",
                  exc_info=result if isinstance(result, Exception) else None, **fields)
    if isinstance(decision, Retry):
        log.warning("retrying later", retry_queue=decision.queue.name, **fields)
    else:
        log.error("dead-lettered", **fields)
