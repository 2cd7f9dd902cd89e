"""Which message attempts already have an outcome: the consumer's de-duplication look-up.

A consumer asks, before it handles a delivery, whether the delivery's
``(message id, attempt)`` already has an audit row — an earlier delivery's outcome is
then durable and the copy is acked unhandled (docs/architecture.md §5, step 2). The
pusher asks it of suspect deliveries only (redelivered, retry copies, twins); the
dispatcher of every event, since a BSS publishes at least once and its second copy
looks like a first one (§4, *What is guaranteed*).

Asked of every message, one query each cost more than the dispatcher's whole work
(docs/decisions.md, *A BSS event published twice is dispatched once*), so the
look-ups are coalesced (:mod:`shared.batching`): the ids asked in one turn of the
event loop — under load, a prefetch window's worth — go to PostgreSQL as one
``message_id = ANY(...)`` query, and each caller gets the answer for its own key.
Keys are fitted as the rows' were (:mod:`shared.audit.normalise`), so a message id
holding a NUL finds its row and PostgreSQL is asked nothing it would refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from shared.audit.normalise import INT4_MAX, fit_ident
from shared.audit.record import FINAL_OUTCOMES, Outcome
from shared.batching import Coalescer
from shared.storage.db import Database

Key = tuple[str, int]
#: The attempt of a key asking only for its message's final outcome: no row has it
#: (``attempt >= 0``), so the answer is the last final outcome of any attempt.
ANY_ATTEMPT = -1

#: Every row of the messages asked about (each id once), oldest first: the last row of a
#: key is its outcome. Each id is looked up on its own through the message index of
#: every partition: the LATERAL subquery, kept apart by OFFSET 0, can only be an index
#: scan on ``message_id``. Written as ``message_id = ANY(…)``, a planner without
#: statistics on the month's partition (autovacuum slow, or off) read all of it.
ROWS_SQL = ("SELECT a.message_id, a.attempt, a.outcome FROM unnest(%s::text[]) AS asked(id)"
            " CROSS JOIN LATERAL (SELECT message_id, attempt, outcome, at, id FROM audit_log"
            " WHERE message_id = asked.id OFFSET 0) AS a ORDER BY a.at, a.id")


class SettledLookup:
    """``settled_outcome(message_id, attempt)``, concurrent calls served by one query.

    Raises :class:`~shared.errors.InfrastructureError` when PostgreSQL fails (every
    caller of that batch gets it; the consumer retries its look-up with backoff).
    """

    def __init__(self, db: Database, *, max_batch: int = 200) -> None:
        self.db = db
        self._batches: Coalescer[Key, Outcome | None] = Coalescer(
            self._run, max_batch=max_batch, gather=True)

    @property
    def queries(self) -> int:
        """Queries sent so far (one per batch)."""
        return self._batches.batches

    async def settled_outcome(self, message_id: str, attempt: int) -> Outcome | None:
        """What settled ``(message_id, attempt)`` (:func:`latest_outcomes`), or ``None``."""
        return await self._batches.submit(fit_key(message_id, attempt))

    async def final_outcome(self, message_id: str) -> Outcome | None:
        """The last final outcome (``FINAL_OUTCOMES``) of any attempt of ``message_id``,
        or ``None``; in the same queries as :meth:`settled_outcome` (a consumer asks it
        of each copy that found nothing to do: after a reconnection, a window's worth)."""
        return await self._batches.submit((fit_ident(message_id) or "", ANY_ATTEMPT))

    async def _run(self, keys: list[Key]) -> list[Outcome | BaseException | None]:
        found = await settled_outcomes(self.db, keys)
        return [found.get(key) for key in keys]


async def settled_outcomes(db: Database, keys: Iterable[Key]) -> dict[Key, Outcome]:
    """What settled each of ``keys`` (fitted, :func:`fit_key`; see :func:`latest_outcomes`).

    One query, whatever the number of keys. Raises
    :class:`~shared.errors.InfrastructureError`.
    """
    wanted = set(keys)
    if not wanted:
        return {}
    rows = await db.fetch(ROWS_SQL, (sorted({message_id for message_id, _ in wanted}),))
    return latest_outcomes(rows, wanted)


def latest_outcomes(rows: Sequence[dict[str, Any]], wanted: set[Key]) -> dict[Key, Outcome]:
    """Pure: from the asked messages' rows (oldest first), what settled each wanted key —
    the last outcome of its attempt, else the last final outcome (``FINAL_OUTCOMES``) of
    any attempt of its message: a copy of a message that is done is settled too,
    whatever its attempt (a retry copy the broker stored but never confirmed, its
    original handled again meanwhile)."""
    own: dict[Key, Outcome] = {}
    final: dict[str, Outcome] = {}
    for row in rows:
        outcome = Outcome(row["outcome"])
        key = (row["message_id"], row["attempt"])
        if key in wanted:
            own[key] = outcome
        if outcome in FINAL_OUTCOMES:
            final[row["message_id"]] = outcome
    found: dict[Key, Outcome] = {}
    for key in wanted:
        outcome = own.get(key) or final.get(key[0])
        if outcome is not None:
            found[key] = outcome
    return found


def fit_key(message_id: str, attempt: int) -> Key:
    """The key as the audit row stored it: the id fitted, the attempt clamped to ``integer``."""
    return (fit_ident(message_id) or "", min(max(attempt, 0), INT4_MAX))
