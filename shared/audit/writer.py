"""The PostgreSQL audit sink, with group commit.

Handlers call ``await writer.write(record)``; the consumer runtime calls
``writer.submit(record, done)``, which queues the row and calls ``done(None)`` once
it is committed (the consumer acks there, without a coroutine waiting per
message). Rows from concurrent callers are gathered into one batch and stored
with one statement (:data:`INSERT_SQL`). Rows arriving while a commit runs wait for
it and form the next batch, at once (up to ``batch_size``); a writer woken from idle
lets its batch grow until it holds ``batch_size`` rows, its first row has waited
``interval`` seconds, or a turn of the event loop brings no new row. ``write``
returns, and ``done`` is called, only after the transaction holding the row has
committed, so the message may be acked then.

Each batch is one statement, committed on its own: its batch id and its rows, in one
round trip (:mod:`shared.audit.batches`). When the answer to that round trip is lost
(the connection cut as the server commits), the writer asks
PostgreSQL whether the batch committed before it stores anything else — again and
again while PostgreSQL cannot answer, the rows held — so that a batch is never
stored twice: committed, its rows are done; not, they fail as below.

Rows are fitted to the table on the way in (:mod:`shared.audit.normalise`), so
PostgreSQL should never refuse one. A failed commit fails every row of that batch
with :class:`~shared.errors.InfrastructureError` (their messages stay unacked and
their rows are written again). A batch refused for its *data* — a value, a
constraint, an index entry too large, a text that cannot be encoded — is retried row
by row, so one bad row fails only its own writer, with
:class:`~shared.errors.AuditRowRefused`: writing it again would fail the same way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

import orjson
import psycopg
import structlog

from shared.audit.batches import (
    RETENTION_SECONDS,
    batch_committed,
    batch_time,
    new_batch_id,
    prune_batch_ids,
)
from shared.audit.normalise import (
    COLUMNS,
    MAX_MESSAGE_CHARS,
    Row,
    to_row,
)
from shared.audit.record import AuditRecord, Outcome
from shared.audit.settled import SettledLookup, fit_key, settled_outcomes
from shared.errors import AuditRowRefused, InfrastructureError
from shared.logging import redact
from shared.storage.db import Database
from shared.storage.partitions import DEFAULT_MONTHS_AHEAD, ensure_audit_partitions

#: Half the consumer's default prefetch window (4 x 64 = 256): a batch commits while the
#: other half of the window is handled, instead of the whole window waiting for one
#: commit (measured, bench/consumer.py (b): 36 % of (a) with batches of 256 or 500,
#: 40 to 50 % with 64 or 128).
DEFAULT_BATCH_SIZE = 128
DEFAULT_INTERVAL = 0.02
#: How often a long-running writer makes sure next months' partitions exist.
PARTITION_CHECK_SECONDS = 6 * 3600.0
#: How often a long-running writer deletes batch ids past their retention.
PRUNE_SECONDS = 600.0
#: Backoff while PostgreSQL cannot say whether a batch committed.
FATE_RETRY_BASE = 0.1
FATE_RETRY_CAP = 2.0

_TYPES = {"at": "timestamptz", "attempt": "integer", "http_status": "smallint",
          "duration_ms": "double precision", "details": "jsonb"}
#: A batch in one statement, committed on its own: its id, and its rows sent as one
#: JSON array of arrays (``COLUMNS`` order, serialised by orjson) that PostgreSQL takes
#: apart. One round trip where ``BEGIN``, ``COPY`` and ``COMMIT`` took four, each
#: through psycopg's asynchronous waits (docs/decisions.md: the writer's CPU per row
#: under load ~30 % lower, a lone row's halved), at 13-30 % more of PostgreSQL's own
#: time per row.
INSERT_SQL = (
    "WITH batch AS (INSERT INTO audit_batches (id) VALUES (%s))"
    f" INSERT INTO audit_log ({', '.join(COLUMNS)}) SELECT "
    + ", ".join(f"(r->>{i})::{_TYPES[c]}" if c in _TYPES else f"r->>{i}"
                for i, c in enumerate(COLUMNS))
    + " FROM jsonb_array_elements(%s::jsonb) AS r"
)
__all__ = ["COLUMNS", "MAX_MESSAGE_CHARS", "AuditWriter", "settled_outcome", "to_row"]
#: What PostgreSQL (or psycopg, adapting a value) raises for a row it will never take.
_DATA_REFUSALS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded,
                  UnicodeError, ValueError, TypeError)

log = structlog.get_logger(__name__)

#: Called once with ``None`` when the row is committed, or with the error when it cannot be.
Done = Callable[[BaseException | None], None]
Entry = tuple[Row, Done]


class AuditWriter:
    """Group-committing :class:`~shared.audit.record.AuditSink` over PostgreSQL.

    ``await start()`` before the first ``write`` (it also creates the audit
    partitions ahead); ``await close()`` flushes what is queued.
    """

    def __init__(
        self,
        db: Database,
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval: float = DEFAULT_INTERVAL,
        *,
        months_ahead: int = DEFAULT_MONTHS_AHEAD,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.db = db
        self.batch_size = batch_size
        self.interval = interval
        self.months_ahead = months_ahead
        self._pending: list[Entry] = []
        self._inflight: list[Entry] = []
        self._first_at = 0.0
        self._has_rows = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._partitions_checked = 0.0
        #: De-duplication look-ups, concurrent ones in one query (shared.audit.settled).
        self.lookups = SettledLookup(db)
        self._batch_ids_pruned = time.monotonic()
        self.rows_written = 0
        self.batches_written = 0

    async def start(self) -> None:
        """Create the audit partitions ahead and start the batching task.

        Raises :class:`InfrastructureError` when PostgreSQL cannot be reached.
        """
        if self._task is not None:
            return
        await ensure_audit_partitions(self.db, self.months_ahead)
        self._partitions_checked = time.monotonic()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Flush every queued row, then stop. Idempotent."""
        if self._task is None:
            return
        self._closing = True
        self._has_rows.set()
        task, self._task = self._task, None
        await task

    async def __aenter__(self) -> AuditWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def submit(self, record: AuditRecord, done: Done) -> None:
        """Queue ``record``; ``done(None)`` is called once it is committed, or
        ``done(error)`` (an :class:`InfrastructureError`) when its batch could not be.

        ``done(error)`` gets :class:`AuditRowRefused` when PostgreSQL refused the row
        for its data. Raises ``ValueError`` for a record whose outcome is not one of
        :class:`Outcome` and :class:`InfrastructureError` when the writer is not
        running (``done`` is then never called).
        """
        row = to_row(record)
        if self._task is None or self._task.done() or self._closing:
            raise InfrastructureError("the audit writer is not running")
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.append((row, done))
        self._has_rows.set()

    async def write(self, record: AuditRecord) -> None:
        """Return once ``record`` is committed.

        Raises :class:`InfrastructureError` when its batch could not be committed
        or the writer is not running, :class:`AuditRowRefused` when PostgreSQL refused
        the row for its data, ``ValueError`` for an invalid outcome.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.submit(record, lambda error: _resolve(future, error))
        await future

    async def write_many(self, records: Sequence[AuditRecord]) -> None:
        """Write several records; return once all are committed (same errors as ``write``)."""
        await asyncio.gather(*(self.write(r) for r in records))

    async def _run(self) -> None:
        try:
            await self._batches()
        finally:  # whatever happens (cancelled, crashed), nobody waits forever
            batch, self._pending, self._inflight = self._inflight + self._pending, [], []
            _fail(batch, "the audit writer stopped", RuntimeError("audit writer stopped"))

    async def _batches(self) -> None:
        woken = True
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._has_rows.clear()
                await self._has_rows.wait()
                woken = True
                continue
            if woken:  # after a commit, what came meanwhile is the batch (see below)
                await self._wait_for_company()
            woken = False
            batch = self._pending[: self.batch_size]
            del self._pending[: self.batch_size]
            if self._pending:
                self._first_at = time.monotonic()
            self._inflight = batch
            await self._commit(batch)
            self._inflight = []
            await self._maybe_check_partitions()
            await self._maybe_prune_batch_ids()

    async def _wait_for_company(self) -> None:
        """Let the batch grow while rows keep arriving, up to ``interval`` or ``batch_size``.

        A turn of the event loop without a new row closes the batch, so a lone row is
        not held back for nothing. Only a writer woken from idle waits here: under
        load the rows that arrived while the previous commit ran form the next batch
        at once (natural group commit) — waiting for more would hold their messages,
        and the window, for the time it takes to handle the rest of a batch
        (docs/decisions.md).
        """
        while len(self._pending) < self.batch_size and not self._closing:
            if time.monotonic() - self._first_at >= self.interval:
                return
            before = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == before:
                return

    async def _commit(self, batch: list[Entry]) -> None:
        rows = [row for row, _ in batch]
        try:
            await self._store(rows)
        except Exception as exc:  # never leave a waiter hanging
            if refused_for_data(exc):
                log.warning("audit batch refused, writing row by row", error=_reason(exc))
                await self._commit_one_by_one(batch)
            elif isinstance(exc, InfrastructureError):
                _fail(batch, str(exc), exc)
            else:
                _fail(batch, f"audit commit failed: {_reason(exc)}", exc)
            return
        self.rows_written += len(rows)
        self.batches_written += 1
        for _, done in batch:
            _call(done, None)

    async def _commit_one_by_one(self, batch: list[Entry]) -> None:
        for row, done in batch:
            try:
                await self._store([row])
            except Exception as exc:
                if refused_for_data(exc):
                    refused = AuditRowRefused(f"PostgreSQL refused the audit row: {_reason(exc)}")
                    refused.__cause__ = exc
                    _call(done, refused)
                else:
                    _fail([(row, done)], f"audit row not written: {_reason(exc)}", exc)
            else:
                self.rows_written += 1
                _call(done, None)

    async def _store(self, rows: list[Row]) -> None:
        """Commit ``rows`` as one batch, once: when the answer to the commit is lost,
        find out whether it committed (module docstring).

        Raises :class:`InfrastructureError` when the batch did not commit, or the
        writer stops before it knows; what :func:`refused_for_data` recognises when a
        row was refused for its data.
        """
        batch_id = new_batch_id()
        data = orjson.dumps(rows).decode()  # TypeError: a value JSON cannot hold
        try:
            await self._insert_once(data, batch_id)
        except _CommitUnanswered as lost:
            await self._learn_fate(batch_id, lost.cause)

    async def _insert_once(self, data: str, batch_id: uuid.UUID) -> None:
        """The batch's one statement (its id and its rows), committed on its own.
        Raises :class:`_CommitUnanswered` when it gets no answer (an error the server
        answers means it did not commit, and is raised as is)."""
        async with self.db.connection() as conn:
            try:
                await conn.execute(INSERT_SQL, (batch_id, data))
            except psycopg.Error as exc:
                if conn.closed or _connection_lost(exc):
                    raise _CommitUnanswered(exc) from exc
                raise
            except Exception as exc:  # whatever it was, the server may have committed
                raise _CommitUnanswered(exc) from exc

    async def _learn_fate(self, batch_id: uuid.UUID, cause: Exception) -> None:
        """Return when batch ``batch_id``, whose commit answer was lost, did commit;
        raise :class:`InfrastructureError` when it did not (it never will), or when the
        writer is stopping before PostgreSQL could say."""
        reason = _reason(cause)
        log.warning("the answer to an audit commit was lost; asking whether it committed",
                    batch=str(batch_id), error=reason)
        delay = FATE_RETRY_BASE
        while True:
            try:
                committed = await batch_committed(self.db, batch_id)
                break
            except InfrastructureError as exc:
                if self._closing:
                    raise InfrastructureError(
                        f"audit commit unanswered ({reason}), its fate unknown: "
                        "the writer stopped") from cause
                log.warning("cannot learn whether an audit batch committed; asking again",
                            batch=str(batch_id), error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, FATE_RETRY_CAP)
        if time.time() - batch_time(batch_id) > RETENTION_SECONDS:
            log.error("an audit batch's fate was learnt after its id's retention: its rows "
                      "may be stored twice", batch=str(batch_id))
        log.info("audit batch committed after all" if committed
                 else "audit batch did not commit; its rows are written again",
                 batch=str(batch_id))
        if not committed:
            raise InfrastructureError(f"audit commit failed: {reason}") from cause

    async def _maybe_prune_batch_ids(self) -> None:
        if time.monotonic() - self._batch_ids_pruned < PRUNE_SECONDS:
            return
        self._batch_ids_pruned = time.monotonic()
        try:
            await prune_batch_ids(self.db)
        except Exception as exc:  # kept longer: nothing is wrong with that
            log.warning("audit batch ids not pruned", error=redact(str(exc)))

    async def _maybe_check_partitions(self) -> None:
        if time.monotonic() - self._partitions_checked < PARTITION_CHECK_SECONDS:
            return
        self._partitions_checked = time.monotonic()
        try:
            await ensure_audit_partitions(self.db, self.months_ahead)
        except Exception as exc:  # the DEFAULT partition catches rows meanwhile
            log.warning("audit partitions not checked", error=redact(str(exc)))

    async def settled_outcome(self, message_id: str, attempt: int) -> Outcome | None:
        """The outcome recorded for this message attempt, else a final outcome of any
        attempt, else ``None`` (see :func:`settled_outcome`).

        Lets a consumer recognise a redelivered message, or a stale copy, it already
        settled. Concurrent look-ups go to PostgreSQL as one query
        (:mod:`shared.audit.settled`). Raises :class:`InfrastructureError`.
        """
        return await self.lookups.settled_outcome(message_id, attempt)

    async def final_outcome(self, message_id: str) -> Outcome | None:
        """The last final outcome (see ``FINAL_OUTCOMES``) of any attempt, or ``None``;
        concurrent look-ups share queries with :meth:`settled_outcome`."""
        return await self.lookups.final_outcome(message_id)


class _CommitUnanswered(Exception):
    """The round trip holding a batch's ``COMMIT`` failed: it may have committed."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _connection_lost(exc: psycopg.Error) -> bool:
    """Whether ``exc`` says the connection failed (no answer, or the backend went away:
    08xxx, 57P0x), rather than the server refusing the statement."""
    state = exc.sqlstate or ""
    return not state or state.startswith(("08", "57P0"))


