"""Pure helpers of the record API: ids, system fields, merge patch, cursors, ETags.

Nothing here does I/O; :mod:`sandbox.store` and :mod:`sandbox.app` build on it.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

#: Id prefix per entity: ``acc_01J9Z3…``.
ID_PREFIXES: dict[str, str] = {
    "account": "acc",
    "contact": "con",
    "order": "ord",
    "invoice": "inv",
    "product": "prd",
    "payment": "pay",
    "case": "cas",
    "subscription": "sub",
}

#: Read-only fields the sandbox sets; ignored on writes.
SYSTEM_FIELDS: tuple[str, ...] = ("id", "organizationId", "createdAt", "updatedAt")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CURSOR_SEPARATOR = "|"


def new_id(entity: str) -> str:
    """A new record id: the entity's prefix and a ULID (time-ordered, 26 characters).

    Raises ``KeyError`` for an unknown entity.
    """
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{ID_PREFIXES[entity]}_{''.join(reversed(chars))}"


def writable_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without the system fields (which the server sets)."""
    return {k: v for k, v in body.items() if k not in SYSTEM_FIELDS}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch of ``target`` by ``patch`` (new objects; inputs untouched)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Top-level writable fields whose value differs; an absent field equals ``null``."""
    keys = (before.keys() | after.keys()) - set(SYSTEM_FIELDS)
    return sorted(k for k in keys if before.get(k) != after.get(k))


# --------------------------------------------------------------------------- cursors


def encode_cursor(updated_at: datetime, record_id: str) -> str:
    """The opaque cursor of the position just after (``updated_at``, ``record_id``)."""
    raw = f"{updated_at.isoformat()}{_CURSOR_SEPARATOR}{record_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (updatedAt, id) position a cursor stands for. Raises ``ValueError``."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
        stamp, record_id = text.split(_CURSOR_SEPARATOR, 1)
        moment = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise ValueError("not a cursor this API returned") from exc
    if moment.tzinfo is None or not record_id:
        raise ValueError("not a cursor this API returned")
    return moment, record_id


def parse_instant(text: str) -> datetime:
    """An RFC 3339 date-time with its offset (``2025-03-01T23:00:00Z``). Raises ``ValueError``."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        raise ValueError("a date-time needs its UTC offset (Z or +01:00)")
    return moment


# --------------------------------------------------------------------------- ETags


def etag(version: int) -> str:
    """The strong ETag of a record version: ``"3"``."""
    return f'"{version}"'


def if_match_allows(header: str | None, version: int) -> bool:
    """Whether an ``If-Match`` header lets a write to ``version`` proceed (RFC 9110 §13.1.1).

    No header, ``*``, or a list holding the current ETag (weak ones compared weakly,
    as a lenient sandbox) allows it.
    """
    if header is None or header.strip() == "*":
        return True
    current = etag(version)
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == current:
            return True
    return False
