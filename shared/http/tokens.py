"""OAuth2 tokens: cached in memory and shared by every worker through PostgreSQL.

``TokenStore`` is the port the authenticator uses; ``SharedTokenStore`` shares one
token per instance between processes through a store of sealed tokens
(``SealedTokens``: :mod:`shared.storage.oauth_tokens` holds the SQL),
``MemoryTokenStore`` serves a process without a database. ``refresh`` is
single-flight: under a lock (an advisory lock across processes) it re-reads the
current token, returns it if it is still usable, and only otherwise calls the grant.

The database never holds a secret in clear (docs/architecture.md §6): token values are
sealed here, with AES-GCM under a key derived (HKDF-SHA256) from the instance's
resolved credential values, before they reach the storage layer. Only a process
that can read the instance's own credentials can open them; the database alone
reveals nothing. A token that does not open (the credentials changed) is treated
as absent and overwritten by the next grant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.storage.oauth_tokens import SealedToken

log = structlog.get_logger(__name__)

_NONCE_BYTES = 12
_HKDF_SALT = b"bss-sync/oauth_tokens/v1"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class Token:
    """An access token and what is known of its life. Secrets stay out of ``repr``."""

    access_token: str = dataclasses.field(repr=False)
    expires_at: datetime | None = None
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    obtained_at: datetime = dataclasses.field(default_factory=utcnow)

    def usable(self, now: datetime, margin: float) -> bool:
        """Whether to keep using it at ``now``: refreshed ``margin`` seconds before it
        expires (at most half its lifetime ahead, for short-lived tokens); a token
        without a known expiry is used until the server refuses it."""
        if self.expires_at is None:
            return True
        lifetime = max(0.0, (self.expires_at - self.obtained_at).total_seconds())
        ahead = min(margin, lifetime / 2)
        return now < self.expires_at - timedelta(seconds=ahead)


Fetch = Callable[[Token | None], Awaitable[Token]]
"""A grant: given the current token (``None`` if none), obtain a new one."""


class TokenStore(Protocol):
    """Where one instance's OAuth2 token lives between requests (and processes)."""

    async def load(self) -> Token | None:
        """The current token, or ``None``. Raises ``InfrastructureError``."""
        ...

    async def refresh(self, fetch: Fetch, usable: Callable[[Token], bool]) -> Token:
        """The current token if ``usable``, else the one ``fetch`` obtains, stored.

        One refresh at a time per instance; raises what ``fetch`` raises.
        """
        ...


class MemoryTokenStore:
    """A token shared by the tasks of this process only."""

    def __init__(self) -> None:
        self._token: Token | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> Token | None:
        return self._token

    async def refresh(self, fetch: Fetch, usable: Callable[[Token], bool]) -> Token:
        async with self._lock:
            if self._token is not None and usable(self._token):
                return self._token
            self._token = await fetch(self._token)
            return self._token


class TokenCipher:
    """AES-GCM sealing of token values under a key derived from credentials."""

    def __init__(self, key: bytes, instance_id: str) -> None:
        self._aead = AESGCM(key)
        self._instance_id = instance_id

    @classmethod
    def derive(cls, instance_id: str, credentials: Mapping[str, str]) -> TokenCipher:
        """A cipher whose key is HKDF-SHA256 over every resolved credential value of the
        instance (names included, length-prefixed), bound to the instance id."""
        material = b"".join(
            _framed(name) + _framed(credentials[name]) for name in sorted(credentials)
        )
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=_HKDF_SALT,
            info=instance_id.encode(),
        ).derive(material)
        return cls(key, instance_id)

    def seal(self, value: str, field: str) -> bytes:
        """``nonce || ciphertext+tag``; the instance and field are authenticated too."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode(), self._aad(field))

    def open(self, data: bytes, field: str) -> str | None:
        """The value sealed in ``data``, or ``None`` when this key cannot open it."""
        nonce, sealed = bytes(data[:_NONCE_BYTES]), bytes(data[_NONCE_BYTES:])
        try:
            return self._aead.decrypt(nonce, sealed, self._aad(field)).decode()
        except (InvalidTag, ValueError):
            return None

    def _aad(self, field: str) -> bytes:
        return f"{self._instance_id}/{field}".encode()

    def __repr__(self) -> str:
        return f"TokenCipher(instance={self._instance_id!r})"


def _framed(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data


class LockedSealedToken(Protocol):
    """A stored token under its instance's lock (the storage side of a refresh)."""

    current: SealedToken | None

    async def replace(self, token: SealedToken) -> None:
        """Store ``token``; it is committed when the lock is released."""
        ...


class SealedTokens(Protocol):
    """Where sealed tokens are kept (``shared.storage.oauth_tokens.SealedTokenStore``)."""

    async def get(self, instance_id: str) -> SealedToken | None:
        """The instance's stored token, or ``None``. Raises ``InfrastructureError``."""
        ...

    def locked(self, instance_id: str) -> AbstractAsyncContextManager[LockedSealedToken]:
        """The instance's stored token under a lock only one process holds at a time."""
        ...


class SharedTokenStore:
    """One instance's token, sealed with ``cipher``, shared by every process through
    ``tokens`` (``oauth_tokens`` in PostgreSQL).

    A refresh holds the instance's lock while it re-reads the stored token and, if it
    is still needed, calls the grant: other processes wait, then reuse the token it
    stored. Raises ``InfrastructureError`` when the storage fails.
    """

    def __init__(self, tokens: SealedTokens, instance_id: str, cipher: TokenCipher) -> None:
        self._tokens = tokens
        self.instance_id = instance_id
        self._cipher = cipher

    async def load(self) -> Token | None:
        return self._unseal(await self._tokens.get(self.instance_id))

    async def refresh(self, fetch: Fetch, usable: Callable[[Token], bool]) -> Token:
        async with self._tokens.locked(self.instance_id) as stored:
            current = self._unseal(stored.current)
            if current is not None and usable(current):
                return current
            token = await fetch(current)
            await stored.replace(self._seal(token))
        return token

    def _seal(self, token: Token) -> SealedToken:
        refresh = (self._cipher.seal(token.refresh_token, "refresh_token")
                   if token.refresh_token else None)
        return SealedToken(self._cipher.seal(token.access_token, "access_token"), refresh,
                           token.expires_at, token.obtained_at)

    def _unseal(self, sealed: SealedToken | None) -> Token | None:
        """The token in clear; ``None`` when there is none or it was sealed under other
        credentials (the next grant replaces it)."""
        if sealed is None:
            return None
        access = self._cipher.open(sealed.access_token, "access_token")
        refresh = (self._cipher.open(sealed.refresh_token, "refresh_token")
                   if sealed.refresh_token is not None else None)
        if access is None or (sealed.refresh_token is not None and refresh is None):
            log.warning("oauth_token.unreadable", instance_id=self.instance_id,
                        reason="sealed under other credentials; a new grant will replace it")
            return None
        return Token(access, sealed.expires_at, refresh, sealed.obtained_at)

    def __repr__(self) -> str:
        return f"SharedTokenStore(instance={self.instance_id!r})"
