"""Who and what a message is about: one value, read once from the message.

A message's context — the organization, instance, entity, record (or external
id), attempt, run and correlation — is what every layer around the handler needs:
the log lines of the message (:func:`shared.logging.bind_message`), its audit row
(:meth:`shared.audit.record.AuditRecord.for_message`), the headers of its retry
and dead copies (:mod:`shared.messaging.settle`) and the runtime's de-duplication
key. A codec builds it once when it decodes a body
(:class:`shared.messaging.codec.InboundMessage`); everything else reads it from
there instead of copying the fields along.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(slots=True)
class MessageContext:
    """The identifying fields of one message (one delivery attempt of it).

    A value: treat it as immutable (not frozen, because a frozen dataclass costs
    microseconds per message to build, and one is built for every message).
    """

    message_id: str | None
    org_id: str | None = None
    instance_id: str | None = None
    entity: str | None = None
    direction: str | None = None
    action: str | None = None
    record_id: str | None = None
    external_id: str | None = None
    attempt: int = 0
    run_id: str | None = None
    correlation_id: str | None = None
    #: How many times the message was moved out of a dead queue (the envelope's
    #: ``redeliveries``), and what moved it last (its ``trigger``): a copy with
    #: redeliveries is looked up before it is handled, and its audit row says so.
    redeliveries: int = 0
    trigger: str | None = None

    @property
    def key(self) -> tuple[str, int] | None:
        """``(message id, attempt)``: what identifies a delivery attempt in the audit
        log (a redelivery with a row for its key is already settled); ``None`` for a
        message without an id. A copy moved out of a dead queue has an id of its own
        (:func:`shared.messaging.redelivery.redelivered_id`), so the dead original's
        final row does not settle it."""
        return (self.message_id, self.attempt) if self.message_id else None

    def log_fields(self) -> dict[str, Any]:
        """The fields bound to every log line written while the message is handled."""
        return {"message_id": self.message_id, "org_id": self.org_id,
                "instance_id": self.instance_id, "entity": self.entity,
                "record_id": self.record_id or self.external_id, "attempt": self.attempt}
