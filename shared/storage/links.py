"""Links: the pair (BSS id, external id) of one record in one instance, and its sync state.

A link row is *claimed* (``claim`` = the message id, ``claimed_at``) by the
delivery working on the record, before it creates anything remotely, with one
``INSERT … ON CONFLICT`` statement: two deliveries of the same record can never
both create it. A claim older than ``stale_after`` (its holder died) can be
taken over. ``mark_linked`` / ``mark_deleted`` / ``release_claim`` clear it.

States: ``creating`` (claimed or failed before the remote create succeeded),
``linked`` (both ids known), ``deleted`` (deleted on the other side by us).

The write that ends a push may carry a :class:`PushMark` — the message id and
attempt of the delivery that changed the remote record, and the outcome its audit
row is to say — kept until the next marked write. A redelivery of that delivery
finds its own mark when the process died between the link write and the audit row
(docs/architecture.md §5 step 5).

Just before a create's request goes out, ``note_create_sent`` stores on the claimed
row when and what was sent (``create_sent_at``, ``create_sent``: JSON the pusher
writes and reads), durably (synchronous commit, even on the asynchronous-commit
pool): if the answer is lost, the record is known to have maybe been created
remotely. Linking or deleting the record clears it, as does ``clear_create_sent``
(docs/architecture.md §5 step 4).

A create made of several requests (a connector's ``steps``) is linked, durably, as
soon as its step that answers the record's id has succeeded (``note_steps_done``),
with the steps done so far and what they captured (``push_steps``, JSON): a retry
resumes after them instead of creating a second remote record. The push write that
links the record once all its steps are done, and deleting it, clear it.

``LinkStore(db, batched=True)`` (the pusher, the puller) serves concurrent claims
and link writes of either side with one statement per batch (``shared.batching``):
the same rows, the same guarantees, a fraction of the round trips. Batch statements
take their rows in key order, so two processes' batches cannot deadlock.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import psycopg

from shared.batching import Coalescer
from shared.errors import PermanentError
from shared.storage.db import Database

Key = Literal["bss_id", "external_id"]
T = TypeVar("T")


class LinkConflict(PermanentError):
    """Linking would pair a record with one already linked to another record."""


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """One ``links`` row."""

    id: int
    instance_id: str
    entity: str
    bss_id: str | None
    external_id: str | None
    state: str
    claim: str | None
    claimed_at: datetime | None
    push_hash: str | None
    pull_hash: str | None
    last_pushed_at: datetime | None
    last_pulled_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    pushed_by: str | None = None  # the PushMark of the last push that changed the record
    pushed_attempt: int | None = None
    pushed_outcome: str | None = None
    create_sent_at: datetime | None = None  # a create may have reached the third party
    create_sent: str | None = None  # what it sent (JSON), see ``create_trace``
    push_steps: str | None = None  # a create's steps done so far (JSON), see ``steps_done``

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Link:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    @property
    def push_mark(self) -> PushMark | None:
        """Which delivery's push last changed the remote record, if one is recorded."""
        if self.pushed_by is None or self.pushed_attempt is None or self.pushed_outcome is None:
            return None
        return PushMark(self.pushed_by, self.pushed_attempt, self.pushed_outcome)

    @property
    def create_pending(self) -> bool:
        """A create of the record was sent and may have made a remote record that this
        link does not name (its answer never came back)."""
        return self.create_sent_at is not None and self.state != "linked"

    @property
    def create_trace(self) -> dict[str, Any] | None:
        """What the pending create sent, as ``note_create_sent`` was given it; ``None``
        when there is none or it is not a JSON object."""
        if self.create_sent is None:
            return None
        try:
            trace = json.loads(self.create_sent)
        except ValueError:
            return None
        return trace if isinstance(trace, dict) else None

    @property
    def steps_done(self) -> dict[str, Any] | None:
        """The steps of an unfinished create, as ``note_steps_done`` was given them
        (step name → what it captured); ``None`` when no create stopped part-way."""
        if self.push_steps is None:
            return None
        try:
            done = json.loads(self.push_steps)
        except ValueError:
            return None
        return done if isinstance(done, dict) else None


