"""Records of the sandbox BSS in PostgreSQL, each write with its event in the outbox.

Every write changes the record *and* inserts its entity-changed event into
``outbox`` atomically — a create in one statement, the other writes in one
transaction (the transactional outbox: an event exists if and only if the change
committed). ``updated_at`` comes from
``clock_timestamp()``, so listing by (``updated_at``, ``id``) is stable. The stored
JSON already carries the system fields, so reads hand PostgreSQL's text to the
client as it is: one pooled query, no decoding.

Errors: :class:`RecordNotFound`, :class:`PreconditionFailed`, :class:`InvalidRecord`,
and :class:`~shared.errors.InfrastructureError` when PostgreSQL fails.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from sandbox.events import EventKind, entity_event, routing_key
from sandbox.records import (
    changed_fields,
    encode_cursor,
    etag,
    if_match_allows,
    merge_patch,
    new_id,
    writable_fields,
)
from sandbox.statistics import RecordStatistics
from sandbox.validation import FieldProblem, record_problems
from shared.batching import Coalescer
from shared.storage.db import Connection, Database

_RFC3339 = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

# Reads by id name the primary key's columns and nothing else the partial index
# ``records_changed`` (… WHERE deleted_at IS NULL) could match: a deleted record is
# told apart in Python. With ``deleted_at IS NULL`` in the WHERE, a planner without
# statistics (autovacuum has not analyzed a freshly loaded table) picks that index
# and walks every record of the collection to find one id — a read's cost grew with
# the table (seen: 1.7 ms of PostgreSQL CPU a pulled update at 10,000 records).
_GET = ("SELECT data::text, version, deleted_at IS NULL FROM records"
        " WHERE org_id = %s AND entity = %s AND id = %s")
_LIST = ("SELECT data::text, updated_at, id FROM records"
         " WHERE org_id = %s AND entity = %s AND deleted_at IS NULL"
         " AND updated_at >= %s AND (updated_at, id) > (%s, %s)"
         " ORDER BY updated_at, id LIMIT %s")
# The listing by ids looks each id up by the primary key, one lookup per id: the
# LATERAL subquery (kept apart by OFFSET 0, so it is not flattened into a join) can
# only be an index scan on the whole key. As ``id = ANY(ids)`` with ORDER BY
# updated_at, a planner without statistics walked ``records_changed`` or the key's
# (org_id, entity) prefix over every record of the collection and filtered the ids
# (seen: 39,936 rows removed a batch at 40,000 accounts, 100-128 ms each).
_LIST_IDS = ("SELECT r.data::text, r.deleted_at IS NULL FROM unnest(%s::text[]) AS wanted(id)"
             " CROSS JOIN LATERAL (SELECT data, deleted_at, updated_at, id FROM records"
             " WHERE org_id = %s AND entity = %s AND id = wanted.id OFFSET 0) AS r"
             " WHERE r.updated_at >= %s ORDER BY r.updated_at, r.id")
_LOCK = ("SELECT data, version, deleted_at IS NULL FROM records"
         " WHERE org_id = %s AND entity = %s AND id = %s FOR UPDATE")
_UPDATE = (
    "UPDATE records SET version = version + 1, updated_at = t.ts,"
    " data = %(data)s::jsonb || jsonb_build_object('id', id, 'organizationId', org_id,"
    f" 'createdAt', data->'createdAt', 'updatedAt', {_RFC3339.format('t.ts')})"
    " FROM (SELECT clock_timestamp() AS ts) AS t"
    " WHERE org_id = %(org)s AND entity = %(entity)s AND id = %(id)s"
    " RETURNING data::text, version")
_DELETE = (
    "UPDATE records SET version = version + 1, deleted_at = t.ts, updated_at = t.ts"
    " FROM (SELECT clock_timestamp() AS ts) AS t"
    " WHERE org_id = %s AND entity = %s AND id = %s"
    f" RETURNING {_RFC3339.format('t.ts')}")
_OUTBOX = "INSERT INTO outbox (routing_key, body) VALUES (%s, %s::jsonb)"
# Creates are one statement for every create in flight (group commit, as bss-sync's
# own link and audit writes are): for each, the stored JSON computed once, the
# idempotency key claimed with the answer it keeps, the record inserted only when it
# has no key or its key was free, and its ``created`` event (as
# :func:`sandbox.events.entity_event` builds it) put in the outbox — atomic, each
# create with its event. One create alone was six round trips (BEGIN, claim, insert,
# event, answer, COMMIT), and on this kind of machine a round trip costs more in
# waking processes than the work; the pull benchmark was bound by the sandbox's
# writes. A key already taken makes nothing: its earlier answer is read
# (``_READ_KEY``); a concurrent create with the same key waits on the key's row until
# the first commits, then finds it taken. Keys are claimed in key order, so two
# statements never wait on each other's keys.
_CREATE = (
    "WITH d AS MATERIALIZED (SELECT t.n, t.org, t.entity, t.id, t.key, t.rk, t.eid, t.origin,"
    " t.ts, t.data::jsonb || jsonb_build_object('id', t.id, 'organizationId', t.org,"
    f" 'createdAt', {_RFC3339.format('t.ts')}, 'updatedAt', {_RFC3339.format('t.ts')}) AS data"
    " FROM (SELECT u.*, clock_timestamp() AS ts FROM unnest(%(orgs)s::text[],"
    " %(entities)s::text[], %(ids)s::text[], %(datas)s::text[], %(keys)s::text[],"
    " %(routing_keys)s::text[], %(event_ids)s::text[], %(origins)s::text[])"
    " WITH ORDINALITY AS u(org, entity, id, data, key, rk, eid, origin, n)) AS t),"
    " k AS (INSERT INTO idempotency_keys (org_id, entity, key, record_id, response, version)"
    " SELECT org, entity, key, id, data, 1 FROM d WHERE key IS NOT NULL"
    " ORDER BY org, entity, key ON CONFLICT DO NOTHING RETURNING record_id),"
    " r AS (INSERT INTO records (org_id, entity, id, version, created_at, updated_at, data)"
    " SELECT org, entity, id, 1, ts, ts, data FROM d"
    " WHERE key IS NULL OR id IN (SELECT record_id FROM k) RETURNING id),"
    " e AS (INSERT INTO outbox (routing_key, body) SELECT d.rk, jsonb_build_object("
    "'id', d.eid, 'entity', d.entity, 'event', 'created', 'organizationId', d.org,"
    " 'recordId', d.id, 'occurredAt', d.data->'updatedAt', 'origin', d.origin, 'data', d.data)"
    " FROM d JOIN r ON r.id = d.id ORDER BY d.n)"
    " SELECT d.data::text, r.id IS NOT NULL FROM d LEFT JOIN r ON r.id = d.id ORDER BY d.n")
# Merge patches in flight are two statements for all of them (group commit): their
# records read, and — each merged and checked in Python — one UPDATE of those still at
# the version read, with their ``updated`` events. A record changed in between is not
# updated: that patch is refused (412) when it carried If-Match, else merged again on
# what the record has become. Five round trips a patch before (BEGIN, SELECT … FOR
# UPDATE, UPDATE, event, COMMIT).
_READ_MANY = (
    "SELECT r.n, r.data::text, r.version, r.deleted_at IS NULL FROM unnest(%s::text[],"
    " %s::text[], %s::text[]) WITH ORDINALITY AS w(org, entity, id, n)"
    " CROSS JOIN LATERAL (SELECT w.n, data, version, deleted_at FROM records"
    " WHERE org_id = w.org AND entity = w.entity AND id = w.id OFFSET 0) AS r")
_PATCH = (
    "WITH r AS (UPDATE records AS rec SET version = rec.version + 1, updated_at = u.ts,"
    " data = u.data::jsonb || jsonb_build_object('id', rec.id, 'organizationId', rec.org_id,"
    f" 'createdAt', rec.data->'createdAt', 'updatedAt', {_RFC3339.format('u.ts')})"
    " FROM (SELECT w.*, clock_timestamp() AS ts FROM unnest(%(orgs)s::text[],"
    " %(entities)s::text[], %(ids)s::text[], %(datas)s::text[], %(versions)s::int[],"
    " %(changed)s::text[], %(event_ids)s::text[], %(origins)s::text[])"
    " WITH ORDINALITY AS w(org, entity, id, data, version, changed, eid, origin, n)"
    " ORDER BY w.org, w.entity, w.id) AS u"
    " WHERE rec.org_id = u.org AND rec.entity = u.entity AND rec.id = u.id"
    " AND rec.version = u.version AND rec.deleted_at IS NULL"
    " RETURNING u.n, rec.data, rec.version, u.org, u.entity, u.id, u.changed, u.eid, u.origin),"
    " e AS (INSERT INTO outbox (routing_key, body) SELECT r.entity || '.updated',"
    " jsonb_build_object('id', r.eid, 'entity', r.entity, 'event', 'updated',"
    " 'organizationId', r.org, 'recordId', r.id, 'occurredAt', r.data->'updatedAt',"
    " 'origin', r.origin, 'data', r.data, 'changedFields', r.changed::jsonb)"
    " FROM r ORDER BY r.n)"
    " SELECT n, data::text, version FROM r")
_READ_KEY = ("SELECT record_id, response::text, version FROM idempotency_keys"
             " WHERE org_id = %s AND entity = %s AND key = %s")
_BEGINNING = datetime.fromisoformat("0001-01-01T00:00:00+00:00")


class RecordNotFound(Exception):
    """No such record (never created, or deleted)."""


class PreconditionFailed(Exception):
    """``If-Match`` does not match the record's current ETag."""

    def __init__(self, current_etag: str) -> None:
        super().__init__(f"the record's current ETag is {current_etag}")
        self.current_etag = current_etag


