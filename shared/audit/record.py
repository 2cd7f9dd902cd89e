"""The audit row and the port that stores it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from shared.message_context import MessageContext

CATEGORY = "integration_framework"


class Outcome(StrEnum):
    """What happened to one message (or one record within a run)."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    RETRYING = "retrying"
    FAILED = "failed"
    DEAD = "dead"
    DISPATCHED = "dispatched"  # the dispatcher fanned an event out to push messages


OUTCOMES = tuple(o.value for o in Outcome)
#: Outcomes after which the message is gone from the queues for good.
FINAL_OUTCOMES = frozenset(
    {Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED, Outcome.UNCHANGED, Outcome.SKIPPED,
     Outcome.DEAD, Outcome.DISPATCHED}
)


@dataclasses.dataclass(slots=True)
class AuditRecord:
    """One ``audit_log`` row. Messages and details must already be redacted."""

    service: str
    outcome: Outcome
    org_id: str | None = None
    instance_id: str | None = None
    entity: str | None = None
    direction: str | None = None
    action: str | None = None
    record_id: str | None = None
    external_id: str | None = None
    attempt: int = 0
    http_status: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    duration_ms: float | None = None
    run_id: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    at: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))
    category: str = CATEGORY

    @classmethod
    def for_message(cls, service: str, outcome: Outcome, context: MessageContext,
                    duration_ms: float | None = None, **fields: Any) -> AuditRecord:
        """The row of one message: its context's columns, plus ``fields``.

        Built positionally, ``details`` and ``at`` given (every handled message has one:
        a keyword call of this 20-field dataclass costs a microsecond more, the default
        factories a little)."""
        c = context
        record = cls(service, outcome, c.org_id, c.instance_id, c.entity, c.direction,
                     c.action, c.record_id, c.external_id, c.attempt, None, None, None,
                     duration_ms, c.run_id, c.message_id, c.correlation_id, {},
                     datetime.now(UTC))
        for name, value in fields.items():
            setattr(record, name, value)
        return record


class AuditSink(Protocol):
    """Makes audit rows durable."""

    def submit(self, record: AuditRecord,
               done: Callable[[BaseException | None], None]) -> None:
        """Queue ``record``; call ``done(None)`` once it is committed, ``done(error)``
        when it could not be: an ``InfrastructureError`` (PostgreSQL failed: write it
        again later) or an ``AuditRowRefused`` (the row itself was refused: it never
        will be). Raises ``ValueError`` for an invalid record, ``InfrastructureError``
        when the sink is not running."""
        ...

    async def write(self, record: AuditRecord) -> None:
        """Return once ``record`` is committed. Raises ``InfrastructureError``,
        ``AuditRowRefused`` or ``ValueError`` as :meth:`submit` reports them."""
        ...

    async def settled_outcome(self, message_id: str, attempt: int) -> Outcome | None:
        """The outcome recorded for this message attempt, else a final outcome
        (``FINAL_OUTCOMES``) recorded at any attempt, else ``None``.

        A consumer asks it for a redelivered message or a retry copy: a row of its
        attempt means the earlier delivery's outcome was already durable; a final row
        of another attempt means the message is done and this is a stale copy (one the
        broker stored without confirming it, its original handled again meanwhile).
        Raises ``InfrastructureError``.
        """
        ...

    async def final_outcome(self, message_id: str) -> Outcome | None:
        """The final outcome (``FINAL_OUTCOMES``) of any attempt, or ``None``."""
        ...