@dataclasses.dataclass(frozen=True, slots=True)
class PushMark:
    """The delivery whose push changed the remote record (``message_id``, ``attempt``)
    and the outcome its audit row is to say (``created``, ``updated``, ``deleted``)."""

    message_id: str
    attempt: int
    outcome: str


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: whether we own the record now, and its link as it stands."""

    owned: bool
    link: Link
    new: bool  # the row did not exist before this claim

    @property
    def linked(self) -> bool:
        """The record already exists on the other side (update, don't create)."""
        return self.link.state == "linked"


def _seconds(value: float | timedelta) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


def _claim_sql(key: Key) -> str:
    return f"""
INSERT INTO links AS l (instance_id, entity, {key}, state, claim, claimed_at)
VALUES (%(instance_id)s, %(entity)s, %(key)s, 'creating', %(message_id)s, now())
ON CONFLICT (instance_id, entity, {key}) DO UPDATE
   SET claim = EXCLUDED.claim, claimed_at = now(), updated_at = now()
 WHERE l.claim IS NULL OR l.claim = EXCLUDED.claim OR l.claimed_at < now() - %(stale)s
RETURNING l.*, (l.xmax = 0) AS inserted
"""


def _batch_claim_sql(key: Key) -> str:
    """Claims of many records by ``key`` (``bss_id``: push, ``external_id``: pull)."""
    return f"""
INSERT INTO links AS l (instance_id, entity, {key}, state, claim, claimed_at)
SELECT t.instance_id, t.entity, t.key, 'creating', t.message_id, now()
  FROM unnest(%(instance_ids)b::text[], %(entities)b::text[], %(keys)b::text[],
              %(message_ids)b::text[]) AS t(instance_id, entity, key, message_id)
 ORDER BY t.instance_id, t.entity, t.key
ON CONFLICT (instance_id, entity, {key}) DO UPDATE
   SET claim = EXCLUDED.claim, claimed_at = now(), updated_at = now()
 WHERE l.claim IS NULL OR l.claim = EXCLUDED.claim OR l.claimed_at < now() - %(stale)s
RETURNING l.*, (l.xmax = 0) AS inserted
"""


def _linked_by(key: Key) -> str:
    """The linked rows of an instance's entity among many ``key`` values, one lookup by
    the whole unique key per value.

    The LATERAL subquery, kept apart by OFFSET 0 (so it is not flattened into a join),
    can only be an index scan on the key's unique index (which leads with the key since
    ``0010``). Written as ``key = ANY(…)``, a planner without statistics on a freshly
    grown ``links`` chose a bitmap scan of the (instance_id, entity) prefix — every
    link of the entity — filtering the values.
    """
    return f"""
SELECT l.* FROM unnest(%s::text[]) AS wanted(value)
 CROSS JOIN LATERAL (SELECT * FROM links WHERE instance_id = %s AND entity = %s
                        AND {key} = wanted.value AND state = 'linked' OFFSET 0) AS l
"""


#: ``linked`` / ``external_ids`` (by bss_id) and ``bss_ids`` (by external_id); parameters:
#: the values, the instance, the entity.
LINKED_BY_BSS_ID = _linked_by("bss_id")
LINKED_BY_EXTERNAL_ID = _linked_by("external_id")


def _busy_links(key: Key) -> str:
    """The rows of many (instance, entity, ``key``) triples, one lookup by the whole
    unique key each (a LATERAL subquery kept apart by OFFSET 0: never a join that could
    scan the table)."""
    return f"""
SELECT l.* FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(instance_id, entity, value)
 CROSS JOIN LATERAL (SELECT * FROM links WHERE instance_id = t.instance_id
                        AND entity = t.entity AND {key} = t.value OFFSET 0) AS l
"""


#: ``_busy_claims``; parameters: the instances, the entities, the values.
BUSY_LINKS_BY_BSS_ID = _busy_links("bss_id")
BUSY_LINKS_BY_EXTERNAL_ID = _busy_links("external_id")


#: Linking or deleting a record ends any create that was pending (§5 step 4).
_NO_CREATE_SENT = "create_sent_at = NULL, create_sent = NULL"

#: A push that links or deletes a record has done all of its steps (a pull leaves them).
_NO_PUSH_STEPS = {"push": ", push_steps = NULL", "pull": ""}

#: A marked write replaces the mark; an unmarked one keeps it (its three columns go together).
_KEEP_OR_MARK = """pushed_by = coalesce(EXCLUDED.pushed_by, l.pushed_by),
       pushed_attempt = CASE WHEN EXCLUDED.pushed_by IS NULL THEN l.pushed_attempt
                             ELSE EXCLUDED.pushed_attempt END,
       pushed_outcome = CASE WHEN EXCLUDED.pushed_by IS NULL THEN l.pushed_outcome
                             ELSE EXCLUDED.pushed_outcome END"""

def _batch_linked_sql(direction: Literal["push", "pull"]) -> str:
    """Link writes of many records, found by ``bss_id`` (push) or ``external_id`` (pull)."""
    key, other = ("bss_id", "external_id") if direction == "push" else ("external_id",
                                                                         "bss_id")
    stamp = "last_pushed_at" if direction == "push" else "last_pulled_at"
    return f"""
INSERT INTO links AS l (instance_id, entity, bss_id, external_id, state, push_hash, pull_hash,
                        {stamp}, pushed_by, pushed_attempt, pushed_outcome)
SELECT t.instance_id, t.entity, t.bss_id, t.external_id, 'linked', t.push_hash, t.pull_hash,
       now(), t.pushed_by, t.pushed_attempt, t.pushed_outcome
  FROM unnest(%(instance_ids)b::text[], %(entities)b::text[], %(bss_ids)b::text[],
              %(external_ids)b::text[], %(push_hashes)b::text[], %(pull_hashes)b::text[],
              %(pushed_by)b::text[], %(pushed_attempts)b::integer[],
              %(pushed_outcomes)b::text[])
       AS t(instance_id, entity, bss_id, external_id, push_hash, pull_hash, pushed_by,
            pushed_attempt, pushed_outcome)
 ORDER BY t.instance_id, t.entity, t.{key}
ON CONFLICT (instance_id, entity, {key}) DO UPDATE
   SET {other} = EXCLUDED.{other}, state = 'linked', claim = NULL, claimed_at = NULL,
       last_error = NULL, push_hash = coalesce(EXCLUDED.push_hash, l.push_hash),
       pull_hash = coalesce(EXCLUDED.pull_hash, l.pull_hash), {stamp} = now(),
       updated_at = now(), {_NO_CREATE_SENT}{_NO_PUSH_STEPS[direction]}, {_KEEP_OR_MARK}
RETURNING l.*
"""


#: Stores the pending creates of rows still claimed by their message; returns the rows
#: it wrote. An upsert, as the claims are: each row is reached through the key's
#: index whatever the planner's statistics (a join with the batch may scan the whole
#: table), and rows are taken in key order. The row exists — the claim made it — so
#: the insert only ever serves as the lookup; were it gone, the row it makes is
#: claimed by the message, as the claim would have made it.
_CREATE_SENT_SQL = """
INSERT INTO links AS l (instance_id, entity, bss_id, state, claim, claimed_at,
                        create_sent_at, create_sent)
SELECT t.instance_id, t.entity, t.bss_id, 'creating', t.message_id, now(), now(), t.sent
  FROM unnest(%(instance_ids)b::text[], %(entities)b::text[], %(bss_ids)b::text[],
              %(message_ids)b::text[], %(sent)b::text[])
       AS t(instance_id, entity, bss_id, message_id, sent)
 ORDER BY t.instance_id, t.entity, t.bss_id
ON CONFLICT (instance_id, entity, bss_id) DO UPDATE
   SET create_sent_at = now(), create_sent = EXCLUDED.create_sent, updated_at = now()
 WHERE l.claim = EXCLUDED.claim
RETURNING l.instance_id, l.entity, l.bss_id, current_setting('synchronous_commit') AS sync
"""


#: ``note_steps_done``: the record linked while its claim is held, its steps kept. The
#: last push time does not move: a create's idempotency keys stay those of its attempts.
_STEPS_DONE_SQL = """
UPDATE links SET external_id = %(external_id)s, state = 'linked', push_steps = %(done)s,
       create_sent_at = NULL, create_sent = NULL, last_error = NULL, updated_at = now()
 WHERE instance_id = %(instance_id)s AND entity = %(entity)s AND bss_id = %(bss_id)s
   AND claim = %(message_id)s
"""


@dataclasses.dataclass(frozen=True, slots=True)
class _CreateSentRequest:
    instance_id: str
    entity: str
    bss_id: str
    message_id: str
    sent: str

    @property
    def row(self) -> tuple[str, str, str]:
        return (self.instance_id, self.entity, self.bss_id)


@dataclasses.dataclass(frozen=True, slots=True)
class _ClaimRequest:
    key: Key  # bss_id (push) or external_id (pull)
    instance_id: str
    entity: str
    value: str
    message_id: str
    stale: timedelta

    @property
    def row(self) -> tuple[str, str, str]:
        return (self.instance_id, self.entity, self.value)


@dataclasses.dataclass(frozen=True, slots=True)
class _LinkedRequest:
    direction: Literal["push", "pull"]
    instance_id: str
    entity: str
    bss_id: str
    external_id: str
    push_hash: str | None
    pull_hash: str | None
    pushed: PushMark | None

    @property
    def row(self) -> tuple[str, str, str]:
        """The row's key: the BSS id for a push, the external id for a pull."""
        value = self.bss_id if self.direction == "push" else self.external_id
        return (self.instance_id, self.entity, value)


def _mark_params(pushed: PushMark | None) -> dict[str, Any]:
    return {"pushed_by": pushed.message_id if pushed else None,
            "pushed_attempt": pushed.attempt if pushed else None,
            "pushed_outcome": pushed.outcome if pushed else None}


class LinkStore:
    """Reads and writes links. Every method raises ``InfrastructureError`` on DB failure."""

    def __init__(self, db: Database, *, batched: bool = False,
                 durable: Database | None = None) -> None:
        self.db = db
        self.batched = batched
        #: Where a pending create is noted: a database committing synchronously (the
        #: note must be on disk before the request goes out), ``db`` when it does.
        self.durable = durable if durable is not None else db
        self._claims: Coalescer[_ClaimRequest, Claim] = Coalescer(self._claim_batch)
        self._linked: Coalescer[_LinkedRequest, Link] = Coalescer(self._linked_batch)
        self._create_sent: Coalescer[_CreateSentRequest, bool] = Coalescer(
            self._create_sent_batch)

    async def by_bss_id(self, instance_id: str, entity: str, bss_id: str) -> Link | None:
        """The link of BSS record ``bss_id``, or ``None``."""
        return await self._get(instance_id, entity, "bss_id", bss_id)

    async def by_external_id(
        self, instance_id: str, entity: str, external_id: str
    ) -> Link | None:
        """The link of external record ``external_id``, or ``None``."""
        return await self._get(instance_id, entity, "external_id", external_id)

    async def _get(self, instance_id: str, entity: str, key: Key, value: str) -> Link | None:
        row = await self.db.fetchrow(
            f"SELECT * FROM links WHERE instance_id = %s AND entity = %s AND {key} = %s",
            (instance_id, entity, value),
        )
        return None if row is None else Link.from_row(row)

    async def claim_for_create(
        self, instance_id: str, entity: str, bss_id: str, message_id: str,
        stale_after: float | timedelta,
    ) -> Claim:
        """Claim BSS record ``bss_id`` for message ``message_id`` (push side).

        ``owned`` is true when the row was free, already ours (a redelivery), or
        held by a claim older than ``stale_after`` seconds; false when another
        delivery holds it (the caller raises ``RecordBusy`` and retries later).
        """
        return await self._claim_one("bss_id", instance_id, entity, bss_id, message_id,
                                     stale_after)

    async def pulls_creating(self, instance_id: str, entity: str,
                             stale_after: float | timedelta) -> bool:
        """Whether a pull is creating a BSS ``entity`` record for the instance right now:
        a claim by external id without a BSS id yet, younger than ``stale_after``
        (``links_pull_creates_idx`` holds only such rows)."""
        return bool(await self.db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM links WHERE instance_id = %s AND entity = %s"
            " AND state = 'creating' AND bss_id IS NULL AND claim IS NOT NULL"
            " AND claimed_at > now() - %s)",
            (instance_id, entity, _seconds(stale_after))))

    async def _claim_one(self, key: Key, instance_id: str, entity: str, value: str,
                         message_id: str, stale_after: float | timedelta) -> Claim:
        if self.batched:
            return await self._claims.submit(_ClaimRequest(
                key, instance_id, entity, value, message_id, _seconds(stale_after)))
        return await self._claim(key, instance_id, entity, value, message_id, stale_after)

    async def _claim_batch(self, requests: list[_ClaimRequest]) -> list[Claim | BaseException]:
        """Claims of many records: one statement per round of distinct records (and per
        key and staleness, in practice one), then one read of the links claimed by
        others."""
        results: list[Claim | BaseException | None] = [None] * len(requests)
        for indexes in distinct_rounds(requests, lambda r: (r.key, r.row, r.stale)):
            groups: dict[tuple[Key, timedelta], list[int]] = {}
            for index in indexes:
                groups.setdefault((requests[index].key, requests[index].stale),
                                  []).append(index)
            for (key, stale), group in groups.items():
                batch = [requests[i] for i in group]
                rows = await self.db.fetch(_batch_claim_sql(key), {
                    "instance_ids": [r.instance_id for r in batch],
                    "entities": [r.entity for r in batch],
                    "keys": [r.value for r in batch],
                    "message_ids": [r.message_id for r in batch], "stale": stale})
                claimed = {(row["instance_id"], row["entity"], row[key]): row
                           for row in rows}
                busy = []
                for index in group:
                    row = claimed.get(requests[index].row)
                    if row is None:
                        busy.append(index)
                    else:
                        results[index] = Claim(owned=True, link=Link.from_row(row),
                                               new=bool(row["inserted"]))
                for index, claim in zip(busy, await self._busy_claims(
                        key, [requests[i] for i in busy]), strict=True):
                    results[index] = claim
        return [r if r is not None else RuntimeError("claim not served") for r in results]

    async def _busy_claims(self, key: Key, requests: list[_ClaimRequest]) -> list[Claim]:
        """Claims refused because another delivery holds the record: its link as it is."""
        if not requests:
            return []
        rows = await self.db.fetch(
            BUSY_LINKS_BY_BSS_ID if key == "bss_id" else BUSY_LINKS_BY_EXTERNAL_ID,
            ([r.instance_id for r in requests], [r.entity for r in requests],
             [r.value for r in requests]))
        current = {(row["instance_id"], row["entity"], row[key]): row for row in rows}
        claims = []
        for r in requests:
            row = current.get(r.row)
            if row is None:  # deleted between the two statements: claim it on its own
                claims.append(await self._claim(key, r.instance_id, r.entity, r.value,
                                                r.message_id, r.stale))
            else:
                claims.append(Claim(owned=False, link=Link.from_row(row), new=False))
        return claims

    async def claim_external_for_create(
        self, instance_id: str, entity: str, external_id: str, message_id: str,
        stale_after: float | timedelta,
    ) -> Claim:
        """Same as :meth:`claim_for_create`, keyed by the external id (pull side)."""
        return await self._claim_one("external_id", instance_id, entity, external_id,
                                     message_id, stale_after)

    async def _claim(self, key: Key, instance_id: str, entity: str, value: str,
                     message_id: str, stale_after: float | timedelta) -> Claim:
        params = {"instance_id": instance_id, "entity": entity, "key": value,
                  "message_id": message_id, "stale": _seconds(stale_after)}
        row = await self.db.fetchrow(_claim_sql(key), params)
        if row is not None:
            return Claim(owned=True, link=Link.from_row(row), new=bool(row["inserted"]))
        current = await self._get(instance_id, entity, key, value)
        if current is None:  # deleted between the two statements: try once more
            return await self._claim(key, instance_id, entity, value, message_id, stale_after)
        return Claim(owned=False, link=current, new=False)

    async def release_claim(
        self, instance_id: str, entity: str, message_id: str, *,
        bss_id: str | None = None, external_id: str | None = None, error: str | None = None,
    ) -> bool:
        """Give back a claim held by ``message_id``, recording ``error`` (already redacted).

        Returns whether a claim of ``message_id`` was released.
        """
        key, value = _key(bss_id, external_id)
        count = await self.db.execute(
            f"UPDATE links SET claim = NULL, claimed_at = NULL, last_error = %s, updated_at = now()"
            f" WHERE instance_id = %s AND entity = %s AND {key} = %s AND claim = %s",
            (error, instance_id, entity, value, message_id),
        )
        return count > 0

    async def forget_claim(self, claim: Claim, message_id: str) -> None:
        """Undo a claim that led to nothing: a row it created is removed (no link is left
        behind for a record that was only looked at); an existing row is released."""
        if claim.new:
            await self.db.execute(
                "DELETE FROM links WHERE id = %s AND claim = %s AND state = 'creating'"
                " AND (external_id IS NULL OR bss_id IS NULL)", (claim.link.id, message_id))
        else:
            await self.db.execute(
                "UPDATE links SET claim = NULL, claimed_at = NULL, updated_at = now()"
                " WHERE id = %s AND claim = %s", (claim.link.id, message_id))

    async def note_create_sent(self, instance_id: str, entity: str, bss_id: str,
                               message_id: str, sent: dict[str, Any]) -> bool:
        """Record, durably, that a create of BSS record ``bss_id`` is about to be sent, and
        ``sent`` (what it sends; JSON-able, stored as JSON text with every non-ASCII
        character escaped). Returns false, writing nothing, when ``message_id`` no longer
        holds the record's claim (another delivery took it over: do not send). A row that
        is gone (the claim made it) is made again, claimed by ``message_id``."""
        request = _CreateSentRequest(instance_id, entity, bss_id, message_id,
                                     json.dumps(sent, separators=(",", ":"), default=str))
        if self.batched:
            return await self._create_sent.submit(request)
        [written] = await self._create_sent_batch([request])
        if isinstance(written, BaseException):
            raise written
        return written

    async def _create_sent_batch(
            self, requests: list[_CreateSentRequest]) -> list[bool | BaseException]:
        """One statement per round of distinct records (in practice one) for many pending
        creates, committed synchronously: the request goes out only once the row is on
        disk. On a synchronous pool (``durable``) that is the statement alone, one round
        trip; on an asynchronous one, a transaction that turns synchronous commit on."""
        results: list[bool | BaseException] = [False] * len(requests)
        for indexes in distinct_rounds(requests, lambda r: r.row):
            batch = [requests[i] for i in indexes]
            params = {"instance_ids": [r.instance_id for r in batch],
                      "entities": [r.entity for r in batch],
                      "bss_ids": [r.bss_id for r in batch],
                      "message_ids": [r.message_id for r in batch],
                      "sent": [r.sent for r in batch]}
            if self.durable.synchronous_commit:
                rows = await self.durable.fetch(_CREATE_SENT_SQL, params)
            else:
                async with self.durable.transaction() as conn:
                    await conn.execute("SET LOCAL synchronous_commit = on")
                    rows = await (await conn.execute(_CREATE_SENT_SQL, params)).fetchall()
            if any(row["sync"] != "on" for row in rows):  # a wiring error, not a state
                raise RuntimeError("a pending create was noted without a synchronous commit")
            written = {(row["instance_id"], row["entity"], row["bss_id"]) for row in rows}
            for index in indexes:
                results[index] = requests[index].row in written
        return results

    async def clear_create_sent(self, instance_id: str, entity: str, bss_id: str,
                                message_id: str) -> bool:
        """Forget the pending create of ``bss_id`` (it made no remote record: refused, or
        looked for and not found), if ``message_id`` holds the claim; whether it did."""
        count = await self.db.execute(
            "UPDATE links SET create_sent_at = NULL, create_sent = NULL, updated_at = now()"
            " WHERE instance_id = %s AND entity = %s AND bss_id = %s AND claim = %s",
            (instance_id, entity, bss_id, message_id))
        return count > 0

    async def note_steps_done(self, instance_id: str, entity: str, bss_id: str,
                              message_id: str, *, external_id: str,
                              done: dict[str, Any]) -> bool:
        """Record, durably (synchronous commit), that a create's steps have made the
        remote record ``external_id``: the link is linked to it and keeps ``done`` (step
        name → what it captured; JSON-able) until the push that finishes the steps links
        the record again, or it is deleted. The claim stays: the push goes on. Returns
        false, writing nothing, when ``message_id`` no longer holds the record's claim.
        Raises :class:`LinkConflict` when ``external_id`` is linked to another record."""
        params = {"instance_id": instance_id, "entity": entity, "bss_id": bss_id,
                  "message_id": message_id, "external_id": external_id,
                  "done": json.dumps(done, separators=(",", ":"), default=str)}
        try:
            if self.durable.synchronous_commit:
                count = await self.durable.execute(_STEPS_DONE_SQL, params)
            else:
                async with self.durable.transaction() as conn:
                    await conn.execute("SET LOCAL synchronous_commit = on")
                    count = (await conn.execute(_STEPS_DONE_SQL, params)).rowcount
        except psycopg.errors.UniqueViolation as exc:
            raise LinkConflict(
                f"cannot link {entity} {bss_id} to external id {external_id} in instance "
                f"{instance_id}: one of them is already linked to another record"
            ) from exc
        return count > 0

    async def record_error(
        self, instance_id: str, entity: str, error: str, *,
        bss_id: str | None = None, external_id: str | None = None,
    ) -> bool:
        """Remember that the last sync of this record failed (``error`` already redacted)."""
        key, value = _key(bss_id, external_id)
        count = await self.db.execute(
            f"UPDATE links SET last_error = %s, updated_at = now()"
            f" WHERE instance_id = %s AND entity = %s AND {key} = %s",
            (error, instance_id, entity, value),
        )
        return count > 0

    async def mark_linked(
        self, instance_id: str, entity: str, *, bss_id: str, external_id: str,
        direction: Literal["push", "pull"], push_hash: str | None = None,
        pull_hash: str | None = None, pushed: PushMark | None = None,
    ) -> Link:
        """Store the pair, the hash of what was synced, clear claim and error; return the link.

        The row is found by ``bss_id`` for a push and by ``external_id`` for a
        pull (created if missing). A hash left ``None`` keeps its stored value;
        ``pushed`` replaces the push mark, ``None`` keeps it.
        Raises :class:`LinkConflict` when the other id is linked to another record.
        """
        if self.batched:
            return await self._linked.submit(_LinkedRequest(
                direction, instance_id, entity, bss_id, external_id, push_hash, pull_hash,
                pushed))
        return await self._mark_linked(instance_id, entity, bss_id=bss_id,
                                       external_id=external_id, direction=direction,
                                       push_hash=push_hash, pull_hash=pull_hash, pushed=pushed)

    async def _linked_batch(self, requests: list[_LinkedRequest]) -> list[Link | BaseException]:
        """Link writes of many records, one statement per direction and round of distinct
        records; a batch PostgreSQL refuses for a uniqueness conflict is written row by
        row, so only the culprit fails."""
        results: list[Link | BaseException | None] = [None] * len(requests)
        for indexes in distinct_rounds(requests, lambda r: (r.direction, r.row)):
            by_direction: dict[Literal["push", "pull"], list[int]] = {}
            for index in indexes:
                by_direction.setdefault(requests[index].direction, []).append(index)
            for direction, group in by_direction.items():
                await self._linked_round(direction, [requests[i] for i in group], group,
                                         results)
        return [r if r is not None else RuntimeError("link not served") for r in results]

    async def _linked_round(self, direction: Literal["push", "pull"],
                            batch: list[_LinkedRequest], indexes: list[int],
                            results: list[Link | BaseException | None]) -> None:
        key = "bss_id" if direction == "push" else "external_id"
        try:
            rows = await self.db.fetch(_batch_linked_sql(direction), {
                "instance_ids": [r.instance_id for r in batch],
                "entities": [r.entity for r in batch],
                "bss_ids": [r.bss_id for r in batch],
                "external_ids": [r.external_id for r in batch],
                "push_hashes": [r.push_hash for r in batch],
                "pull_hashes": [r.pull_hash for r in batch],
                "pushed_by": [r.pushed and r.pushed.message_id for r in batch],
                "pushed_attempts": [r.pushed and r.pushed.attempt for r in batch],
                "pushed_outcomes": [r.pushed and r.pushed.outcome for r in batch]})
        except psycopg.errors.UniqueViolation:
            for index, r in zip(indexes, batch, strict=True):
                try:
                    results[index] = await self._mark_linked(
                        r.instance_id, r.entity, bss_id=r.bss_id, external_id=r.external_id,
                        direction=direction, push_hash=r.push_hash, pull_hash=r.pull_hash,
                        pushed=r.pushed)
                except LinkConflict as exc:
                    results[index] = exc
            return
        stored = {(row["instance_id"], row["entity"], row[key]): row for row in rows}
        for index, r in zip(indexes, batch, strict=True):
            row = stored.get(r.row)
            results[index] = (Link.from_row(row) if row is not None else RuntimeError(
                f"link of {r.entity} {r.row[2]} not stored"))

    async def _mark_linked(
        self, instance_id: str, entity: str, *, bss_id: str, external_id: str,
        direction: Literal["push", "pull"], push_hash: str | None, pull_hash: str | None,
        pushed: PushMark | None = None,
    ) -> Link:
        key = "bss_id" if direction == "push" else "external_id"
        other = "external_id" if direction == "push" else "bss_id"
        stamp = "last_pushed_at" if direction == "push" else "last_pulled_at"
        sql = f"""
INSERT INTO links AS l (instance_id, entity, bss_id, external_id, state, push_hash, pull_hash,
                        {stamp}, pushed_by, pushed_attempt, pushed_outcome)
VALUES (%(instance_id)s, %(entity)s, %(bss_id)s, %(external_id)s, 'linked', %(push_hash)s,
        %(pull_hash)s, now(), %(pushed_by)s, %(pushed_attempt)s, %(pushed_outcome)s)
ON CONFLICT (instance_id, entity, {key}) DO UPDATE
   SET {other} = EXCLUDED.{other}, state = 'linked', claim = NULL, claimed_at = NULL,
       last_error = NULL, push_hash = coalesce(EXCLUDED.push_hash, l.push_hash),
       pull_hash = coalesce(EXCLUDED.pull_hash, l.pull_hash), {stamp} = now(),
       updated_at = now(), {_NO_CREATE_SENT}{_NO_PUSH_STEPS[direction]}, {_KEEP_OR_MARK}
RETURNING l.*"""
        params = {"instance_id": instance_id, "entity": entity, "bss_id": bss_id,
                  "external_id": external_id, "push_hash": push_hash, "pull_hash": pull_hash,
                  **_mark_params(pushed)}
        try:
            row = await self.db.fetchrow(sql, params)
        except psycopg.errors.UniqueViolation as exc:
            raise LinkConflict(
                f"cannot link {entity} {bss_id} to external id {external_id} in instance "
                f"{instance_id}: one of them is already linked to another record"
            ) from exc
        assert row is not None
        return Link.from_row(row)

    async def mark_deleted(
        self, instance_id: str, entity: str, *, direction: Literal["push", "pull"],
        bss_id: str | None = None, external_id: str | None = None,
        pushed: PushMark | None = None,
    ) -> bool:
        """Record that the record was deleted on the other side; clear claim, hashes, error.
        ``pushed`` replaces the push mark, ``None`` keeps it."""
        key, value = _key(bss_id, external_id)
        stamp = "last_pushed_at" if direction == "push" else "last_pulled_at"
        mark = _mark_params(pushed)
        count = await self.db.execute(
            f"UPDATE links SET state = 'deleted', claim = NULL, claimed_at = NULL,"
            f" push_hash = NULL, pull_hash = NULL, last_error = NULL, {stamp} = now(),"
            f" updated_at = now(), {_NO_CREATE_SENT}{_NO_PUSH_STEPS[direction]},"
            f" pushed_by = coalesce(%s, pushed_by),"
            f" pushed_attempt = CASE WHEN %s::text IS NULL THEN pushed_attempt ELSE %s END,"
            f" pushed_outcome = CASE WHEN %s::text IS NULL THEN pushed_outcome ELSE %s END"
            f" WHERE instance_id = %s AND entity = %s AND {key} = %s",
            (mark["pushed_by"], mark["pushed_by"], mark["pushed_attempt"], mark["pushed_by"],
             mark["pushed_outcome"], instance_id, entity, value),
        )
        return count > 0

    async def external_ids(
        self, instance_id: str, entity: str, bss_ids: Iterable[str]
    ) -> dict[str, str]:
        """``{bss_id: external_id}`` for those of ``bss_ids`` that are linked."""
        rows = await self.db.fetch(LINKED_BY_BSS_ID,
                                   (list(bss_ids), instance_id, entity))
        return {row["bss_id"]: row["external_id"] for row in rows}

    async def linked(
        self, instance_id: str, entity: str, bss_ids: Iterable[str]
    ) -> dict[str, Link]:
        """``{bss_id: link}`` for those of ``bss_ids`` that are linked."""
        rows = await self.db.fetch(LINKED_BY_BSS_ID,
                                   (list(bss_ids), instance_id, entity))
        return {row["bss_id"]: Link.from_row(row) for row in rows}

    async def bss_ids(
        self, instance_id: str, entity: str, external_ids: Iterable[str]
    ) -> dict[str, str]:
        """``{external_id: bss_id}`` for those of ``external_ids`` that are linked."""
        rows = await self.db.fetch(LINKED_BY_EXTERNAL_ID,
                                   (list(external_ids), instance_id, entity))
        return {row["external_id"]: row["bss_id"] for row in rows}

    async def failed(
        self, instance_id: str, entity: str | None = None, limit: int = 10_000
    ) -> list[Link]:
        """Links whose last sync failed (for the push phase of a run), oldest change first."""
        sql = "SELECT * FROM links WHERE instance_id = %s AND last_error IS NOT NULL"
        params: list[Any] = [instance_id]
        if entity is not None:
            sql += " AND entity = %s"
            params.append(entity)
        rows = await self.db.fetch(sql + " ORDER BY updated_at LIMIT %s", [*params, limit])
        return [Link.from_row(row) for row in rows]


def _key(bss_id: str | None, external_id: str | None) -> tuple[Key, str]:
    if (bss_id is None) == (external_id is None):
        raise ValueError("give exactly one of bss_id and external_id")
    return ("bss_id", bss_id) if bss_id is not None else ("external_id", external_id)  # type: ignore[return-value]


def distinct_rounds(items: list[T], key: Callable[[T], object]) -> list[list[int]]:
    """Indexes of ``items`` split into rounds without a repeated key (first come first):
    one statement cannot upsert the same row twice."""
    rounds: list[list[int]] = []
    seen: list[set[object]] = []
    for index, item in enumerate(items):
        k = key(item)
        for number, keys in enumerate(seen):
            if k not in keys:
                keys.add(k)
                rounds[number].append(index)
                break
        else:
            seen.append({k})
            rounds.append([index])
    return rounds
