"""Time-ordered ids (shared/ids.py): UUIDv7 message ids that the envelope accepts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.dispatcher.run import RunExecutor
from shared.ids import new_message_id, uuid7
from shared.messaging.envelope import (
    ENVELOPE_CHECK,
    SyncMessage,
    decode_checked,
    decode_sync_message,
    encode,
)
from shared.storage.runs import Run

NOW = 1_767_225_600.123  # 2026-01-01T00:00:00.123Z


def test_a_uuid7_holds_its_time_in_milliseconds_then_random_bits() -> None:
    made = uuid7(NOW)
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert made.int >> 80 == 1_767_225_600_123
    assert str(made).startswith("019b76da-a87b-7")
    assert uuid7(NOW) != made  # 74 random bits


def test_ids_made_in_a_later_millisecond_sort_after_earlier_ones() -> None:
    same_millisecond = {uuid7(NOW) for _ in range(1000)}
    assert len(same_millisecond) == 1000
    assert max(same_millisecond) < uuid7(NOW + 0.001) < uuid7(NOW + 3600)
    # as text too: what the audit log's message index sorts
    assert max(str(u) for u in same_millisecond) < str(uuid7(NOW + 0.001))


def test_a_new_message_id_is_a_canonical_uuid7_the_envelope_accepts() -> None:
    made = new_message_id()
    assert str(uuid.UUID(made)) == made and uuid.UUID(made).version == 7
    message = SyncMessage(id=made, direction="push", org_id="acme", instance_id="crm",
                          entity="account", action="update", trigger="event", attempt=0,
                          created_at="2026-11-30T10:00:00+00:00", record_id="acc-1")
    body = encode(message)
    assert decode_sync_message(body).id == made  # the fast path
    assert decode_checked(body, ENVELOPE_CHECK).id == made  # jsonschema's


def test_every_message_the_dispatcher_makes_has_a_uuid7_id() -> None:
    """Events and pull discoveries are pinned in their own tests; the nightly run's push
    messages here."""
    run = Run(uuid.uuid4(), "acme", "crm", "schedule", "running", "push", None,
              datetime.now(UTC), None, None, {}, None)
    messages = RunExecutor._messages(run, "account", ["acc-1", "acc-2"])
    decoded = [decode_sync_message(m.body) for m in messages]
    assert [d.record_id for d in decoded] == ["acc-1", "acc-2"]
    assert all(uuid.UUID(d.id).version == 7 and d.run_id == str(run.id) for d in decoded)
