"""The sync envelope: decoding, the schema, and the fast check that must agree with it."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import random
from typing import Any

import pytest

from shared.errors import InvalidMessage
from shared.messaging.envelope import (
    ENVELOPE_CHECK,
    ENVELOPE_RULES_SHA256,
    MAX_ATTEMPT,
    MAX_REDELIVERIES,
    SyncMessage,
    _build,
    _decode_fast,
    conforms,
    decode_sync_message,
    encode,
)
from shared.schema_check import PinnedSchemaCheck, rules_sha256
from tests.unit.schema_verdicts import disagreements

VALID: dict[str, Any] = {
    "id": "3f1e6a4c-1b2d-4c3e-9f00-0123456789ab", "direction": "push", "org_id": "org_1",
    "instance_id": "prod-2", "entity": "invoice", "action": "update", "record_id": "inv-9",
    "trigger": "schedule", "attempt": 0, "created_at": "2026-01-02T03:04:05.123+01:00",
    "run_id": "run-1", "correlation_id": None, "redeliveries": 0,
}
PULL: dict[str, Any] = {
    **{k: v for k, v in VALID.items() if k != "record_id"}, "direction": "pull",
    "external_id": "ext-1", "record": {"name": "ACME"},
}


def test_the_fast_check_was_reviewed_against_this_schema() -> None:
    """If this fails the schema's rules changed: review ``conforms`` and update the hash."""
    assert rules_sha256("sync-message") == ENVELOPE_RULES_SHA256


def test_a_valid_message_round_trips() -> None:
    message = decode_sync_message(json.dumps(VALID).encode())
    assert message == SyncMessage(**VALID)
    assert decode_sync_message(encode(message)) == message
    assert message.with_attempt(3).attempt == 3 and message.attempt == 0


def test_a_pull_message_carries_its_record() -> None:
    message = decode_sync_message(json.dumps(PULL).encode())
    assert message.external_id == "ext-1" and message.record == {"name": "ACME"}


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "is not of type 'object'"),
    (json.dumps({**VALID, "org_id": "a b"}).encode(), "/org_id"),
    (json.dumps({**VALID, "entity": "invoices"}).encode(), "/entity"),
    (json.dumps({**VALID, "extra": 1}).encode(), "extra"),
    (json.dumps({k: v for k, v in VALID.items() if k != "record_id"}).encode(), "record_id"),
    (json.dumps({**VALID, "id": "not-a-uuid"}).encode(), "/id"),
    (json.dumps({**VALID, "created_at": "yesterday"}).encode(), "/created_at"),
    (json.dumps({**VALID, "attempt": -1}).encode(), "/attempt"),
    (json.dumps({**VALID, "attempt": 2**31}).encode(), "/attempt: 2147483648 is greater than"),
    (json.dumps({**VALID, "attempt": 2**70}).encode(), "/attempt"),
    (json.dumps({**VALID, "redeliveries": 2**31}).encode(), "/redeliveries"),
    (json.dumps({**VALID, "record_id": "r" * 256}).encode(), "/record_id"),
    (json.dumps({**PULL, "external_id": "e" * 1001}).encode(), "/external_id"),
    (json.dumps({**VALID, "run_id": "u" * 256}).encode(), "/run_id"),
    (json.dumps({**VALID, "correlation_id": "c" * 256}).encode(), "/correlation_id"),
    (json.dumps({**VALID, "created_at": "2026-01-01T00:00:00." + "1" * 80 + "Z"}).encode(),
     "/created_at"),
    (b'{"id": "\\ud800"}', "/id holds a lone surrogate"),
    (json.dumps({**PULL, "record": {"name": "\ud800"}}).encode(),
     "/record/name holds a lone surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_invalid_messages_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_sync_message(body)
    assert reason in str(caught.value)


def test_an_integral_float_attempt_is_an_integer() -> None:
    assert decode_sync_message(json.dumps({**VALID, "attempt": 2.0}).encode()).attempt == 2


def test_valid_json_the_fast_parser_refuses_is_still_read() -> None:
    # orjson stops at 64-bit integers; the standard library reads the rest
    body = json.dumps({**PULL, "record": {"n": 2**70}}).encode()
    assert decode_sync_message(body).record == {"n": 2**70}


def test_every_field_of_the_envelope_reaches_the_message() -> None:
    """The message is built positionally: each property lands in its own field, and
    the message has a field for every property of the schema."""
    props = ENVELOPE_CHECK.validator.schema["properties"]
    assert {f.name for f in dataclasses.fields(SyncMessage)} == set(props)
    full = {**VALID, "external_id": "ext-7", "record": {"k": "v"}, "run_id": "run-8",
            "redeliveries": 9, "correlation_id": "corr-10", "attempt": 3.0}
    decoded = decode_sync_message(json.dumps(full).encode())
    assert decoded == SyncMessage(**{**full, "attempt": 3})
    assert type(decoded.attempt) is int and type(decoded.redeliveries) is int


def test_the_counters_bounds_are_the_schemas() -> None:
    props = ENVELOPE_CHECK.validator.schema["properties"]
    assert props["attempt"]["maximum"] == MAX_ATTEMPT
    assert props["redeliveries"]["maximum"] == MAX_REDELIVERIES
    at_most = {**VALID, "attempt": MAX_ATTEMPT, "redeliveries": MAX_REDELIVERIES,
               "record_id": "r" * 255}
    assert decode_sync_message(json.dumps(at_most).encode()).attempt == MAX_ATTEMPT


# Mutations of valid messages: the fast check must never accept what jsonschema refuses,
# and must accept the ordinary valid messages (or it is no fast path).
_ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2.0, 2.5, "", "x", "a b", "push", "pull", "account", "upsert",
    "event", "x" * 129, "org\n", [], {}, {"a": 1}, "2026-02-30T00:00:00Z", "2026-01-01T00:00:00z",
    "2026-01-01T00:00:00Z", "2026-01-01 00:00:00Z", "3F1E6A4C-1B2D-4C3E-9F00-0123456789AB",
    "{3f1e6a4c-1b2d-4c3e-9f00-0123456789ab}", "3f1e6a4c1b2d4c3e9f000123456789ab",
    MAX_ATTEMPT, MAX_ATTEMPT + 1, float(MAX_ATTEMPT), MAX_REDELIVERIES,
    MAX_REDELIVERIES + 1, 2**31, 2**63, "x" * 255, "x" * 256, "x" * 1000, "x" * 1001,
    "2026-01-01T00:00:00." + "0" * 60 + "Z",
]


