"""Time-ordered ids: UUIDv7 (RFC 9562) for what is stored in the order it is made.

A UUIDv7's first 48 bits are the time in milliseconds, the rest random (74 bits).
Ids made later sort after ids made in an earlier millisecond, so a B-tree index on
them grows at its right edge, as one on a timestamp does. A random id (UUIDv4) lands
anywhere in the index instead: every insert touches a leaf of its own, which stays
in the caches only while the index is small, and a page split leaves both halves
half empty. Message ids are UUIDv7 for that reason: each message's audit row is
indexed by its id (``audit_log_message_idx``, the de-duplication look-up), and at
a month's partition of audit rows the random ids were the costliest index to
insert into (docs/decisions.md).

Consumers accept any canonical UUID as a message id; only the ids bss-sync makes
are time-ordered.
"""

from __future__ import annotations

import os
import time
import uuid


def uuid7(now: float | None = None) -> uuid.UUID:
    """A new UUIDv7: ``now`` (default: the clock) in milliseconds, then 74 random bits."""
    millis = round((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10)) >> 6  # 74 bits: 12 of rand_a, 62 of rand_b
    value = (millis << 80 | 0x7 << 76 | (rand >> 62) << 64
             | 0b10 << 62 | rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


def new_message_id() -> str:
    """The id of a new message (the sync envelope's ``id``): a UUIDv7, as text."""
    return str(uuid7())
