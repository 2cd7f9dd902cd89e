"""The ``oauth_tokens`` table: one sealed OAuth2 token per instance, shared by every process.

This module stores and locks rows; it never sees a token in clear. The values
arrive sealed (AES-GCM, by :mod:`shared.http.tokens`, under a key derived from
the instance's credentials, which never reach the database) and leave sealed.

``locked(instance_id)`` is the single-flight primitive of a refresh: inside one
transaction it holds ``pg_advisory_xact_lock`` for the instance and reads the
row; other processes wait at the lock, then read what the first one stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from shared.storage.db import Connection, Database
from shared.storage.migrate import LOCK_CLASS


@dataclasses.dataclass(frozen=True, slots=True)
class SealedToken:
    """A token as stored: its secrets sealed (``nonce || ciphertext || tag``)."""

    access_token: bytes = dataclasses.field(repr=False)
    refresh_token: bytes | None = dataclasses.field(repr=False)
    expires_at: datetime | None
    obtained_at: datetime


_SELECT = (
    "SELECT access_token, refresh_token, expires_at, updated_at"
    " FROM oauth_tokens WHERE instance_id = %s"
)
_UPSERT = """
INSERT INTO oauth_tokens (instance_id, access_token, refresh_token, expires_at, updated_at)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (instance_id) DO UPDATE
   SET access_token = EXCLUDED.access_token, refresh_token = EXCLUDED.refresh_token,
       expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at
"""


class LockedToken:
    """An instance's row while its lock is held: ``current`` as read, ``replace`` to store."""

    def __init__(self, conn: Connection, instance_id: str, current: SealedToken | None) -> None:
        self._conn = conn
        self._instance_id = instance_id
        self.current = current

    async def replace(self, token: SealedToken) -> None:
        """Store ``token`` for the instance (committed when the lock is released)."""
        await self._conn.execute(_UPSERT, (self._instance_id, token.access_token,
                                           token.refresh_token, token.expires_at,
                                           token.obtained_at))
        self.current = token


class SealedTokenStore:
    """Sealed tokens in ``oauth_tokens``. Raises ``InfrastructureError`` when PostgreSQL fails."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, instance_id: str) -> SealedToken | None:
        """The instance's stored token, or ``None``."""
        return _sealed(await self.db.fetchrow(_SELECT, (instance_id,)))

    @asynccontextmanager
    async def locked(self, instance_id: str) -> AsyncIterator[LockedToken]:
        """The instance's row under its advisory lock, in one transaction: what is
        replaced in the block is committed when it exits, rolled back if it raises."""
        async with self.db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                               (LOCK_CLASS, f"oauth_tokens/{instance_id}"))
            cur = await conn.execute(_SELECT, (instance_id,))
            yield LockedToken(conn, instance_id, _sealed(await cur.fetchone()))

    def __repr__(self) -> str:
        return "SealedTokenStore()"


def _sealed(row: Mapping[str, Any] | None) -> SealedToken | None:
    if row is None:
        return None
    return SealedToken(bytes(row["access_token"]),
                       bytes(row["refresh_token"]) if row["refresh_token"] is not None else None,
                       row["expires_at"], row["updated_at"])
