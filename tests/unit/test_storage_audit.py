"""Audit search query building, CLI time/outcome parsing, and the writer's row checks (pure)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from shared.audit.record import AuditRecord, Outcome
from shared.audit.search import MAX_LIMIT, AuditQuery, build_query, escape_like
from shared.audit.writer import COLUMNS, MAX_MESSAGE_CHARS, to_row
from shared.cli.storage_cmds import build_audit_query, parse_outcomes, parse_when
from shared.logging import register_secret

WHEN = datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_empty_query_selects_newest_first() -> None:
    sql, params = build_query(AuditQuery())
    assert sql == "SELECT * FROM audit_log ORDER BY at DESC, id DESC LIMIT %s"
    assert params == [50]


def test_every_filter_is_a_parameter() -> None:
    query = AuditQuery(org="o'; DROP TABLE x; --", instance="i", entity="account",
                       direction="push", outcome=["failed", "DEAD"], record="r",
                       external_id="x", run="run", message="m", since=WHEN,
                       until=WHEN + timedelta(days=1), text="50%_off", limit=7)
    sql, params = build_query(query)
    assert "DROP" not in sql
    assert sql.count("%s") == len(params)
    for clause in ("org_id = %s", "instance_id = %s", "entity = %s", "direction = %s",
                   "record_id = %s", "external_id = %s", "run_id = %s", "message_id = %s",
                   "outcome = ANY(%s)", "at >= %s", "at < %s", "error_message ILIKE %s",
                   "details::text ILIKE %s"):
        assert clause in sql
    assert ["failed", "dead"] in params
    assert "%50\\%\\_off%" in params
    assert params[-1] == 7


def test_limit_is_clamped_and_unknown_outcomes_refused() -> None:
    assert build_query(AuditQuery(limit=10**9))[1][-1] == MAX_LIMIT
    assert build_query(AuditQuery(limit=0))[1][-1] == 1
    with pytest.raises(ValueError):
        build_query(AuditQuery(outcome="exploded"))


def test_escape_like() -> None:
    assert escape_like("a%b_c\\d") == "a\\%b\\_c\\\\d"


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", WHEN - timedelta(minutes=30)), ("1h", WHEN - timedelta(hours=1)),
    ("2d", WHEN - timedelta(days=2)), ("1w", WHEN - timedelta(weeks=1)),
    ("90s", WHEN - timedelta(seconds=90)), ("1.5h", WHEN - timedelta(minutes=90)),
    ("2024-04-30", datetime(2024, 4, 30, tzinfo=UTC)),
    ("2024-04-30T10:15", datetime(2024, 4, 30, 10, 15, tzinfo=UTC)),
    ("2024-04-30T10:15:00+02:00", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),
    ("2024-04-30T10:15:00Z", datetime(2024, 4, 30, 10, 15, tzinfo=UTC)),
])
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, now=WHEN) == expected


def test_parse_when_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="neither an ISO date/time nor a duration"):
        parse_when("last tuesday", now=WHEN)


def test_parse_outcomes() -> None:
    assert parse_outcomes(["failed,dead", " Retrying "]) == ["failed", "dead", "retrying"]
    assert parse_outcomes(None) == []
    with pytest.raises(ValueError, match="unknown outcome 'boom'"):
        parse_outcomes(["boom"])


def test_cli_flags_become_a_query() -> None:
    args = argparse.Namespace(org="o", instance=None, entity=None, direction="pull",
                              outcome=["dead"], record=None, external_id="X", run=None,
                              message=None, service=None, since="1h", until=None, text="t",
                              limit=5, action=None, error_class="RemoteRejected",
                              correlation=None, http_status=422, attempt=None)
    query = build_audit_query(args)
    assert (query.org, query.direction, query.outcome, query.external_id, query.limit) == (
        "o", "pull", ["dead"], "X", 5)
    assert (query.error_class, query.http_status) == ("RemoteRejected", 422)
    assert query.since is not None and query.since.tzinfo is not None


def test_rows_are_redacted_and_nul_free() -> None:
    register_secret("unit-audit-secret-99")
    row = to_row(AuditRecord(service="pusher", outcome=Outcome.FAILED, direction="push",
                             error_message="boom unit-audit-secret-99 \x00" + "x" * 10_000,
                             details={"api_key": "abc", "nested": {"v": "unit-audit-secret-99"},
                                      "nul": "a\x00b"}))
    values = dict(zip(COLUMNS, row, strict=True))
    assert "unit-audit-secret-99" not in values["error_message"]
    assert "\x00" not in values["error_message"]
    assert len(values["error_message"]) == MAX_MESSAGE_CHARS
    assert "unit-audit-secret-99" not in values["details"]
    assert '"api_key": "***"' in values["details"]
    assert "\\u0000" not in values["details"]
    assert values["category"] == "integration_framework"


def test_only_an_unknown_outcome_is_refused_before_queueing() -> None:
    """Values from outside are fitted (tests/unit/test_audit_normalise.py); an outcome
    that is not one of the nine is a bug of the caller."""
    with pytest.raises(ValueError):
        to_row(AuditRecord(service="pusher", outcome="exploded"))  # type: ignore[arg-type]
