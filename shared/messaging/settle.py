"""What happens to a message after its handler ran: ack, retry later, or dead-letter.

Pure decision logic — no I/O — so the policy is pinned by unit tests:

* the handler returned an outcome → :class:`Ack`;
* it raised a :class:`~shared.errors.TransientError` → :class:`Retry` on the next
  rung of the ladder (``RateLimited.retry_after`` picks the first rung at least
  that long), or :class:`Dead` once the ladder is exhausted;
* it raised :class:`~shared.errors.RecordBusy` (another delivery holds the record's
  claim) → :class:`Retry` on the first rung, not counted against the ladder
  (``x-busy-retries``): waiting for another delivery is not a failure of this one, and
  a claim whose holder died is taken over once stale, so the wait ends;
* it raised a :class:`~shared.errors.PermanentError` → :class:`Dead` at once;
* anything else is a bug in bss-sync: treated as transient (a fix and a retry may
  save the record) and flagged ``bug`` so the consumer logs its traceback.

Attempts count deliveries: ``attempt`` 0 is the first, a ladder of N delays allows
N + 1 attempts. The headers of retry and dead copies are the ones an operator reads
in the management UI (docs/architecture.md §4), plus what the daily redelivery needs to route the
message back (``x-original-exchange``, ``x-original-routing-key``, ``x-service``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.audit.record import FINAL_OUTCOMES, Outcome
from shared.errors import RateLimited, RecordBusy, SyncError, TransientError
from shared.logging import redact
from shared.message_context import MessageContext
from shared.messaging.envelope import MAX_ATTEMPT
from shared.messaging.topology import RetryQueue, WorkQueue

MAX_ERROR_CHARS = 1000

H_ATTEMPT = "x-attempt"
H_ATTEMPTS = "x-attempts"
H_ERROR_CLASS = "x-error-class"
H_ERROR = "x-error"
H_HTTP_STATUS = "x-http-status"
H_FIRST_FAILED_AT = "x-first-failed-at"
H_ORIGINAL_EXCHANGE = "x-original-exchange"
H_ORIGINAL_ROUTING_KEY = "x-original-routing-key"
H_SERVICE = "x-service"
H_BUSY_RETRIES = "x-busy-retries"
H_FAILED_STEP = "x-failed-step"
_CONTEXT_HEADERS = (
    ("x-org-id", "org_id"),
    ("x-instance-id", "instance_id"),
    ("x-entity", "entity"),
    ("x-record-id", "record_id"),
    ("x-external-id", "external_id"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the settle policy needs to know about the message that was handled: its
    context and where the broker delivered it from."""

    context: MessageContext
    exchange: str
    routing_key: str
    headers: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def attempt(self) -> int:
        return self.context.attempt

    @property
    def original_exchange(self) -> str:
        """Where the message was first published (kept across retries)."""
        return str(self.headers.get(H_ORIGINAL_EXCHANGE, self.exchange))

    @property
    def original_routing_key(self) -> str:
        return str(self.headers.get(H_ORIGINAL_ROUTING_KEY, self.routing_key))


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure as it goes to headers and to the audit row (message redacted;
    ``details``, the error's own, are redacted when the row is written)."""

    error_class: str
    message: str
    http_status: int | None
    transient: bool
    bug: bool
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def step(self) -> str | None:
        """The step of a multi-request action that failed, when it was one."""
        step = self.details.get("step")
        return step if type(step) is str and step else None


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """Done: write the audit row with ``outcome``, then ack."""

    outcome: Outcome


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Publish a copy on ``queue`` for attempt ``attempt``, audit ``retrying``, then ack."""

    queue: RetryQueue
    attempt: int
    headers: dict[str, Any]
    error: ErrorInfo

    @property
    def delay(self) -> float:
        return self.queue.delay


@dataclasses.dataclass(frozen=True, slots=True)
class Dead:
    """Publish a copy on ``exchange`` / ``routing_key`` with ``headers``, audit ``dead``, ack."""

    exchange: str
    routing_key: str
    headers: dict[str, Any]
    error: ErrorInfo


Decision = Ack | Retry | Dead

#: What a handler may return; failures are raised, never returned.
HANDLER_OUTCOMES = frozenset(FINAL_OUTCOMES - {Outcome.DEAD})
_BROKER_HEADER_PREFIXES = ("x-death", "x-first-death", "x-last-death")


def describe_error(exc: BaseException) -> ErrorInfo:
    """Class, redacted and truncated message, HTTP status, and whether to retry."""
    if isinstance(exc, SyncError):
        return ErrorInfo(exc.error_class, _clip(redact(exc.message)), exc.http_status,
                         transient=isinstance(exc, TransientError), bug=False,
                         details=exc.details if isinstance(exc.details, Mapping) else {})
    text = f"unexpected error (a bug in bss-sync): {type(exc).__name__}: {exc}"
    return ErrorInfo(type(exc).__name__, _clip(redact(text)), None, transient=True, bug=True)


def retry_rung(attempt: int, ladder: tuple[float, ...], retry_after: float | None) -> int | None:
    """The ladder rung (0-based) for a transient failure of ``attempt``, or None when spent.

    Rung ``attempt`` normally; a ``retry_after`` moves it up to the first rung at
    least that long (the last rung when none is). A ladder never takes a copy past
    the envelope's bound on ``attempt`` (``MAX_ATTEMPT``), which its decode would refuse.
    """
    if attempt < 0 or attempt >= min(len(ladder), MAX_ATTEMPT):
        return None
    rung = attempt
    if retry_after is not None and retry_after > ladder[rung]:
        longer = [i for i, delay in enumerate(ladder) if delay >= retry_after]
        rung = longer[0] if longer else len(ladder) - 1
    return rung


def decide(
    result: Outcome | BaseException, facts: MessageFacts, queue: WorkQueue, now: datetime
) -> Decision:
    """The settle decision for one handled message. Pure; raises nothing."""
    if not isinstance(result, BaseException):
        if result in HANDLER_OUTCOMES:
            return Ack(Outcome(result))
        result = ValueError(f"the handler returned {result!r}; expected one of "
                            f"{sorted(HANDLER_OUTCOMES)} or a raised SyncError")
    error = describe_error(result)
    if error.transient:
        busy = min(busy_retries(facts.headers), facts.attempt)
        if isinstance(result, RecordBusy):
            rung = 0 if facts.attempt < MAX_ATTEMPT else None
        else:
            retry_after = result.retry_after if isinstance(result, RateLimited) else None
            rung = retry_rung(facts.attempt - busy, queue.retry_delays, retry_after)
            if facts.attempt >= MAX_ATTEMPT:
                rung = None
        if rung is not None:
            headers = failure_headers(error, facts, queue, now)
            headers[H_ATTEMPT] = facts.attempt + 1
            if isinstance(result, RecordBusy):
                headers[H_BUSY_RETRIES] = busy + 1
            return Retry(queue.retry_queue(rung), facts.attempt + 1, headers, error)
    return dead(error, facts, queue, now)


def busy_retries(headers: Mapping[str, Any]) -> int:
    """How many of a message's attempts were busy retries (``RecordBusy``): the ladder
    counts the others. A header that is not a small count counts as none."""
    value = headers.get(H_BUSY_RETRIES, 0)
    return value if type(value) is int and 0 <= value < MAX_ATTEMPT else 0


def dead(error: ErrorInfo, facts: MessageFacts, queue: WorkQueue, now: datetime) -> Dead:
    """The dead-letter decision for ``error`` (also used for undecodable messages)."""
    return Dead(
        exchange=queue.dead_exchange,
        routing_key=queue.dead_routing_key(facts.original_routing_key),
        headers=failure_headers(error, facts, queue, now),
        error=error,
    )


def failure_headers(
    error: ErrorInfo, facts: MessageFacts, queue: WorkQueue, now: datetime
) -> dict[str, Any]:
    """The incoming headers plus the failure headers of docs/architecture.md §4 (None values
    left out)."""
    headers = {k: v for k, v in facts.headers.items()
               if not k.startswith(_BROKER_HEADER_PREFIXES)}
    headers.pop(H_HTTP_STATUS, None)
    headers.pop(H_FAILED_STEP, None)
    headers[H_ERROR_CLASS] = error.error_class
    headers[H_ERROR] = error.message
    if error.http_status is not None:
        headers[H_HTTP_STATUS] = error.http_status
    if error.step is not None:
        headers[H_FAILED_STEP] = _clip(redact(error.step))
    headers[H_ATTEMPTS] = facts.attempt + 1
    headers[H_FIRST_FAILED_AT] = str(facts.headers.get(H_FIRST_FAILED_AT) or now.isoformat())
    for header, field in _CONTEXT_HEADERS:
        value = getattr(facts.context, field)
        if value is not None:
            headers[header] = value
    headers[H_ORIGINAL_EXCHANGE] = facts.original_exchange
    headers[H_ORIGINAL_ROUTING_KEY] = facts.original_routing_key
    headers[H_SERVICE] = queue.service
    return headers


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
