"""Idempotency keys: the value of a connector's idempotency header (docs/architecture.md §5).

A third party that honours an idempotency header answers a second request carrying a
key it has seen with the first request's result instead of acting again. That only
protects against duplicates if every attempt at the *same* write carries the *same*
key, and a *different* write never reuses one.
"""

from __future__ import annotations

import uuid

IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0c4c2e-6f5e-4d8a-9a57-3f1c2c1f0b7e")


def idempotency_key(*parts: object) -> str:
    """A UUID derived from ``parts`` alone (their ``str``, joined): the same parts give the
    same key in any process, on any day, with no state kept anywhere.

    The key is therefore exactly as stable as the parts. The pusher derives a create's
    key from (instance, entity, BSS record id, ``"create"``, the link row's id, the
    link's last push time): the link row is created by the first claim of the record
    and kept, and its last push time changes only when a push succeeds, so every
    attempt to create the record — a retry, a redelivery, another message for it —
    sends the same key until the create succeeds. Once the record is deleted remotely
    the link's last push time moves, so creating it again is a new key (the old one
    would be answered with the deleted record). Updates and deletes use the message id.
    """
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, ":".join(str(p) for p in parts)))
