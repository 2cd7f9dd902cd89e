"""Searching the audit log: every column a person filters on, newest rows first.

:func:`build_query` is pure (parameterised SQL and its parameters) so its logic
is unit-tested without a database; :func:`search` runs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.audit.record import Outcome
from shared.storage.db import Database

DEFAULT_LIMIT = 50
MAX_LIMIT = 10_000

#: ``AuditQuery`` field -> ``audit_log`` column compared for equality.
_EQUALITY = {
    "org": "org_id",
    "instance": "instance_id",
    "entity": "entity",
    "direction": "direction",
    "record": "record_id",
    "external_id": "external_id",
    "run": "run_id",
    "message": "message_id",
    "action": "action",
    "service": "service",
    "error_class": "error_class",
    "correlation": "correlation_id",
    "http_status": "http_status",
    "attempt": "attempt",
}


@dataclasses.dataclass(frozen=True, slots=True)
class AuditQuery:
    """What to look for; every field left ``None`` matches everything.

    ``outcome`` is one outcome or several; ``since`` is inclusive, ``until``
    exclusive; ``text`` is a case-insensitive substring of the error message,
    the error class or the details.
    """

    org: str | None = None
    instance: str | None = None
    entity: str | None = None
    direction: str | None = None
    outcome: str | Sequence[str] | None = None
    record: str | None = None
    external_id: str | None = None
    run: str | None = None
    message: str | None = None
    action: str | None = None
    service: str | None = None
    error_class: str | None = None
    correlation: str | None = None
    http_status: int | None = None
    attempt: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    limit: int = DEFAULT_LIMIT

    def outcomes(self) -> list[str]:
        """The outcomes asked for, validated. Raises ``ValueError`` naming an unknown one."""
        if self.outcome is None:
            return []
        values = [self.outcome] if isinstance(self.outcome, str) else list(self.outcome)
        return [Outcome(v.strip().lower()).value for v in values]


@dataclasses.dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit row."""

    id: int
    at: datetime
    category: str
    service: str
    org_id: str | None
    instance_id: str | None
    entity: str | None
    direction: str | None
    action: str | None
    record_id: str | None
    external_id: str | None
    outcome: str
    attempt: int
    http_status: int | None
    error_class: str | None
    error_message: str | None
    duration_ms: float | None
    run_id: str | None
    message_id: str | None
    correlation_id: str | None
    details: dict[str, Any]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AuditRow:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (ISO time)."""
        data = dataclasses.asdict(self)
        data["at"] = self.at.isoformat()
        return data


def escape_like(text: str) -> str:
    """``text`` with LIKE wildcards escaped (backslash is the escape character)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def build_query(query: AuditQuery) -> tuple[str, list[Any]]:
    """The SQL and parameters for ``query``. Raises ``ValueError`` on an unknown outcome."""
    clauses: list[str] = []
    params: list[Any] = []
    for field, column in _EQUALITY.items():
        value = getattr(query, field)
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    outcomes = query.outcomes()
    if outcomes:
        clauses.append("outcome = ANY(%s)")
        params.append(outcomes)
    if query.since is not None:
        clauses.append("at >= %s")
        params.append(query.since)
    if query.until is not None:
        clauses.append("at < %s")
        params.append(query.until)
    if query.text:
        pattern = f"%{escape_like(query.text)}%"
        clauses.append("(error_message ILIKE %s OR error_class ILIKE %s OR details::text ILIKE %s)")
        params.extend([pattern, pattern, pattern])
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    limit = max(1, min(int(query.limit), MAX_LIMIT))
    return f"SELECT * FROM audit_log{where} ORDER BY at DESC, id DESC LIMIT %s", [*params, limit]


async def search(db: Database, query: AuditQuery) -> list[AuditRow]:
    """Rows matching ``query``, newest first, at most ``query.limit``.

    Raises ``ValueError`` on an unknown outcome, ``InfrastructureError`` on DB failure.
    """
    sql, params = build_query(query)
    return [AuditRow.from_row(row) for row in await db.fetch(sql, params)]