class InvalidRecord(Exception):
    """The record breaks its entity's schema; ``problems`` says everywhere how."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__(f"{len(problems)} problem(s) with the record")
        self.problems = problems


@dataclasses.dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored: its JSON text and version."""

    id: str
    text: str
    version: int

    @property
    def etag(self) -> str:
        return etag(self.version)

    def data(self) -> dict[str, Any]:
        return json.loads(self.text)


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: the records' JSON texts and the next page's cursor."""

    items: list[str]
    next_cursor: str | None

    def to_json(self) -> str:
        """The ``RecordPage`` body, assembled without re-encoding the records."""
        return ('{"items":[' + ",".join(self.items) + '],"nextCursor":'
                + json.dumps(self.next_cursor) + "}")


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    """Who writes what: the target collection and the write's ``X-Sync-Origin``."""

    org_id: str
    entity: str
    origin: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Create:
    """One create waiting for its statement: the new record's id and JSON, its key."""

    write: Write
    record_id: str
    data: str
    key: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Patch:
    """One merge patch waiting for its statements."""

    write: Write
    record_id: str
    fields: dict[str, Any]
    if_match: str | None


#: Creates (patches) in one statement at most.
MAX_CREATES = 100
#: Times a patch without If-Match is merged again on a record that keeps changing.
MAX_PATCH_ROUNDS = 5


