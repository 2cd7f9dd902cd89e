"""Audit batch ids (shared/audit/batches.py): UUIDv7, ordered by time, pruned by range."""

from __future__ import annotations

from shared.audit.batches import (
    RETENTION_SECONDS,
    batch_time,
    new_batch_id,
    oldest_kept,
)

NOW = 1_767_225_600.123  # 2026-01-01T00:00:00.123Z


def test_a_batch_id_is_a_uuid7_whose_time_batch_time_reads() -> None:
    """The UUIDv7 itself (order, uniqueness) is pinned in test_ids.py."""
    batch = new_batch_id(NOW)
    assert batch.version == 7 and batch_time(batch) == 1_767_225_600.123
    assert batch_time(new_batch_id(NOW + 3600)) == 1_767_229_200.123


def test_oldest_kept_splits_ids_at_the_retention() -> None:
    floor = oldest_kept(NOW, RETENTION_SECONDS)
    assert new_batch_id(NOW - RETENTION_SECONDS - 0.001) < floor
    assert new_batch_id(NOW - RETENTION_SECONDS) >= floor
    assert new_batch_id(NOW) > floor
