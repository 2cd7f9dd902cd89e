"""What a consumer receives and returns: decoders per kind of message, handler results.

The runtime is the same for every service; only decoding differs. The pusher and
the puller consume the sync envelope (:data:`SYNC_CODEC`); the dispatcher consumes
BSS events with a codec of its own. A codec turns a body into an
:class:`InboundMessage` — the payload plus what the runtime needs for logs, audit
rows and dead-letter headers — or raises ``InvalidMessage``; it also writes the
body of a retry copy (the envelope carries its attempt number).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from shared.audit.record import Outcome
from shared.errors import InvalidMessage
from shared.message_context import MessageContext
from shared.messaging.envelope import MAX_ATTEMPT, SyncMessage, decode_sync_message, encode
from shared.messaging.settle import H_ATTEMPT

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclasses.dataclass(slots=True)
class InboundMessage(Generic[T]):
    """A decoded message: ``payload`` for the handler, ``context`` for the logs, the
    audit row and the headers of its retry or dead copy."""

    payload: T
    context: MessageContext


@dataclasses.dataclass(slots=True)
class HandlerResult:
    """A handler's success: the outcome plus fields for the audit row.

    A handler may also return a bare :class:`Outcome`. Failures are raised as
    :class:`~shared.errors.SyncError` subclasses, never returned.
    """

    outcome: Outcome
    action: str | None = None
    external_id: str | None = None
    http_status: int | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The BSS id the outcome concerns when the message had none (a pulled create).
    record_id: str | None = None


Handler = Callable[[InboundMessage[Any]], Awaitable[HandlerResult | Outcome]]


class Codec(Protocol[T]):
    """Decodes one kind of message body."""

    def decode(self, body: bytes, properties: Any) -> InboundMessage[T]:
        """The message, or ``InvalidMessage`` with the reason."""
        ...

    def retry_body(self, message: InboundMessage[T], body: bytes, attempt: int) -> bytes:
        """The body of the copy sent to a retry queue for ``attempt``."""
        ...


def header_attempt(properties: Any) -> int:
    """The ``x-attempt`` header of a message: 0 when absent.

    Codecs whose bodies do not carry the attempt (BSS events) read it here; the
    runtime sets it on every retry copy. It has the envelope's bound on ``attempt``
    (``MAX_ATTEMPT``): raises :class:`InvalidMessage` for a value that is not an
    integer from 0 to that, which is dead-lettered at decode instead of reaching the
    audit row.
    """
    headers = getattr(properties, "headers", None) or {}
    value = headers.get(H_ATTEMPT)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):  # pika's long is an int
        if 0 <= value <= MAX_ATTEMPT:
            return int(value)
        value = int(value)
    if type(value) is bytes:
        value = value.decode("ascii", "replace")
    if (type(value) is str and value.isascii() and value.isdigit() and len(value) <= 4
            and int(value) <= MAX_ATTEMPT):
        return int(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
    raise InvalidMessage(f"the {H_ATTEMPT} header is {shown}: an attempt is an integer from 0 "
                         f"to {MAX_ATTEMPT}")


class SyncCodec:
    """The sync envelope of ``sync.push`` / ``sync.pull`` messages."""

    def decode(self, body: bytes, properties: Any) -> InboundMessage[SyncMessage]:
        """Raises ``InvalidMessage`` when ``body`` is not a valid envelope."""
        m = decode_sync_message(body, properties)
        return InboundMessage(m, m.context())

    def retry_body(self, message: InboundMessage[SyncMessage], body: bytes,
                   attempt: int) -> bytes:
        return encode(message.payload.with_attempt(attempt))


SYNC_CODEC = SyncCodec()
