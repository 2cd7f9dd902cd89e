"""Runs: one scheduled or manual synchronization of an instance (push, then pull)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from shared.storage.db import Database

Trigger = Literal["schedule", "manual"]
STATUSES = ("running", "completed", "failed", "cancelled")
PHASES = ("push", "pull", "done")


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """One ``runs`` row."""

    id: uuid.UUID
    org_id: str
    instance_id: str
    trigger: str
    status: str
    phase: str
    scheduled_for: datetime | None
    started_at: datetime
    push_settled_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]
    error: str | None
    #: The process executing it (the token of its advisory lock), if any.
    owner: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Run:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


class RunStore:
    """Creates and follows runs. Every method raises ``InfrastructureError`` on DB failure."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, org_id: str, instance_id: str, trigger: Trigger, *,
        scheduled_for: datetime | None = None, run_id: uuid.UUID | None = None,
        owner: str | None = None,
    ) -> Run | None:
        """Start a run in phase ``push``.

        With ``scheduled_for`` (the cron slot) at most one run exists per slot
        and instance, however many dispatchers race: the losers get ``None``.
        """
        row = await self.db.fetchrow(
            "INSERT INTO runs (id, org_id, instance_id, trigger, scheduled_for, owner)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT ON CONSTRAINT runs_one_per_slot DO NOTHING RETURNING *",
            (run_id or uuid.uuid4(), org_id, instance_id, trigger, scheduled_for, owner),
        )
        return None if row is None else Run.from_row(row)

    async def last_slots(self) -> dict[str, datetime]:
        """``{instance: the slot of its latest scheduled run}`` (any status: a slot runs
        once), for the instances that had one."""
        rows = await self.db.fetch(
            "SELECT instance_id, max(scheduled_for) AS slot FROM runs"
            " WHERE trigger = 'schedule' AND scheduled_for IS NOT NULL GROUP BY instance_id")
        return {row["instance_id"]: row["slot"] for row in rows}

    async def get(self, run_id: uuid.UUID | str) -> Run | None:
        """The run, or ``None`` (also for a malformed id)."""
        try:
            run_uuid = uuid.UUID(str(run_id))
        except ValueError:
            return None
        row = await self.db.fetchrow("SELECT * FROM runs WHERE id = %s", (run_uuid,))
        return None if row is None else Run.from_row(row)

    async def update(
        self, run_id: uuid.UUID | str, *, status: str | None = None, phase: str | None = None,
        push_settled: bool = False, counts: Mapping[str, int] | None = None,
        error: str | None = None,
    ) -> Run | None:
        """Change a run; ``None`` if it does not exist.

        A status other than ``running`` stamps ``finished_at``; ``push_settled``
        stamps ``push_settled_at``; ``counts`` replaces the counters.
        """
        sets: list[str] = []
        params: list[Any] = []
        for column, value in (("status", status), ("phase", phase), ("error", error)):
            if value is not None:
                sets.append(f"{column} = %s")
                params.append(value)
        if status is not None:
            sets.append("finished_at = CASE WHEN %s = 'running' THEN NULL"
                        " ELSE coalesce(finished_at, now()) END")
            params.append(status)
        if push_settled:
            sets.append("push_settled_at = coalesce(push_settled_at, now())")
        if counts is not None:
            sets.append("counts = %s")
            params.append(Jsonb(dict(counts)))
        if not sets:
            return await self.get(run_id)
        row = await self.db.fetchrow(
            f"UPDATE runs SET {', '.join(sets)} WHERE id = %s RETURNING *",
            [*params, uuid.UUID(str(run_id))],
        )
        return None if row is None else Run.from_row(row)

    async def claim(self, run_id: uuid.UUID | str, owner: str) -> bool:
        """Make ``owner`` the process executing the run, if it is still running."""
        count = await self.db.execute(
            "UPDATE runs SET owner = %s WHERE id = %s AND status = 'running'",
            (owner, uuid.UUID(str(run_id))))
        return count > 0

    async def add_counts(self, run_id: uuid.UUID | str, deltas: Mapping[str, int]) -> None:
        """Add ``deltas`` to the run's counters atomically (concurrent callers are safe)."""
        await self.db.execute(
            "UPDATE runs SET counts = (SELECT coalesce(jsonb_object_agg(k, n), '{}') FROM ("
            " SELECT k, sum(v)::bigint AS n FROM ("
            "  SELECT key AS k, value::bigint AS v FROM jsonb_each_text(counts)"
            "  UNION ALL SELECT key, value::bigint FROM jsonb_each_text(%s::jsonb)) AS x"
            " GROUP BY k) AS y) WHERE id = %s",
            (json.dumps(dict(deltas)), uuid.UUID(str(run_id))),
        )

    async def list(self, instance_id: str | None = None, *, org_id: str | None = None,
                   since: datetime | None = None, limit: int = 50) -> list[Run]:
        """Latest runs first; of one instance, one organization, started since a time."""
        rows = await self.db.fetch(
            "SELECT * FROM runs WHERE (%(i)s::text IS NULL OR instance_id = %(i)s)"
            " AND (%(o)s::text IS NULL OR org_id = %(o)s)"
            " AND (%(s)s::timestamptz IS NULL OR started_at >= %(s)s)"
            " ORDER BY started_at DESC LIMIT %(n)s",
            {"i": instance_id, "o": org_id, "s": since, "n": limit})
        return [Run.from_row(row) for row in rows]

    async def outcomes(self, run_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """What the run's messages came to: ``direction, entity, outcome, records`` (final
        audit rows of the pusher and the puller, one per message), plus the first and
        last such row's time per direction (``first_at``, ``last_at``)."""
        return await self.db.fetch(
            "SELECT direction, entity, outcome, count(DISTINCT message_id) AS records,"
            " min(at) AS first_at, max(at) AS last_at FROM audit_log"
            " WHERE run_id = %s AND service IN ('pusher', 'puller') AND outcome <> 'retrying'"
            " GROUP BY direction, entity, outcome ORDER BY direction DESC, entity, outcome",
            (str(run_id),))

    async def running(self, instance_id: str | None = None) -> list[Run]:
        """Runs (of ``instance_id`` when given) that have not finished."""
        rows = await self.db.fetch(
            "SELECT * FROM runs WHERE (%s::text IS NULL OR instance_id = %s)"
            " AND status = 'running' ORDER BY started_at", (instance_id, instance_id))
        return [Run.from_row(row) for row in rows]


__all__ = ["PHASES", "STATUSES", "Run", "RunStore", "Trigger"]
