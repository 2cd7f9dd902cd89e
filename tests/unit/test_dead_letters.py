"""Dead letters as values (shared.messaging.dead_letters): the copy that moves one back,
the derived id, filters and the maximum age. Pure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from shared.messaging.dead_letters import (
    H_ORIGINAL_MESSAGE_ID,
    H_PARKED_AT,
    H_REDELIVERED_FROM,
    DeadLetter,
    LetterFilter,
    moved_copy,
    parked_copy,
    redelivered_id,
    too_old,
)
from shared.messaging.envelope import SyncMessage, decode_sync_message, encode

NOW = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)


def envelope(**overrides: object) -> SyncMessage:
    fields: dict[str, object] = dict(
        id=str(uuid.uuid4()), direction="push", org_id="acme", instance_id="crm",
        entity="contact", action="create", trigger="event", attempt=3,
        created_at="2026-11-30T10:00:00+00:00", record_id="con_1", correlation_id="evt-1")
    fields.update(overrides)
    return SyncMessage(**fields)  # type: ignore[arg-type]


def letter(message: SyncMessage | None = None, *, body: bytes | None = None,
           headers: dict[str, object] | None = None, service: str = "pusher") -> DeadLetter:
    message = message or envelope()
    props = SimpleNamespace(
        message_id=message.id, correlation_id=message.correlation_id, timestamp=None,
        headers=headers if headers is not None else {
            "x-error-class": "RemoteRejected", "x-error": "422", "x-http-status": 422,
            "x-attempts": 4, "x-attempt": 3, "x-first-failed-at": "2026-11-30T10:00:01+00:00",
            "x-busy-retries": 2, "x-org-id": "acme", "x-entity": "contact", "x-record-id": "con_1",
            "x-original-exchange": "sync.push", "x-death": [{"count": 1}]})
    return DeadLetter.read(service, props, body if body is not None else encode(message))


def test_the_copy_moved_back_is_a_new_message_for_the_same_record() -> None:
    dead = letter()
    copy = moved_copy(dead, "redelivery")
    body = decode_sync_message(copy.body)
    assert (copy.exchange, copy.routing_key) == ("", "pusher")
    assert copy.message_id == body.id == redelivered_id(dead.message_id or "", 1)
    assert body.id != dead.message_id
    assert (body.attempt, body.redeliveries, body.trigger) == (0, 1, "redelivery")
    assert (body.record_id, body.correlation_id) == ("con_1", "evt-1")
    assert copy.correlation_id == "evt-1"
    headers = dict(copy.headers or {})
    assert headers[H_REDELIVERED_FROM] == headers[H_ORIGINAL_MESSAGE_ID] == dead.message_id
    assert headers["x-first-failed-at"] == "2026-11-30T10:00:01+00:00"  # its age is kept
    for gone in ("x-error", "x-error-class", "x-http-status", "x-attempts", "x-attempt",
                 "x-busy-retries", "x-death"):
        assert gone not in headers


def test_a_second_move_keeps_the_chain_and_the_same_letter_always_gets_the_same_id() -> None:
    first = letter()
    copy = moved_copy(first, "redelivery")
    again = DeadLetter.read("pusher", SimpleNamespace(
        message_id=copy.message_id, correlation_id=None, timestamp=None,
        headers=dict(copy.headers or {})), copy.body)
    second = moved_copy(again, "manual")
    assert decode_sync_message(second.body).redeliveries == 2
    assert second.message_id == redelivered_id(copy.message_id or "", 2)
    assert dict(second.headers or {})[H_ORIGINAL_MESSAGE_ID] == first.message_id
    assert moved_copy(first, "redelivery").message_id == copy.message_id  # derived, stable
    assert redelivered_id("a", 1) != redelivered_id("a", 2) != redelivered_id("b", 2)


def test_a_body_that_is_not_an_envelope_cannot_be_moved_back() -> None:
    dead = letter(body=b"not json")
    assert dead.envelope is None and dead.problem
    with pytest.raises(ValueError, match="not a sync message"):
        moved_copy(dead, "redelivery")
    assert dead.record == "con_1" and dead.entity == "contact"  # read from the headers


def test_the_puller_s_letters_go_back_to_the_puller() -> None:
    pulled = envelope(direction="pull", record_id=None, external_id="ext-9")
    copy = moved_copy(letter(pulled, service="puller"), "redelivery")
    assert copy.routing_key == "puller"
    assert letter(pulled, service="puller", headers={}).record == "ext-9"


def test_a_parked_copy_is_the_letter_unchanged_plus_when() -> None:
    dead = letter()
    parked = parked_copy(dead, NOW)
    assert (parked.routing_key, parked.body, parked.message_id) == (
        "pusher.parked", dead.body, dead.message_id)
    headers = dict(parked.headers or {})
    assert headers[H_PARKED_AT] == NOW.isoformat() and headers["x-error"] == "422"
    assert "x-death" not in headers


def test_the_maximum_age_counts_from_the_first_failure_and_is_off_by_default() -> None:
    dead = letter()  # first failed 2026-11-30T10:00:01
    assert not too_old(dead, None, NOW)
    assert too_old(dead, timedelta(hours=12), NOW)
    assert not too_old(dead, timedelta(days=2), NOW)


def test_filters() -> None:
    dead = letter()
    assert LetterFilter().empty and LetterFilter().matches(dead)
    assert LetterFilter(org_id="acme", entity="contact").matches(dead)
    assert not LetterFilter(org_id="acme", entity="account").matches(dead)
    assert LetterFilter(error_class="RemoteRejected").matches(dead)
    assert LetterFilter(ids=frozenset({dead.message_id or ""})).matches(dead)
    assert not LetterFilter(ids=frozenset({"other"})).matches(dead)
    since = datetime(2026, 11, 30, tzinfo=UTC)
    assert LetterFilter(since=since).matches(dead)
    assert not LetterFilter(since=since + timedelta(days=1)).matches(dead)
    assert LetterFilter(org_id="acme", entity="contact").describe() == "org=acme entity=contact"


def test_show_masks_credentials_in_the_body_and_the_headers() -> None:
    secret = envelope(record={"name": "Acme", "password": "s3cret-value",
                              "site": "https://u:pa55word-x@acme.example/"})
    shown = letter(secret, headers={"x-error": "GET https://u:pa55word-x@h/ failed",
                                    "authorization": "Bearer abc"}).shown()
    text = str(shown)
    assert "s3cret-value" not in text and "pa55word-x" not in text and "abc" not in text
    assert shown["body"]["record"]["password"] == "***"
