"""Fitting audit rows into ``audit_log``: hostile values are normalised, never refused.

``acceptable`` states what PostgreSQL requires of a row (the column types, the
``CHECK`` constraints of ``0003_audit_log.sql``, UTF-8 text without NUL, ``jsonb``
input, index entries); the integration test in ``tests/integration/test_audit.py``
writes the same hostile rows to the real table.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.audit.normalise import (
    COLUMNS,
    INT4_MAX,
    MAX_DETAILS_CHARS,
    MAX_IDENT_BYTES,
    MAX_MESSAGE_CHARS,
    fit_ident,
    to_row,
)
from shared.audit.record import AuditRecord, Outcome
from shared.logging import register_secret

IDENTIFIERS = ("category", "service", "org_id", "instance_id", "entity", "action",
               "record_id", "external_id", "error_class", "run_id", "message_id",
               "correlation_id")
TEXTS = (*IDENTIFIERS, "error_message")


def acceptable(row: tuple[Any, ...]) -> list[str]:
    """What PostgreSQL would refuse in ``row`` (empty when nothing)."""
    values = dict(zip(COLUMNS, row, strict=True))
    problems = []
    for column in (*TEXTS, "direction", "details"):
        text = values[column]
        if text is None:
            continue
        if "\x00" in text:
            problems.append(f"{column}: NUL")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            problems.append(f"{column}: not UTF-8")
            continue
        if column in IDENTIFIERS and size > MAX_IDENT_BYTES:
            problems.append(f"{column}: {size} bytes")
    if values["direction"] not in (None, "push", "pull"):
        problems.append("direction")
    if not (type(values["attempt"]) is int and 0 <= values["attempt"] <= INT4_MAX):
        problems.append("attempt")
    status = values["http_status"]
    if status is not None and not (type(status) is int and 100 <= status <= 599):
        problems.append("http_status")
    duration = values["duration_ms"]
    if duration is not None and not (math.isfinite(duration) and duration >= 0):
        problems.append("duration_ms")
    if values["at"].tzinfo is None:
        problems.append("at")
    problems += _jsonb_problems(values["details"])
    if len(values["error_message"] or "") > MAX_MESSAGE_CHARS:
        problems.append("error_message: too long")
    return problems


def _jsonb_problems(text: str) -> list[str]:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        doc = json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        return [f"details: {exc}"]
    problems = []
    if not isinstance(doc, dict):
        problems.append("details: not an object")
    if "\\u0000" in text:
        problems.append("details: \\u0000")
    if len(text) > MAX_DETAILS_CHARS:
        problems.append(f"details: {len(text)} characters")
    return problems


def row_of(**fields: Any) -> dict[str, Any]:
    record = AuditRecord(**{"service": "pusher", "outcome": Outcome.CREATED, **fields})
    row = to_row(record)
    assert acceptable(row) == []
    return dict(zip(COLUMNS, row, strict=True))


def details_of(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(values["details"])


def test_an_ordinary_row_goes_in_as_it_is() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    values = row_of(org_id="org-1", instance_id="inst-1", entity="account", direction="push",
                    action="update", record_id="A-1", attempt=3, http_status=200,
                    duration_ms=12.5, message_id="m-1", details={"reason": "ok"}, at=at)
    assert values["at"] == at and values["attempt"] == 3 and values["http_status"] == 200
    assert values["record_id"] == "A-1" and values["duration_ms"] == 12.5
    assert details_of(values) == {"reason": "ok"}
    assert row_of()["details"] == "{}"


@pytest.mark.parametrize("status", [999, 600, 99, 0, -1, 2**40, True, "200", 200.0])
def test_a_status_that_is_not_http_is_null_and_kept_in_details(status: Any) -> None:
    values = row_of(http_status=status, details={"reason": "x"})
    assert values["http_status"] is None
    assert details_of(values) == {"reason": "x", "normalised": {"http_status": status}}


@pytest.mark.parametrize(("attempt", "stored"), [
    (2**31, INT4_MAX), (2**70, INT4_MAX), (-1, 0), (-(2**40), 0), ("3", 3), (None, 0),
    (2.0, 2), (float("nan"), 0),
])
def test_an_attempt_out_of_the_integer_range_is_clamped_and_kept(attempt: Any,
                                                                 stored: int) -> None:
    values = row_of(attempt=attempt)
    assert values["attempt"] == stored
    kept = details_of(values)["normalised"]["attempt"]
    assert kept == attempt or str(attempt) == kept


@pytest.mark.parametrize(("duration", "stored"), [
    (float("nan"), None), (float("inf"), None), (-5.0, 0.0), ("12", None), (10**400, None),
])
def test_durations(duration: Any, stored: float | None) -> None:
    assert row_of(duration_ms=duration)["duration_ms"] == stored


@pytest.mark.parametrize("bad", [12345, b"A-\x00", 3.5, "é" * 600, "a\x00b"])
def test_one_unusual_identifier_is_fitted_and_the_others_kept(bad: Any) -> None:
    values = row_of(org_id="org-1", record_id=bad, message_id="m-1")
    assert values["org_id"] == "org-1" and values["message_id"] == "m-1"
    assert values["record_id"] == fit_ident(bad)
    assert isinstance(values["record_id"], str)


def test_a_direction_that_is_neither_push_nor_pull_is_null_and_kept() -> None:
    values = row_of(direction="sideways")
    assert values["direction"] is None
    assert details_of(values)["normalised"]["direction"] == "sideways"


def test_a_time_without_a_zone_is_read_as_utc() -> None:
    values = row_of(at=datetime(2026, 1, 2, 3, 4))
    assert values["at"] == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    values = row_of(at="yesterday")
    assert values["at"].tzinfo is not None
    assert details_of(values)["normalised"]["at"] == "yesterday"


@pytest.mark.parametrize("column", TEXTS)
def test_nul_and_lone_surrogates_are_replaced_in_every_text(column: str) -> None:
    values = row_of(**{column: "a\x00b\ud800c\udcffd"})
    assert values[column] == "a\ufffdb\ufffdc\ufffdd"


def test_nul_and_lone_surrogates_are_replaced_in_details_keys_and_values() -> None:
    values = row_of(details={"k\x00": "v\x00", "s\udc80": ["\ud800", {"deep\x00": "\udfff"}]})
    assert details_of(values) == {"k\ufffd": "v\ufffd",
                                  "s\ufffd": ["\ufffd", {"deep\ufffd": "\ufffd"}]}


@pytest.mark.parametrize("column", IDENTIFIERS)
def test_a_long_identifier_is_cut_to_the_byte_budget_with_a_marker(column: str) -> None:
    for text in ("x" * 5000, "€" * 2000):
        values = row_of(**{column: text})
        cut = values[column]
        assert cut.endswith("…") and text.startswith(cut[:-1])
        assert MAX_IDENT_BYTES - 3 <= len(cut.encode("utf-8")) <= MAX_IDENT_BYTES
        assert details_of(values)["normalised"][column] == f"cut from {len(text)} characters"


def test_a_long_error_message_is_cut_with_a_marker() -> None:
    values = row_of(error_message="e" * 10_000)
    assert len(values["error_message"]) == MAX_MESSAGE_CHARS
    assert values["error_message"].endswith("…")


def test_numbers_json_cannot_hold_become_strings() -> None:
    values = row_of(details={"nan": float("nan"), "inf": float("-inf"), "big": 2**80,
                             "huge": 10**5000, "fine": 2**62, "ratio": 0.5})
    doc = details_of(values)
    assert doc["nan"] == "nan" and doc["inf"] == "-inf" and doc["big"] == str(2**80)
    assert doc["huge"].endswith("-bit integer>") and doc["fine"] == 2**62 and doc["ratio"] == 0.5


def test_other_values_keys_and_deep_nesting_are_made_json() -> None:
    deep: Any = "bottom"
    for _ in range(5000):
        deep = [deep]
    when = datetime(2026, 1, 2, tzinfo=UTC)
    values = row_of(details={"deep": deep, (1, 2): "tuple key", "set": {3}, "when": when,
                             "bytes": b"\x00\xff"})
    doc = details_of(values)
    assert doc["(1, 2)"] == "tuple key" and doc["set"] == [3]
    assert doc["when"] == when.isoformat() and "\\x00" in doc["bytes"]
    level, depth = doc["deep"], 1
    while isinstance(level, list):
        level, depth = level[0], depth + 1
    assert level == "…" and depth <= 21


def test_huge_details_become_a_cut_preview() -> None:
    values = row_of(details={f"k{i}": "v" * 3000 for i in range(50)})
    doc = details_of(values)
    assert set(doc) == {"normalised", "preview"}
    assert doc["normalised"]["details"].startswith("cut from ")
    assert doc["preview"].startswith('{"k0": "vvv') and doc["preview"].endswith("…")


def test_texts_are_redacted_before_they_are_cut() -> None:
    secret = "s3cr3t-value-of-twenty"
    register_secret(secret)
    values = row_of(error_message="x" * (MAX_MESSAGE_CHARS - 10) + secret,
                    details={"body": "y" * 3990 + secret})
    for column in ("error_message", "details"):
        assert secret[:8] not in values[column], column


def test_an_outcome_that_is_not_one_of_the_nine_is_a_bug() -> None:
    with pytest.raises(ValueError):
        to_row(AuditRecord(service="pusher", outcome="exploded"))  # type: ignore[arg-type]


def _hostile_text(rng: random.Random) -> str:
    alphabet = ["a", "\x00", "\ud800", "\udfff", "€", "😀", "\n", '"', "\\", "\ufffd"]
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 300, 1500])))


def _hostile_value(rng: random.Random) -> Any:
    return rng.choice([
        None, True, 0, -1, 2**31, 2**64, 10**400, float("nan"), float("inf"), -0.0, 1e308,
        _hostile_text(rng), [_hostile_text(rng)], {_hostile_text(rng): _hostile_text(rng)},
        b"\xff\x00", object(),
    ])


def hostile_records(count: int, seed: int = 9) -> list[AuditRecord]:
    """Records with hostile values in every field (shared with the integration test)."""
    rng = random.Random(seed)
    records = []
    for n in range(count):
        fields: dict[str, Any] = {name: _hostile_text(rng) for name in TEXTS}
        fields.update(
            service="pusher", outcome=rng.choice(list(Outcome)),
            direction=rng.choice(["push", "pull", None, _hostile_text(rng)]),
            attempt=_hostile_value(rng), http_status=_hostile_value(rng),
            duration_ms=_hostile_value(rng), message_id=f"hostile-{n}",
            details={_hostile_text(rng): _hostile_value(rng) for _ in range(rng.randint(0, 6))},
        )
        records.append(AuditRecord(**fields))
    return records


def test_every_hostile_record_becomes_a_row_postgresql_accepts() -> None:
    for record in hostile_records(400):
        assert acceptable(to_row(record)) == [], record