def _mutations() -> list[dict[str, Any]]:
    docs = []
    for base, key in itertools.product((VALID, PULL), [*VALID, *PULL, "extra"]):
        doc = copy.deepcopy(base)
        doc.pop(key, None)
        docs.append(doc)
        for value in _ODD_VALUES:
            docs.append({**copy.deepcopy(base), key: value})
    rng = random.Random(7)
    for _ in range(500):
        doc = copy.deepcopy(rng.choice((VALID, PULL)))
        for key in rng.sample(sorted({*VALID, *PULL}), 3):
            doc[key] = rng.choice(_ODD_VALUES)
        docs.append(doc)
    return docs


def test_the_fast_check_is_never_more_lenient_than_the_schema() -> None:
    schema_ok = ENVELOPE_CHECK.validator.is_valid
    disagreements = [d for d in _mutations() if conforms(d) and not schema_ok(d)]
    assert disagreements == []


def test_the_fast_check_accepts_ordinary_valid_messages() -> None:
    assert conforms(VALID) and conforms(PULL)
    valid = [d for d in _mutations() if ENVELOPE_CHECK.validator.is_valid(d)]
    accepted = [d for d in valid if conforms(d)]
    assert len(valid) > 100
    # Only odd-but-legal spellings (braced UUIDs, lower-case 'z') take the slow path.
    assert len(accepted) / len(valid) > 0.9


def _typed(doc: dict[str, Any]) -> SyncMessage | None:
    return _decode_fast(json.dumps(doc).encode())


def test_the_typed_parse_is_never_more_lenient_than_the_schema() -> None:
    schema_ok = ENVELOPE_CHECK.validator.is_valid
    assert [d for d in _mutations() if _typed(d) is not None and not schema_ok(d)] == []


def test_the_typed_parse_reads_what_the_long_way_reads() -> None:
    """Every envelope both accept gives the same message, and the typed parse takes the
    ordinary ones (or it is no fast path)."""
    valid = [d for d in _mutations() if ENVELOPE_CHECK.validator.is_valid(d)]
    taken = [(d, m) for d in valid if (m := _typed(d)) is not None]
    assert len(taken) / len(valid) > 0.9
    assert [d for d, m in taken if m != _build(copy.deepcopy(d))] == []


@pytest.mark.parametrize("body", [
    # a lone surrogate, in a field and deep in the record: not text PostgreSQL can hold
    json.dumps({**VALID, "record_id": "r\ud800"}).encode(),
    json.dumps({**PULL, "record": {"a": ["\ud800"]}}).encode(),
    # the last of two keys is the one jsonschema would judge (orjson keeps it too)
    json.dumps(VALID)[:-1].encode() + b', "id": "not-a-uuid"}',
    json.dumps(VALID).encode().replace(b'"attempt": 0', b'"attempt": 99999999999999999999999'),
    json.dumps(VALID).encode().replace(b'"attempt": 0', b'"attempt": 1e400'),
    b"[" * 10_000 + b"]" * 10_000,
    b'{"id": "3f1e6a4c-1b2d-4c3e-9f00-0123456789ab"',
    b"\xff\xfe",
])
def test_what_the_typed_parse_refuses_takes_the_long_way(body: bytes) -> None:
    assert _decode_fast(body) is None
    with pytest.raises(InvalidMessage):
        decode_sync_message(body)


@pytest.mark.parametrize("fast_enabled", [True, False])
def test_the_envelope_check_judges_every_mutation_as_jsonschema_does(fast_enabled: bool) -> None:
    """Through the shared helper, fast check on and off: the same verdicts."""
    check = PinnedSchemaCheck("sync-message", conforms, ENVELOPE_RULES_SHA256,
                              subject="the envelope", formats=True, fast_enabled=fast_enabled)
    assert disagreements(check, _mutations()) == []
