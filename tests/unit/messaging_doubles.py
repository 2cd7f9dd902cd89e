"""In-memory stand-ins for what the consumer runtime talks to: pika's consume channel,
the audit sink, the retry/dead publisher — each recording what it was asked, in order.

Shared by the unit tests of the processor (tests/unit/test_processing.py) and of the
consumer's ``join`` (tests/unit/test_consumer_join.py). No I/O: commits and confirms
complete on later turns of the event loop, as the real ones do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pika

from shared.audit.record import AuditRecord, Outcome
from shared.errors import AuditRowRefused, InfrastructureError
from shared.messaging.codec import SYNC_CODEC
from shared.messaging.delivery import ConsumeSession, Delivery
from shared.messaging.processing import MessageProcessor
from shared.messaging.topology import PUSH_EXCHANGE, PUSHER, WorkQueue

QUEUE = WorkQueue(PUSHER, (0.01, 0.02))
RETRY = f"confirmed {QUEUE.retry_queue(0).name}"  # the copy to the first rung, confirmed


class Recorder:
    """Everything observable, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []


class Channel:
    """The consume channel: acks, nacks, and passive queue declarations answered by the
    test (:meth:`answer`)."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.is_open = True
        self.declares: list[Any] = []  # callbacks waiting for their answer

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.rec.events.append(f"ack {tag}" + (" and before" if multiple else ""))

    def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.rec.events.append(f"nack {tag}")

    def queue_declare(self, queue: str, passive: bool = False, callback: Any = None) -> None:
        assert passive, "the runtime only ever checks a queue"
        self.rec.events.append(f"check {queue}")
        self.declares.append(callback)

    def answer(self, ready: int) -> None:
        """The broker's reply to the oldest queue check: ``ready`` messages."""
        callback = self.declares.pop(0)
        callback(SimpleNamespace(method=SimpleNamespace(message_count=ready)))


class Sink:
    """The audit sink: rows commit on a later turn; the first ``fail`` writes fail
    (PostgreSQL down); rows ``refuse`` says True of are refused for their data."""

    def __init__(self, rec: Recorder, fail: int = 0,
                 refuse: Callable[[AuditRecord], bool] | None = None) -> None:
        self.rec, self.fail, self.refuse = rec, fail, refuse
        self.rows: list[AuditRecord] = []
        self.tasks: set[asyncio.Future[None]] = set()

    async def write(self, record: AuditRecord) -> None:
        await asyncio.sleep(0)  # not a wait: a commit suspends its caller, as a real one does
        if self.fail:
            self.fail -= 1
            self.rec.events.append("audit refused")
            raise InfrastructureError("db down")
        if self.refuse is not None and self.refuse(record):
            self.rec.events.append(f"audit row refused {record.outcome.value}")
            raise AuditRowRefused("PostgreSQL refused the audit row: value out of range")
        self.rows.append(record)
        self.rec.events.append(f"audit {record.outcome.value} {record.attempt}")

    def submit(self, record: AuditRecord, done: Any) -> None:
        async def commit() -> None:
            try:
                await self.write(record)
            except (InfrastructureError, AuditRowRefused) as exc:
                done(exc)
            else:
                done(None)

        task = asyncio.ensure_future(commit())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def settled_outcome(self, message_id: str, attempt: int) -> Outcome | None:
        for row in self.rows:
            if row.message_id == message_id and row.attempt == attempt:
                return row.outcome
        return None

    async def final_outcome(self, message_id: str) -> Outcome | None:
        return None


class GatedSink(Sink):
    """Commits only when the test opens the gate (a slow PostgreSQL); ``parked`` counts
    the writes waiting at the gate."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__(rec)
        self.gate = asyncio.Event()
        self.parked = 0

    async def write(self, record: AuditRecord) -> None:
        self.parked += 1
        await self.gate.wait()
        self.parked -= 1
        await super().write(record)


class FakePublisher:
    """Retry and dead copies, confirmed (or refused) a millisecond later."""

    def __init__(self, rec: Recorder, refuse: bool = False) -> None:
        self.rec, self.refuse = rec, refuse
        self.copies: list[tuple[str, str, dict]] = []

    def republish_nowait(self, exchange: str, routing_key: str, body: bytes,
                         properties: Any) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()

        def confirm() -> None:
            attempt = json.loads(body).get("attempt") if body.startswith(b'{"') else None
            self.copies.append((routing_key, attempt, properties.headers))
            self.rec.events.append(f"confirmed {routing_key}")
            if self.refuse:
                future.set_exception(InfrastructureError("nacked"))
            else:
                future.set_result(None)

        # Not a wait: the broker's confirm arrives on a later turn, as a real one does.
        asyncio.get_running_loop().call_later(0.001, confirm)
        return future


def body(message_id: str, attempt: int = 0) -> bytes:
    return json.dumps({
        "id": message_id, "direction": "push", "org_id": "o", "instance_id": "i",
        "entity": "account", "action": "update", "record_id": "r", "trigger": "event",
        "attempt": attempt, "created_at": "2026-01-01T00:00:00Z"}).encode()


def new_session(rec: Recorder) -> tuple[ConsumeSession, Channel]:
    channel = Channel(rec)
    closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return ConsumeSession(channel, closed), channel  # type: ignore[arg-type]


def processor_for(handler: Any, sink: Any, publisher: FakePublisher, *,
                  always_deduplicate: bool = False) -> MessageProcessor:
    return MessageProcessor(QUEUE, SYNC_CODEC, handler, sink, lambda: publisher,
                            concurrency=4, window=8, requeue_delay=0.01,
                            always_deduplicate=always_deduplicate)


def delivery(session: ConsumeSession, tag: int, data: bytes,
             redelivered: bool = False) -> Delivery:
    """A delivery of ``data`` on ``session``, already counted as received."""
    session.received(tag)
    return unreceived(session, tag, data, redelivered)


def unreceived(session: ConsumeSession, tag: int, data: bytes,
               redelivered: bool = False) -> Delivery:
    """A delivery of ``data`` on ``session`` that the consumer has yet to receive."""
    props = pika.BasicProperties(message_id=json.loads(data)["id"], headers={})
    return Delivery(session, tag, PUSH_EXCHANGE, "account.update.o.i", redelivered, props, data)