class RecordStore:
    """The records of every organization and entity in one sandbox schema.

    Each committed write is counted by ``statistics``, which analyzes the table after
    a burst of them (:mod:`sandbox.statistics`).
    """

    def __init__(self, db: Database, statistics: RecordStatistics | None = None) -> None:
        self.db = db
        self.statistics = statistics if statistics is not None else RecordStatistics(db)
        self._creates: Coalescer[_Create, StoredRecord] = Coalescer(
            self._create_batch, max_batch=MAX_CREATES)
        self._patches: Coalescer[_Patch, StoredRecord] = Coalescer(
            self._patch_batch, max_batch=MAX_CREATES)

    # ------------------------------------------------------------------ reads

    async def get(self, org_id: str, entity: str, record_id: str) -> StoredRecord:
        """The live record. Raises :class:`RecordNotFound`."""
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_GET, (org_id, entity, record_id))
            row = await cur.fetchone()
        if row is None or not row[2]:
            raise RecordNotFound(record_id)
        return StoredRecord(record_id, row[0], row[1])

    async def list_changed(self, org_id: str, entity: str, *, since: datetime | None = None,
                           after: tuple[datetime, str] | None = None, limit: int = 100) -> Page:
        """Live records with ``updatedAt >= since``, after the cursor position ``after``,
        ordered by (``updatedAt``, ``id``); at most ``limit``."""
        since = since or _BEGINNING
        position = after or (_BEGINNING, "")
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_LIST, (org_id, entity, since, *position, limit + 1))
            rows = await cur.fetchall()
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1][1], rows[-1][2])
        return Page([row[0] for row in rows], next_cursor)

    async def list_ids(self, org_id: str, entity: str, ids: list[str], *,
                       since: datetime | None = None) -> Page:
        """The live records among ``ids`` (changed at or after ``since``), each once: one
        page."""
        wanted = list(dict.fromkeys(ids))  # one lookup per id: a repeated id, one row
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_LIST_IDS, (wanted, org_id, entity, since or _BEGINNING))
            rows = await cur.fetchall()
        return Page([row[0] for row in rows if row[1]], None)

    async def sample(self, org_id: str, entity: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` live records of a collection, most recent first (for the seeder)."""
        rows = await self.db.fetch(
            "SELECT data FROM records WHERE org_id = %s AND entity = %s AND deleted_at IS NULL"
            " ORDER BY updated_at DESC LIMIT %s", (org_id, entity, limit))
        return [row["data"] for row in rows]

    async def account_codes(self, org_id: str) -> set[str]:
        """The codes of the organization's accounts, deleted ones included (for the seeder:
        a code is never reused in an organization)."""
        rows = await self.db.fetch(
            "SELECT DISTINCT data->>'code' AS code FROM records"
            " WHERE org_id = %s AND entity = 'account' AND data->>'code' IS NOT NULL",
            (org_id,))
        return {row["code"] for row in rows}

    # ------------------------------------------------------------------ writes

    async def create(self, write: Write, body: Mapping[str, Any], *,
                     idempotency_key: str | None = None) -> StoredRecord:
        """Store a new record; its ``created`` event goes to the outbox.

        With ``idempotency_key``, a create already made with that key (same
        organization and entity) answers the record it stored then, creating
        nothing. Raises :class:`InvalidRecord`.
        """
        fields = _valid(write.entity, writable_fields(body))
        stored = await self._creates.submit(_Create(write, new_id(write.entity),
                                                    _encode(fields), idempotency_key))
        return stored

    async def replace(self, write: Write, record_id: str, body: Mapping[str, Any], *,
                      if_match: str | None = None) -> StoredRecord:
        """Replace a record's writable fields by ``body`` (full replace).

        Raises :class:`RecordNotFound`, :class:`PreconditionFailed`, :class:`InvalidRecord`
        (also when ``body`` carries another record's ``id``).
        """
        if body.get("id") not in (None, record_id):
            raise InvalidRecord([FieldProblem("/id", "must be the id in the path, or absent")])
        fields = _valid(write.entity, writable_fields(body))
        async with self.db.transaction() as conn:
            current, _version = await _lock(conn, write, record_id, if_match)
            stored = await _update(conn, write, record_id, current, fields)
        self.statistics.wrote()
        return stored

    async def patch(self, write: Write, record_id: str, patch: Mapping[str, Any], *,
                    if_match: str | None = None) -> StoredRecord:
        """Apply a JSON Merge Patch; the merged record must be valid.

        Raises :class:`RecordNotFound`, :class:`PreconditionFailed`, :class:`InvalidRecord`.
        """
        if patch.get("id") not in (None, record_id):
            raise InvalidRecord([FieldProblem("/id", "must be the id in the path, or absent")])
        return await self._patches.submit(_Patch(write, record_id, writable_fields(patch),
                                                 if_match))

    async def delete(self, write: Write, record_id: str, *, if_match: str | None = None) -> None:
        """Soft-delete a record; its ``deleted`` event carries the last snapshot.

        Raises :class:`RecordNotFound`, :class:`PreconditionFailed`.
        """
        async with self.db.transaction() as conn:
            current, _version = await _lock(conn, write, record_id, if_match)
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_DELETE, (write.org_id, write.entity, record_id))
            row = await cur.fetchone()
            assert row is not None  # locked above
            await _emit(conn, write, "deleted", record_id, current, occurred_at=row[0])
        self.statistics.wrote()


    async def _create_batch(self, creates: list[_Create]
                            ) -> list[StoredRecord | BaseException]:
        """The creates in flight, in one statement (``_CREATE``). A value PostgreSQL
        refuses fails the statement: each create is then made alone, so that only its
        own create fails."""
        try:
            return await self._create_rows(creates)
        except psycopg.DataError as exc:
            if len(creates) == 1:
                return [_unstorable(exc)]
        results: list[StoredRecord | BaseException] = []
        for create in creates:
            try:
                results += await self._create_rows([create])
            except psycopg.DataError as exc:
                results.append(_unstorable(exc))
        return results

    async def _create_rows(self, creates: list[_Create]) -> list[StoredRecord | BaseException]:
        params = {
            "orgs": [c.write.org_id for c in creates],
            "entities": [c.write.entity for c in creates],
            "ids": [c.record_id for c in creates], "datas": [c.data for c in creates],
            "keys": [c.key for c in creates],
            "routing_keys": [routing_key(c.write.entity, "created") for c in creates],
            "event_ids": [str(uuid.uuid4()) for _ in creates],
            "origins": [c.write.origin for c in creates]}
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_CREATE, params)
            rows = await cur.fetchall()
            results: list[StoredRecord | BaseException] = []
            for create, (text, made) in zip(creates, rows, strict=True):
                if made:
                    self.statistics.wrote()
                    results.append(StoredRecord(create.record_id, text, 1))
                    continue
                # the key was taken: the answer of the create that took it
                await cur.execute(_READ_KEY, (create.write.org_id, create.write.entity,
                                              create.key))
                row = await cur.fetchone()
                assert row is not None and row[1] is not None
                results.append(StoredRecord(row[0], row[1], row[2]))
        return results


    async def _patch_batch(self, patches: list[_Patch]) -> list[StoredRecord | BaseException]:
        """The patches in flight: read, merge, update those still at the version read
        (``_PATCH``). A patch whose record changed meanwhile is read and merged again
        (its If-Match checked against what the record has become); after
        ``MAX_PATCH_ROUNDS`` it waits for the record's lock like any other write."""
        results: list[StoredRecord | BaseException | None] = [None] * len(patches)
        waiting = list(range(len(patches)))
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            for _round in range(MAX_PATCH_ROUNDS):
                if not waiting:
                    break
                sent = await self._merged(cur, patches, waiting, results)
                updated = await self._update_all(cur, patches, sent, results)
                waiting = [index for index, *_ in sent
                           if index not in updated and results[index] is None]
                for _ in updated:
                    self.statistics.wrote()
        for index in waiting:  # kept changing: under the record's lock
            try:
                results[index] = await self._patch_locked(patches[index])
            except (RecordNotFound, PreconditionFailed, InvalidRecord) as exc:
                results[index] = exc
        return [r if r is not None else RuntimeError("patch not served") for r in results]

    async def _merged(self, cur: Any, patches: list[_Patch], waiting: list[int],
                      results: list[StoredRecord | BaseException | None],
                      ) -> list[tuple[int, str, int, str]]:
        """Read the records of the ``waiting`` patches and merge each: (index, merged
        JSON, version read, changed fields as JSON) of those that can be written; the
        others get their error in ``results``."""
        await cur.execute(_READ_MANY, ([patches[i].write.org_id for i in waiting],
                                       [patches[i].write.entity for i in waiting],
                                       [patches[i].record_id for i in waiting]))
        found = {n: (text, version, live) for n, text, version, live in await cur.fetchall()}
        sent = []
        for position, index in enumerate(waiting, start=1):
            patch = patches[index]
            read = found.get(position)
            try:
                if read is None or not read[2]:
                    raise RecordNotFound(patch.record_id)
                if not if_match_allows(patch.if_match, read[1]):
                    raise PreconditionFailed(etag(read[1]))
                current = json.loads(read[0])
                fields = _valid(patch.write.entity,
                                merge_patch(writable_fields(current), patch.fields))
            except (RecordNotFound, PreconditionFailed, InvalidRecord) as exc:
                results[index] = exc
                continue
            sent.append((index, _encode(fields), read[1],
                         json.dumps(changed_fields(current, fields))))
        return sent

    async def _update_all(self, cur: Any, patches: list[_Patch],
                          sent: list[tuple[int, str, int, str]],
                          results: list[StoredRecord | BaseException | None]) -> set[int]:
        """``_PATCH`` for ``sent``; a value PostgreSQL refuses fails the statement, so
        each is then written alone and only its own patch fails. The indexes updated."""
        try:
            rows = await self._update_rows(cur, patches, sent)
        except psycopg.DataError as exc:
            if len(sent) == 1:
                results[sent[0][0]] = _unstorable(exc)
                return set()
            rows = {}
            for one in sent:
                try:
                    rows.update(await self._update_rows(cur, patches, [one]))
                except psycopg.DataError as alone:
                    results[one[0]] = _unstorable(alone)
        for index, (text, version) in rows.items():
            results[index] = StoredRecord(patches[index].record_id, text, version)
        return set(rows)

    async def _patch_locked(self, patch: _Patch) -> StoredRecord:
        """One patch under the record's lock (a transaction)."""
        write, record_id = patch.write, patch.record_id
        async with self.db.transaction() as conn:
            current, _version = await _lock(conn, write, record_id, patch.if_match)
            fields = _valid(write.entity, merge_patch(writable_fields(current), patch.fields))
            stored = await _update(conn, write, record_id, current, fields)
        self.statistics.wrote()
        return stored

    @staticmethod
    async def _update_rows(cur: Any, patches: list[_Patch],
                           sent: list[tuple[int, str, int, str]]) -> dict[int, tuple[str, int]]:
        """Run ``_PATCH`` for ``sent`` (index, merged JSON, version read, changed fields);
        the stored JSON and version of each record updated, by index."""
        await cur.execute(_PATCH, {
            "orgs": [patches[i].write.org_id for i, *_ in sent],
            "entities": [patches[i].write.entity for i, *_ in sent],
            "ids": [patches[i].record_id for i, *_ in sent],
            "datas": [data for _, data, _, _ in sent],
            "versions": [version for _, _, version, _ in sent],
            "changed": [changed for *_, changed in sent],
            "event_ids": [str(uuid.uuid4()) for _ in sent],
            "origins": [patches[i].write.origin for i, *_ in sent]})
        return {sent[n - 1][0]: (text, version) for n, text, version in await cur.fetchall()}


# ---------------------------------------------------------------------- steps of a write


def _valid(entity: str, fields: dict[str, Any]) -> dict[str, Any]:
    problems = record_problems(entity, fields)
    if problems:
        raise InvalidRecord(problems)
    return fields


async def _lock(conn: Connection, write: Write, record_id: str,
                if_match: str | None) -> tuple[dict[str, Any], int]:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(_LOCK, (write.org_id, write.entity, record_id))
    row = await cur.fetchone()
    if row is None or not row[2]:
        raise RecordNotFound(record_id)
    data, version, _live = row
    if not if_match_allows(if_match, version):
        raise PreconditionFailed(etag(version))
    return data, version


async def _write_row(conn: Connection, sql: str, write: Write, record_id: str,
                     fields: dict[str, Any]) -> StoredRecord:
    """Run the INSERT or UPDATE ``sql`` for one record; the stored record it returns."""
    cur = conn.cursor(row_factory=tuple_row)
    params = {"org": write.org_id, "entity": write.entity, "id": record_id,
              "data": _encode(fields)}
    try:
        await cur.execute(sql, params)
    except psycopg.DataError as exc:
        raise _unstorable(exc) from exc
    row = await cur.fetchone()
    assert row is not None
    return StoredRecord(record_id, row[0], row[1])


async def _update(conn: Connection, write: Write, record_id: str, current: dict[str, Any],
                  fields: dict[str, Any]) -> StoredRecord:
    stored = await _write_row(conn, _UPDATE, write, record_id, fields)
    await _emit(conn, write, "updated", record_id, stored.data(),
                changed=changed_fields(current, fields))
    return stored


async def _emit(conn: Connection, write: Write, kind: EventKind, record_id: str,
                data: dict[str, Any], *, occurred_at: str | None = None,
                changed: list[str] | None = None) -> None:
    event = entity_event(entity=write.entity, event=kind, org_id=write.org_id,
                         record_id=record_id, occurred_at=occurred_at or data["updatedAt"],
                         origin=write.origin, data=data, changed=changed)
    await conn.execute(_OUTBOX, (routing_key(write.entity, kind), json.dumps(event)))


def _unstorable(exc: psycopg.DataError) -> InvalidRecord:
    """PostgreSQL refused a value (a NUL character in a string, say)."""
    reason = (str(exc).strip().splitlines() or ["invalid value"])[0]
    return InvalidRecord([FieldProblem("", f"PostgreSQL cannot store this record: {reason}")])


def _encode(fields: dict[str, Any]) -> str:
    try:
        return json.dumps(fields, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise InvalidRecord([FieldProblem("", "numbers must be finite")]) from exc


__all__ = [
    "InvalidRecord",
    "Page",
    "PreconditionFailed",
    "RecordNotFound",
    "RecordStore",
    "StoredRecord",
    "Write",
]
