"""Dead letters as values: what one is about, which ones a filter picks, and the copies
that replace one when it is moved back or parked. Pure — no I/O — so unit tests pin it.

A dead letter is a message of ``pusher.dead`` or ``puller.dead``: the envelope the
consumer gave up on (its body, unchanged) and the failure headers of
:mod:`shared.messaging.settle`. One moved back to its work queue
(:func:`moved_copy`) is a **new message**: the same record, a fresh ladder
(``attempt`` 0), ``redeliveries`` raised, ``trigger`` ``redelivery`` (the daily
redelivery) or ``manual`` (``bss-sync dlq replay``), and an id of its own derived
from the dead letter's (:func:`redelivered_id`). The consumers settle a message by
its audit rows, and the dead letter's final row (``dead``) settles every later copy
of *its* id (docs/architecture.md §5 step 2); a copy under a new id is new work.
Derived, not random: a dead letter moved twice (the mover died between the copy's
confirm and the dead letter's ack) gives two copies with the same id, and the
consumer acks the second as a duplicate (``redeliveries`` > 0 makes it look the copy
up, as it does a retry copy). The chain stays readable: ``x-redelivered-from`` names
the dead letter, ``x-original-message-id`` the first id of the chain, and the
envelope keeps its ``correlation_id``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.errors import InvalidMessage
from shared.logging import redact, redact_value
from shared.message_context import MessageContext
from shared.messaging.envelope import MAX_REDELIVERIES, SyncMessage, decode_sync_message, encode
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.settle import (
    H_ATTEMPT,
    H_ATTEMPTS,
    H_BUSY_RETRIES,
    H_ERROR,
    H_ERROR_CLASS,
    H_FIRST_FAILED_AT,
    H_HTTP_STATUS,
)
from shared.messaging.topology import DEFAULT_EXCHANGE, PULLER, PUSHER, WorkQueue

#: The services whose dead letters can be moved back: their messages are sync
#: envelopes. The dispatcher's are BSS events, which carry no redelivery count.
DEAD_LETTER_SERVICES = (PUSHER, PULLER)
#: Namespace of :func:`redelivered_id` (a fixed, random UUID: never change it, or a copy
#: made before and one made after a change would not be recognised as the same).
REDELIVERY_NAMESPACE = uuid.UUID("5f0b8a5e-58b1-4b3a-9d55-0f0d2f8f4c21")
H_REDELIVERED_FROM = "x-redelivered-from"
H_ORIGINAL_MESSAGE_ID = "x-original-message-id"
H_PARKED_AT = "x-parked-at"
#: Failure headers of the last death, not carried to a copy moved back (the next
#: failure writes its own; ``x-first-failed-at`` is kept: it is the letter's age).
_DROPPED_ON_MOVE = (H_ATTEMPT, H_ATTEMPTS, H_BUSY_RETRIES, H_ERROR, H_ERROR_CLASS,
                    H_HTTP_STATUS)
_BROKER_HEADERS = ("x-death", "x-first-death", "x-last-death", "x-delivery-count")


def redelivered_id(dead_id: str, redeliveries: int) -> str:
    """The message id of the copy that takes a dead letter back for the
    ``redeliveries``-th time: the same for the same dead letter, always."""
    return str(uuid.uuid5(REDELIVERY_NAMESPACE, f"{dead_id}/{redeliveries}"))


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of a dead queue, as read (it may still be in the queue)."""

    service: str
    message_id: str | None
    correlation_id: str | None
    headers: Mapping[str, Any]
    body: bytes
    #: When the dead copy was published (its AMQP timestamp), if it says.
    dead_at: datetime | None
    #: The envelope, or ``None`` when the body is not one (``problem`` says why).
    envelope: SyncMessage | None
    problem: str | None = None

    @classmethod
    def read(cls, service: str, properties: Any, body: bytes) -> DeadLetter:
        """A dead letter from its AMQP ``properties`` and ``body`` (never raises)."""
        headers = dict(getattr(properties, "headers", None) or {})
        stamp = getattr(properties, "timestamp", None)
        dead_at = datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int) else None
        try:
            envelope, problem = decode_sync_message(body), None
        except InvalidMessage as exc:
            envelope, problem = None, exc.message
        return cls(service, getattr(properties, "message_id", None),
                   getattr(properties, "correlation_id", None), headers, body, dead_at,
                   envelope, problem)

    # ------------------------------------------------------------------ what it is about

    def _field(self, name: str, header: str) -> str | None:
        value = getattr(self.envelope, name, None) if self.envelope else None
        if value is None and self.headers.get(header) is not None:
            value = str(self.headers[header])
        return value

    @property
    def org_id(self) -> str | None:
        return self._field("org_id", "x-org-id")

    @property
    def instance_id(self) -> str | None:
        return self._field("instance_id", "x-instance-id")

    @property
    def entity(self) -> str | None:
        return self._field("entity", "x-entity")

    @property
    def record(self) -> str | None:
        """The BSS record id, else the third party's id (a pulled create)."""
        return self._field("record_id", "x-record-id") or self._field("external_id",
                                                                       "x-external-id")

    @property
    def error_class(self) -> str | None:
        value = self.headers.get(H_ERROR_CLASS)
        return None if value is None else str(value)

    @property
    def error(self) -> str:
        return redact(str(self.headers.get(H_ERROR) or self.problem or ""))

    @property
    def attempts(self) -> int | None:
        value = self.headers.get(H_ATTEMPTS)
        return value if isinstance(value, int) else None

    @property
    def redeliveries(self) -> int:
        return self.envelope.redeliveries if self.envelope else 0

    @property
    def first_failed_at(self) -> datetime | None:
        text = self.headers.get(H_FIRST_FAILED_AT)
        try:
            when = datetime.fromisoformat(str(text)) if text else None
        except ValueError:
            return None
        return when if when is None or when.tzinfo else when.replace(tzinfo=UTC)

    @property
    def when(self) -> datetime | None:
        """When it died (its dead copy's timestamp), else when it first failed."""
        return self.dead_at or self.first_failed_at

    def context(self) -> MessageContext:
        """For its audit rows: the envelope's context, else what the headers say."""
        if self.envelope is not None:
            return self.envelope.context()
        return MessageContext(self.message_id, self.org_id, self.instance_id, self.entity,
                              record_id=self._field("record_id", "x-record-id"),
                              external_id=self._field("external_id", "x-external-id"))

    def shown(self) -> dict[str, Any]:
        """Everything about it for a person (``dlq show``), credentials masked: headers and
        body redacted (registered secrets, URL passwords, values under sensitive keys)."""
        body = redact_value(self.envelope.to_dict()) if self.envelope else None
        return {
            "service": self.service, "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "when": self.when.isoformat() if self.when else None,
            "headers": redact_value({k: _plain(v) for k, v in self.headers.items()}),
            "body": body if body is not None else redact(self.body.decode("utf-8", "replace")),
            "problem": redact(self.problem) if self.problem else None,
        }


