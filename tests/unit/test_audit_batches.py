"""Audit batch ids (shared/audit/batches.py): UUIDv7, ordered by time, pruned by range."""

from __future__ import annotations

import uuid

from shared.audit.batches import (
    RETENTION_SECONDS,
    batch_time,
    new_batch_id,
    oldest_kept,
)

NOW = 1_767_225_600.123  # 2026-01-01T00:00:00.123Z


def test_a_batch_id_is_a_uuid7_holding_its_time_in_milliseconds() -> None:
    batch = new_batch_id(NOW)
    assert batch.version == 7 and batch.variant == uuid.RFC_4122
    assert batch_time(batch) == 1_767_225_600.123
    assert str(batch).startswith("019b76da-a87b-7")


def test_batch_ids_are_unique_and_ordered_by_time() -> None:
    same_millisecond = {new_batch_id(NOW) for _ in range(1000)}
    assert len(same_millisecond) == 1000
    assert max(same_millisecond) < new_batch_id(NOW + 0.001) < new_batch_id(NOW + 3600)


def test_oldest_kept_splits_ids_at_the_retention() -> None:
    floor = oldest_kept(NOW, RETENTION_SECONDS)
    assert new_batch_id(NOW - RETENTION_SECONDS - 0.001) < floor
    assert new_batch_id(NOW - RETENTION_SECONDS) >= floor
    assert new_batch_id(NOW) > floor
