"""The host BSS's API, as bss-sync uses it (``schemas/bss-api.openapi.json``).

``get`` is what the pusher calls for every record. With ``batch_reads`` (the
default) concurrent calls are coalesced (``shared.batching``) into one
listing by ids per organization and entity — ``GET …/{entity}?id=a&id=b`` — so
one request serves many pushes. A BSS that ignores the ``id`` filter is noticed
(its answer holds records nobody asked for, or it refuses the parameter with a
400): the client logs it once and reads one record at a time from then on; the
answer is never trusted in that case.

One ``BssClient`` per process, pooled connections. Failures are translated at
this edge: timeouts, connection errors and 5xx/429 → ``BssUnavailable`` (retried);
other 4xx → ``BssRejected`` (dead-lettered with the BSS's problem details).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson
import structlog

from shared.batching import Coalescer
from shared.errors import BssConflict, BssRejected, BssUnavailable
from shared.http.httpx_transport import TransportKind, open_transport
from shared.http.settings import USER_AGENT
from shared.http.transport import BodyTooLarge, Fetched, NotHttpStatus
from shared.logging import redact
from shared.uri import path_segment

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)
ORIGIN_HEADER = "X-Sync-Origin"
#: An answer larger than this is refused (a page of 500 records is well under it).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Ids per listing by ids (the API's maximum).
MAX_IDS = 100

log = structlog.get_logger(__name__)
ReadKey = tuple[str, str, str]  # organization, entity, record id


class BssUnsupported(Exception):
    """The BSS does not implement an optional part of the API (the id filter)."""


@dataclasses.dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclasses.dataclass(frozen=True)
class Versioned:
    """A record as the BSS answered it, with its ``ETag`` (``None`` when it sent none)."""

    record: dict[str, Any]
    etag: str | None


class BssClient:
    """Reads and writes records of the host BSS. ``http_transport``: ``fast`` (ours) or
    ``httpx`` (httpx's default transport); ``None`` takes ``HTTP_TRANSPORT`` from the
    process's settings."""

    def __init__(self, base_url: str, *, token: str | None = None,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT,
                 limits: httpx.Limits = DEFAULT_LIMITS, batch_reads: bool = True,
                 http_transport: TransportKind | None = None) -> None:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self._headers = headers
        self._timeout = timeout.as_dict()
        # straight to the transport: no cookie jar, no redirects, one JSON body per answer
        self._transport = open_transport(http_transport,
                                         max_connections=limits.max_connections or 64)
        self.batch_reads = batch_reads
        self._reads: Coalescer[ReadKey, dict[str, Any] | None] = Coalescer(
            self._read_batch, max_batch=4 * MAX_IDS)
        self._wire_origin, self._wire_base = _wire_parts(self.base_url)

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> BssClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    @staticmethod
    def _path(org_id: str, entity: str, record_id: str | None = None) -> str:
        path = f"/organizations/{path_segment(org_id)}/{entity}"
        return path if record_id is None else f"{path}/{path_segment(record_id)}"

    async def get(self, org_id: str, entity: str, record_id: str) -> dict[str, Any] | None:
        """The record, or ``None`` when the BSS does not have it (deleted)."""
        if self.batch_reads:
            return await self._reads.submit((org_id, entity, record_id))
        return await self.get_one(org_id, entity, record_id)

    async def get_one(self, org_id: str, entity: str, record_id: str) -> dict[str, Any] | None:
        """``get`` with a request of its own."""
        response = await self._send("GET", self._path(org_id, entity, record_id))
        if response.status == 404:
            return None
        return self._json(response)

    async def read(self, org_id: str, entity: str, record_id: str) -> Versioned | None:
        """The record with its ETag (for ``If-Match``), ``None`` when the BSS does not
        have it. Never coalesced: the ETag is per record."""
        response = await self._send("GET", self._path(org_id, entity, record_id))
        if response.status == 404:
            return None
        return Versioned(self._json(response), response.headers.get("etag"))

    async def get_many(self, org_id: str, entity: str,
                       record_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The records among ``record_ids`` (at most ``MAX_IDS``) the BSS has, by id.

        Raises ``BssUnsupported`` when the BSS ignores or refuses the ``id`` filter.
        """
        wanted = set(record_ids)
        try:
            response = await self._send("GET", self._path(org_id, entity),
                                        params={"id": record_ids, "limit": len(record_ids)})
        except BssRejected as exc:
            if exc.http_status == 400:
                raise BssUnsupported(f"the BSS refuses the id filter: {exc}") from exc
            raise
        body = self._json(response)
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise BssUnavailable(f"the BSS answered a listing of {entity} without items")
        found: dict[str, dict[str, Any]] = {}
        for item in items:
            record_id = item.get("id") if isinstance(item, dict) else None
            if record_id not in wanted:
                raise BssUnsupported(f"the BSS answered a listing by ids with {entity} "
                                     f"{record_id!r}, which was not asked for")
            found[record_id] = item
        return found

    async def _read_batch(self, keys: list[ReadKey]) -> list[dict[str, Any] | BaseException | None]:
        """Serve coalesced ``get`` calls: one listing per organization, entity and
        ``MAX_IDS`` ids; one by one if the BSS turns out not to filter by id."""
        groups: dict[tuple[str, str], list[str]] = {}
        for org_id, entity, record_id in keys:
            ids = groups.setdefault((org_id, entity), [])
            if record_id not in ids:
                ids.append(record_id)
        chunks = [(org_id, entity, ids[i:i + MAX_IDS])
                  for (org_id, entity), ids in groups.items()
                  for i in range(0, len(ids), MAX_IDS)]
        answers = await asyncio.gather(*(self._read_chunk(*chunk) for chunk in chunks),
                                       return_exceptions=True)
        results: dict[ReadKey, dict[str, Any] | BaseException | None] = {}
        for (org_id, entity, ids), answer in zip(chunks, answers, strict=True):
            for record_id in ids:
                key = (org_id, entity, record_id)
                results[key] = answer if isinstance(answer, BaseException) else answer.get(
                    record_id)
        return [results[key] for key in keys]

    async def _read_chunk(self, org_id: str, entity: str,
                          ids: list[str]) -> dict[str, dict[str, Any]]:
        if self.batch_reads and len(ids) > 1:
            try:
                return await self.get_many(org_id, entity, ids)
            except BssUnsupported as exc:
                if self.batch_reads:
                    self.batch_reads = False
                    log.warning("bss.batch_reads_off", reason=str(exc),
                                hint="the BSS API lacks the id filter of listRecords; "
                                     "reading records one by one")
        records = await asyncio.gather(*(self.get_one(org_id, entity, i) for i in ids))
        return {i: r for i, r in zip(ids, records, strict=True) if r is not None}

    async def list_changed(self, org_id: str, entity: str, since: datetime | None, *,
                           limit: int = 500, cursor: str | None = None) -> Page:
        """One page of records changed at or after ``since`` (all records when ``None``)."""
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["updatedSince"] = since.isoformat()
        if cursor:
            params["cursor"] = cursor
        response = await self._send("GET", self._path(org_id, entity), params=params)
        body = self._json(response)
        return Page(list(body.get("items") or []), body.get("nextCursor"))

    async def iter_changed(self, org_id: str, entity: str, since: datetime | None, *,
                           limit: int = 500) -> AsyncIterator[dict[str, Any]]:
        """Every record changed at or after ``since``, page after page."""
        cursor = None
        while True:
            page = await self.list_changed(org_id, entity, since, limit=limit, cursor=cursor)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def create(self, org_id: str, entity: str, record: dict[str, Any], *,
                     origin: str | None, idempotency_key: str | None = None) -> dict[str, Any]:
        """Create a record; the BSS stamps ``origin`` on the resulting event (none: a
        write that is not a synchronization's, as a BSS user's)."""
        headers = {ORIGIN_HEADER: origin} if origin is not None else {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        response = await self._send("POST", self._path(org_id, entity), json_body=record,
                                    headers=headers)
        return self._json(response)

    async def update(self, org_id: str, entity: str, record_id: str, record: dict[str, Any], *,
                     origin: str) -> dict[str, Any] | None:
        """Replace a record (PUT); ``None`` when it no longer exists."""
        response = await self._send("PUT", self._path(org_id, entity, record_id),
                                    json_body=record, headers={ORIGIN_HEADER: origin})
        if response.status == 404:
            return None
        return self._json(response)

    async def patch(self, org_id: str, entity: str, record_id: str, changes: dict[str, Any], *,
                    origin: str, if_match: str | None = None) -> Versioned | None:
        """Merge-patch a record (RFC 7396), only if its ETag is still ``if_match`` when
        given; ``None`` when it no longer exists. Raises ``BssConflict`` on 412."""
        headers = {ORIGIN_HEADER: origin, "Content-Type": "application/merge-patch+json"}
        if if_match:
            headers["If-Match"] = if_match
        response = await self._send("PATCH", self._path(org_id, entity, record_id),
                                    json_body=changes, headers=headers)
        if response.status == 404:
            return None
        return Versioned(self._json(response), response.headers.get("etag"))

    async def delete(self, org_id: str, entity: str, record_id: str, *, origin: str,
                     if_match: str | None = None) -> bool:
        """Delete a record; ``False`` when it was already gone. Raises ``BssConflict``
        on 412 (``if_match`` no longer the record's ETag)."""
        headers = {ORIGIN_HEADER: origin}
        if if_match:
            headers["If-Match"] = if_match
        response = await self._send("DELETE", self._path(org_id, entity, record_id),
                                    headers=headers)
        return response.status != 404

    async def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                    json_body: Any = None, headers: dict[str, str] | None = None,
                    ) -> Fetched:
        content = None if json_body is None else _dumps(json_body)
        headers = {**self._headers, **(headers or {})}
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        query = "?" + urlencode(params, doseq=True) if params else ""
        target = self._wire_base + path + query
        try:
            if self._wire_origin is not None and _WIRE_TARGET.fullmatch(target) \
                    and "/." not in target:
                # straight to the wire: an httpx.Request (URL parsing, header
                # normalisation) cost as much CPU as the exchange itself
                response = await self._transport.fetch_raw(
                    self._wire_origin, method, target, headers.items(), content,
                    self._timeout, MAX_RESPONSE_BYTES)
            else:
                request = httpx.Request(method, self.base_url + path + query, headers=headers,
                                        content=content, extensions={"timeout": self._timeout})
                response = await self._transport.fetch(request, MAX_RESPONSE_BYTES)
        except BodyTooLarge as exc:
            raise BssUnavailable(f"the BSS answered {method} {path} with a body over "
                                 f"{exc.limit} bytes", http_status=exc.status) from None
        except NotHttpStatus as exc:
            raise BssUnavailable(f"the BSS answered {method} {path} with a status line that "
                                 f"is not HTTP: {exc.status_line}") from None
        except httpx.TimeoutException as exc:
            raise BssUnavailable(f"the BSS did not answer {method} {path} in time") from exc
        except httpx.HTTPError as exc:
            raise BssUnavailable(f"cannot reach the BSS for {method} {path}: "
                                 f"{type(exc).__name__}") from exc
        status = response.status
        if status == 404 or status < 400:
            return response
        detail = redact(response.content[:300].decode("utf-8", "replace"))
        if status == 412:
            raise BssConflict(f"the BSS record changed since it was read ({method} {path} "
                              f"answered 412): {detail}", http_status=status)
        if status >= 500 or status in (408, 425, 429):
            raise BssUnavailable(f"the BSS answered {status} to {method} {path}: {detail}",
                                 http_status=status)
        raise BssRejected(f"the BSS answered {status} to {method} {path}: {detail}",
                          http_status=status)

    @staticmethod
    def _json(response: Fetched) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass
        try:  # what orjson refuses that is still JSON (integers beyond 64 bits)
            return json.loads(response.content)
        except ValueError as exc:
            raise BssUnavailable(
                f"the BSS answered {response.status} with a body that is not JSON",
                http_status=response.status) from exc


_WIRE_TARGET = re.compile(r"/[!-\"$-~]*")  # printable ASCII but "#", no space


def _wire_parts(base_url: str) -> tuple[tuple[bytes, bytes, int] | None, str]:
    """The transport's origin and the path prefix of ``base_url`` when requests can go
    on the wire without httpx's URL handling (http or https, an ASCII host name or
    IPv4 address, no user info, a printable path); ``(None, "")`` otherwise."""
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        return None, ""
    host = parts.hostname or ""
    if (parts.scheme not in ("http", "https") or not host or not host.isascii()
            or ":" in host or "@" in parts.netloc or parts.query or parts.fragment
            or (parts.path and not _WIRE_TARGET.fullmatch(parts.path))):
        return None, ""
    default = 443 if parts.scheme == "https" else 80
    return (parts.scheme.encode(), host.encode(), port or default), parts.path


def _dumps(body: Any) -> bytes:
    """JSON bytes of a request body: orjson, or json for what orjson refuses (integers
    beyond 64 bits)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()