def _plain(value: Any) -> Any:
    """A header value as JSON can show it (AMQP tables may hold bytes and datetimes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters an operation takes; every field set must match. The empty
    filter matches every letter (``--all``)."""

    ids: frozenset[str] = frozenset()
    org_id: str | None = None
    instance_id: str | None = None
    entity: str | None = None
    error_class: str | None = None
    #: Died at or after this time.
    since: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.ids or self.org_id or self.instance_id or self.entity
                    or self.error_class or self.since)

    def matches(self, letter: DeadLetter) -> bool:
        if self.ids and letter.message_id not in self.ids:
            return False
        for wanted, actual in ((self.org_id, letter.org_id),
                               (self.instance_id, letter.instance_id),
                               (self.entity, letter.entity),
                               (self.error_class, letter.error_class)):
            if wanted is not None and wanted != actual:
                return False
        if self.since is not None:
            when = letter.when
            if when is None or when < self.since:
                return False
        return True

    def describe(self) -> str:
        """``org=acme entity=contact``, for prompts and audit rows."""
        parts = [f"id={','.join(sorted(self.ids))}"] if self.ids else []
        parts += [f"{name}={value}" for name, value in (
            ("org", self.org_id), ("instance", self.instance_id), ("entity", self.entity),
            ("error-class", self.error_class),
            ("since", self.since.isoformat() if self.since else None)) if value]
        return " ".join(parts) or "every dead letter"


def too_old(letter: DeadLetter, max_age: timedelta | None, now: datetime) -> bool:
    """Whether the daily redelivery parks ``letter`` instead of moving it back: it first
    failed more than ``max_age`` ago (``None``: never)."""
    if max_age is None:
        return False
    since = letter.first_failed_at or letter.dead_at
    return since is not None and now - since > max_age


def moved_copy(letter: DeadLetter, trigger: str) -> OutgoingMessage:
    """The message that takes ``letter`` back to its work queue (module docstring),
    through the default exchange. Raises ``ValueError`` for a letter without an
    envelope (``problem``), or with a redelivery count at its bound."""
    envelope = letter.envelope
    if envelope is None or letter.message_id is None:
        raise ValueError(f"not a sync message: {letter.problem or 'no message id'}")
    count = envelope.redeliveries + 1
    if count > MAX_REDELIVERIES:
        raise ValueError(f"redelivered {envelope.redeliveries} times already, the most an "
                         "envelope can say")
    new_id = redelivered_id(letter.message_id, count)
    body = encode(dataclasses.replace(envelope, id=new_id, attempt=0, redeliveries=count,
                                      trigger=trigger))
    headers = {k: v for k, v in letter.headers.items()
               if k not in _DROPPED_ON_MOVE and not k.startswith(_BROKER_HEADERS)}
    headers[H_REDELIVERED_FROM] = letter.message_id
    headers.setdefault(H_ORIGINAL_MESSAGE_ID, letter.message_id)
    return OutgoingMessage(DEFAULT_EXCHANGE, WorkQueue(letter.service).name, body, new_id,
                           headers, envelope.correlation_id or letter.correlation_id)


def parked_copy(letter: DeadLetter, now: datetime) -> OutgoingMessage:
    """The copy of ``letter`` kept in ``<service>.parked``: unchanged, plus when."""
    headers = {k: v for k, v in letter.headers.items() if not k.startswith(_BROKER_HEADERS)}
    headers[H_PARKED_AT] = now.isoformat()
    return OutgoingMessage(DEFAULT_EXCHANGE, WorkQueue(letter.service).parked_queue,
                           letter.body, letter.message_id, headers, letter.correlation_id)