def refused_for_data(exc: BaseException) -> bool:
    """Whether ``exc`` (or the failure an :class:`InfrastructureError` wraps) means
    PostgreSQL will never take the row, as opposed to a connection that failed."""
    cause = exc.__cause__ if isinstance(exc, InfrastructureError) else exc
    return isinstance(cause, _DATA_REFUSALS)


def _reason(exc: BaseException) -> str:
    """The first line of an error, redacted (psycopg adds context lines)."""
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)


def _fail(batch: list[Entry], message: str, cause: BaseException) -> None:
    """Fail every row of ``batch``, each with its own InfrastructureError."""
    for _, done in batch:
        error = InfrastructureError(message)
        error.__cause__ = cause
        _call(done, error)


def _call(done: Done, error: BaseException | None) -> None:
    """Tell a caller its row's fate; a failing callback must not stop the writer."""
    try:
        done(error)
    except Exception:
        log.exception("an audit commit callback failed (a bug)")


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def settled_outcome(db: Database, message_id: str, attempt: int) -> Outcome | None:
    """What already settled a delivery of ``(message_id, attempt)``: the latest outcome
    recorded for that attempt, else the latest final outcome (``FINAL_OUTCOMES``) of any
    attempt — a copy of a message that is done is settled too, whatever its attempt
    (a retry copy the broker stored but never confirmed, its original handled again) —
    else ``None``. One query (:func:`shared.audit.settled.settled_outcomes`).

    The key is fitted as the row's was (:mod:`shared.audit.normalise`): a message id
    holding a NUL finds its row, and asks PostgreSQL nothing it would refuse.
    """
    key = fit_key(message_id, attempt)
    return (await settled_outcomes(db, [key])).get(key)
