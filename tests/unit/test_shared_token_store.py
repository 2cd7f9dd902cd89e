"""SharedTokenStore: sealing before storage, reuse, unreadable tokens, single flight.

The store of sealed tokens is an in-memory fake of the ``SealedTokens`` port (the
PostgreSQL one, ``shared.storage.oauth_tokens``, is exercised by
tests/integration/test_http_client.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from shared.http.tokens import Fetch, SharedTokenStore, Token, TokenCipher
from shared.storage.oauth_tokens import SealedToken

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CREDENTIALS = {"clientId": "cid", "clientSecret": "s3cr3t"}


class _Locked:
    def __init__(self, rows: dict[str, SealedToken], instance_id: str) -> None:
        self._rows, self._instance_id = rows, instance_id
        self.current = rows.get(instance_id)

    async def replace(self, token: SealedToken) -> None:
        self._rows[self._instance_id] = self.current = token


class MemorySealedTokens:
    """Sealed tokens in a dict, one lock for all (what the port promises, nothing more)."""

    def __init__(self) -> None:
        self.rows: dict[str, SealedToken] = {}
        self._lock = asyncio.Lock()

    async def get(self, instance_id: str) -> SealedToken | None:
        return self.rows.get(instance_id)

    @asynccontextmanager
    async def locked(self, instance_id: str) -> AsyncIterator[_Locked]:
        async with self._lock:
            yield _Locked(self.rows, instance_id)


def store(tokens: MemorySealedTokens, credentials: dict[str, str] = CREDENTIALS
          ) -> SharedTokenStore:
    return SharedTokenStore(tokens, "inst-1", TokenCipher.derive("inst-1", credentials))


def grant(value: str, calls: list[Token | None]) -> Fetch:
    async def fetch(current: Token | None) -> Token:
        calls.append(current)
        await asyncio.sleep(0)  # others may run meanwhile: they must wait for the lock
        return Token(value, T0 + timedelta(hours=1), f"refresh-{value}", T0)

    return fetch


async def test_a_token_is_sealed_before_it_is_stored_and_opened_when_loaded() -> None:
    tokens, calls = MemorySealedTokens(), []
    token = await store(tokens).refresh(grant("at-secret", calls), lambda _t: True)
    assert token.access_token == "at-secret" and calls == [None]
    stored = tokens.rows["inst-1"]
    assert b"at-secret" not in stored.access_token
    assert stored.refresh_token is not None and b"refresh-at-secret" not in stored.refresh_token
    assert (stored.expires_at, stored.obtained_at) == (T0 + timedelta(hours=1), T0)
    assert await store(tokens).load() == token  # another process, same credentials


async def test_a_usable_stored_token_is_reused_without_a_grant() -> None:
    tokens, calls = MemorySealedTokens(), []
    first = await store(tokens).refresh(grant("one", calls), lambda _t: True)
    again = await store(tokens).refresh(grant("two", calls), lambda t: t.access_token == "one")
    assert again == first and len(calls) == 1


async def test_an_unusable_token_is_handed_to_the_grant_and_replaced() -> None:
    tokens, calls = MemorySealedTokens(), []
    first = await store(tokens).refresh(grant("one", calls), lambda _t: True)
    second = await store(tokens).refresh(grant("two", calls), lambda _t: False)
    assert calls == [None, first]
    assert second.access_token == "two" and await store(tokens).load() == second


async def test_a_token_sealed_under_other_credentials_counts_as_absent() -> None:
    tokens, calls = MemorySealedTokens(), []
    await store(tokens).refresh(grant("old", calls), lambda _t: True)
    rotated = store(tokens, {**CREDENTIALS, "clientSecret": "rotated"})
    assert await rotated.load() is None
    token = await rotated.refresh(grant("new", calls), lambda _t: True)
    assert calls == [None, None] and token.access_token == "new"
    assert await rotated.load() == token


async def test_concurrent_refreshes_make_one_grant() -> None:
    tokens, calls = MemorySealedTokens(), []
    shared = store(tokens)
    results = await asyncio.gather(*(shared.refresh(grant("only", calls), lambda _t: True)
                                     for _ in range(5)))
    assert len(calls) == 1 and {t.access_token for t in results} == {"only"}
