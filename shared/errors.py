"""The one error hierarchy of bss-sync.

Whether a failed record is retried with backoff or dead-lettered at once is decided
here, by the class of the error, and nowhere else (docs/architecture.md §5 step 4). Foreign
exceptions (httpx, psycopg, pika, jsonata, jsonschema) are translated where they
enter our code: ``raise RemoteUnavailable(...) from exc``.

    SyncError
    ├── TransientError                 retry on the next delay queue, then dead
    │   ├── RemoteUnavailable          connect/read timeout, 5xx, connection reset
    │   ├── RateLimited                429 (carries retry_after seconds)
    │   ├── RemoteConflict             409 / 423: the record is locked remotely
    │   ├── DependencyPending          a referenced record has no link yet
    │   ├── RecordBusy                 another delivery holds this record's link claim
    │   ├── CreateOutcomeUnknown       a create may have made the record remotely; no way
    │   │                              to find its id (the record is gone from the BSS)
    │   ├── BssUnavailable             the host BSS API did not answer properly
    │   ├── BssConflict                the BSS record changed since it was read (412)
    │   └── InfrastructureError        PostgreSQL or RabbitMQ failed under us
    └── PermanentError                 dead-letter now; the daily redelivery retries it
        ├── InvalidMessage             not JSON, or breaks the envelope schema
        ├── ConfigurationError         unknown instance/object, invalid connector
        ├── MappingError               a transform expression failed on this record
        ├── SchemaViolation            the payload breaks the target schema
        ├── RemoteRejected             4xx other than the transient ones
        ├── AuthenticationFailed       401/403 even after a token refresh
        ├── RemoteProtocolError        the third party answered something unusable
        ├── UnsafeRequest              a redirect or next-page URL to another host
        ├── AmbiguousMatch             'match' found several remote records for one
        ├── BssRejected                the BSS refused our write (4xx)
        └── AuditRowRefused            PostgreSQL refused a message's audit row for its data

Messages never contain credentials: callers pass the redacted request, and
``shared.logging.redact`` is applied to every text that leaves the process.
"""

from __future__ import annotations

from typing import Any


class SyncError(Exception):
    """Base of every error bss-sync raises on purpose.

    ``http_status`` is the remote status code when one was received; ``details``
    is a small JSON-able dict that goes to the audit row (never a secret).
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.details = details or {}

    @property
    def error_class(self) -> str:
        """Stable name for headers and audit rows, e.g. ``RemoteRejected``."""
        return type(self).__name__

    def __str__(self) -> str:
        return self.message


class TransientError(SyncError):
    """Worth retrying later: the same input may succeed when the world changes."""

    retryable = True


class RemoteUnavailable(TransientError):
    """The third party timed out, refused the connection or answered 5xx."""


class RateLimited(TransientError):
    """The third party answered 429; ``retry_after`` is in seconds when it said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RemoteConflict(TransientError):
    """The record is locked or being modified on the remote side (409, 423)."""


class DependencyPending(TransientError):
    """A record this one refers to (its account, say) has no link yet."""

    def __init__(self, message: str, *, entity: str, record_id: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.entity = entity
        self.record_id = record_id


class RecordBusy(TransientError):
    """Another delivery of the same record holds its link claim right now."""


class CreateOutcomeUnknown(TransientError):
    """A record gone from the BSS was maybe created remotely — a create was sent and its
    answer never came back — and nothing can find the remote record's id (no ``match``,
    no idempotency key): it may be orphaned there. Retried (a connector change, a link
    made by hand, resolve it), then dead-lettered for an operator."""


class BssUnavailable(TransientError):
    """The host BSS API timed out or answered 5xx."""


class BssConflict(TransientError):
    """The BSS record changed between our read and our write (``If-Match`` answered
    412): read it again and decide again, later."""


class InfrastructureError(TransientError):
    """PostgreSQL or RabbitMQ failed while handling the record."""


class PermanentError(SyncError):
    """Retrying the same input will fail the same way; dead-letter it now."""


class InvalidMessage(PermanentError):
    """A message that cannot be decoded or breaks the envelope schema."""


class ConfigurationError(PermanentError):
    """The instance, connector object or operation needed for a record is missing."""


class MappingError(PermanentError):
    """A transform expression failed for this record."""


class SchemaViolation(PermanentError):
    """A payload breaks the schema it must satisfy (request schema or entity schema)."""


class RemoteRejected(PermanentError):
    """The third party refused the request (4xx other than 401/403/408/409/423/429)."""


class AuthenticationFailed(PermanentError):
    """The third party refused our credentials, even after refreshing a token."""


class RemoteProtocolError(PermanentError):
    """The third party answered something we cannot use (not JSON, no id, too large)."""


class UnsafeRequest(PermanentError):
    """We refused to follow a URL that leaves the instance's own server host."""


class AmbiguousMatch(PermanentError):
    """A connector's ``match`` found several remote records that could be this one."""


class BssRejected(PermanentError):
    """The host BSS API refused a write (4xx)."""


class AuditRowRefused(PermanentError):
    """PostgreSQL refused a message's audit row for its data (a value, a constraint):
    writing the same row again fails the same way, so the message is dead-lettered
    instead of held (docs/architecture.md §5). A lost connection is an
    :class:`InfrastructureError` instead."""


TRANSIENT_HTTP_STATUSES = frozenset({408, 409, 423, 425, 429})


def classify_http_status(status: int) -> type[SyncError] | None:
    """The error class for a remote HTTP status, or ``None`` when it is a success.

    A status outside 100-599 is no HTTP status: the third party broke the protocol
    (``RemoteProtocolError``, never a success, never retried). Pure: used by the
    third-party client and by tests that pin the policy.
    """
    if not 100 <= status <= 599:
        return RemoteProtocolError
    if status < 400:
        return None
    if status == 429:
        return RateLimited
    if status in (409, 423):
        return RemoteConflict
    if status in TRANSIENT_HTTP_STATUSES or status >= 500:
        return RemoteUnavailable
    if status in (401, 403):
        return AuthenticationFailed
    return RemoteRejected
