"""The sandbox BSS as an ASGI app: ``schemas/bss-api.openapi.json`` over PostgreSQL.

    GET    /health
    GET    /organizations/{orgId}/{entity}          listRecords (updatedSince, id, limit, cursor)
    POST   /organizations/{orgId}/{entity}          createRecord (Idempotency-Key)
    GET    /organizations/{orgId}/{entity}/{id}     getRecord
    PUT    /organizations/{orgId}/{entity}/{id}     updateRecord (If-Match)
    PATCH  /organizations/{orgId}/{entity}/{id}     patchRecord (merge patch, If-Match)
    DELETE /organizations/{orgId}/{entity}/{id}     deleteRecord (If-Match)

Writes carrying ``X-Sync-Origin`` produce events with that origin (unless the setting
``copy_origin`` is off: then the header is checked and dropped). Handlers stay
lean: no per-request schema compilation, one pooled query per read, the stored
JSON text passed through as it is. :func:`create_app` is the factory.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import __version__
from sandbox.migration import migrate
from sandbox.problems import (
    ApiProblem,
    BearerAuth,
    on_api_problem,
    on_http_exception,
    on_unexpected,
    problem_response,
)
from sandbox.records import decode_cursor, parse_instant
from sandbox.relay import OutboxRelay
from sandbox.settings import SandboxSettings
from sandbox.statistics import RecordStatistics
from sandbox.store import (
    InvalidRecord,
    PreconditionFailed,
    RecordNotFound,
    RecordStore,
    StoredRecord,
    Write,
)
from sandbox.validation import warm_up
from shared.errors import InfrastructureError
from shared.schemas import ENTITIES
from shared.storage.db import Database

log = structlog.get_logger("sandbox.app")

JSON = "application/json"
MAX_BODY = 1024 * 1024
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_IDS = 100
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ENTITIES = frozenset(ENTITIES)


class RecordApi:
    """The record endpoints over a :class:`RecordStore`."""

    def __init__(self, store: RecordStore, *, copy_origin: bool = True) -> None:
        self.store = store
        self.copy_origin = copy_origin

    async def collection(self, request: Request) -> Response:
        org_id, entity = _collection(request)
        if request.method == "GET":
            return await self._list(request, org_id, entity)
        body = await _json_object(request)
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 255:
            raise ApiProblem(400, "Idempotency-Key must be 1 to 255 characters")
        write = Write(org_id, entity, self._origin(request))
        stored = await self.store.create(write, body, idempotency_key=key)
        location = f"/organizations/{org_id}/{entity}/{stored.id}"
        return _record(stored, 201, location=location)

    async def item(self, request: Request) -> Response:
        org_id, entity = _collection(request)
        record_id = request.path_params["record_id"]
        method = request.method
        if method == "GET":
            return _record(await self.store.get(org_id, entity, record_id))
        write = Write(org_id, entity, self._origin(request))
        if_match = request.headers.get("if-match")
        if method == "DELETE":
            await self.store.delete(write, record_id, if_match=if_match)
            return Response(status_code=204)
        body = await _json_object(request)
        if method == "PUT":
            return _record(await self.store.replace(write, record_id, body, if_match=if_match))
        return _record(await self.store.patch(write, record_id, body, if_match=if_match))

    def _origin(self, request: Request) -> str | None:
        """The write's origin for its event: its ``X-Sync-Origin`` (checked), unless the
        sandbox is set not to copy it."""
        origin = _origin(request)
        return origin if self.copy_origin else None

    async def _list(self, request: Request, org_id: str, entity: str) -> Response:
        query = request.query_params
        since = _instant(query.get("updatedSince"))
        ids = query.getlist("id")
        if ids:
            if len(ids) > MAX_IDS or not all(1 <= len(i) <= 255 for i in ids):
                raise ApiProblem(400, f"id: 1 to {MAX_IDS} ids of 1 to 255 characters")
            if "cursor" in query:
                raise ApiProblem(400, "id and cursor cannot be combined: a listing by ids "
                                      "is one page")
            page = await self.store.list_ids(org_id, entity, ids, since=since)
            return Response(page.to_json(), media_type=JSON)
        after = _cursor(query.get("cursor"))
        limit = _limit(query.get("limit"))
        page = await self.store.list_changed(org_id, entity, since=since, after=after,
                                             limit=limit)
        return Response(page.to_json(), media_type=JSON)


# ---------------------------------------------------------------------- request parsing


def _collection(request: Request) -> tuple[str, str]:
    params = request.path_params
    entity = params["entity"]
    if entity not in _ENTITIES:
        raise ApiProblem(404, f"unknown entity {entity!r}; entities: {', '.join(ENTITIES)}")
    org_id = params["org_id"]
    if not _TOKEN.match(org_id):
        raise ApiProblem(400, "orgId must be 1 to 128 letters, digits, '_' or '-'")
    return org_id, entity


def _origin(request: Request) -> str | None:
    origin = request.headers.get("x-sync-origin")
    if origin is not None and not _TOKEN.match(origin):
        raise ApiProblem(400, "X-Sync-Origin must be 1 to 128 letters, digits, '_' or '-'")
    return origin


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise ApiProblem(400, "the request needs a JSON body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiProblem(422, "the body must be a JSON object",
                         errors=[{"pointer": "", "detail": "must be a JSON object"}])
    return body


def _instant(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise ApiProblem(400, f"updatedSince must be an RFC 3339 date-time with its offset "
                              f"(2025-03-01T23:00:00Z), not {text!r}") from exc


def _cursor(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return decode_cursor(text)
    except ValueError as exc:
        raise ApiProblem(400, "cursor is not one this API returned; restart the listing") from exc


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiProblem(400, f"limit must be an integer from 1 to {MAX_LIMIT}, not {text!r}")
    return limit


def _record(stored: StoredRecord, status: int = 200, *, location: str | None = None) -> Response:
    headers = {"ETag": stored.etag}
    if location is not None:
        headers["Location"] = location
    return Response(stored.text, status, headers=headers, media_type=JSON)


# ---------------------------------------------------------------------- domain errors


async def _on_not_found(request: Request, exc: Exception) -> Response:
    return problem_response(404, f"no such record: {request.url.path}",
                            instance=request.url.path)


async def _on_precondition(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PreconditionFailed)
    return problem_response(412, f"If-Match does not match; the current ETag is "
                                 f"{exc.current_etag}", headers={"ETag": exc.current_etag},
                            instance=request.url.path)


async def _on_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRecord)
    return problem_response(422, "the record does not match its entity's schema",
                            errors=[p.as_json() for p in exc.problems],
                            instance=request.url.path)


async def _on_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("storage unavailable", error=str(exc), path=request.url.path)
    return problem_response(503, "storage unavailable; retry later",
                            headers={"Retry-After": "1"}, instance=request.url.path)


# ---------------------------------------------------------------------- the app


class Sandbox:
    """The app's parts: database, store, relay; opened and closed by the lifespan."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, settings.schema, min_size=settings.pool_min,
                           max_size=settings.pool_max, application_name="bss-sync sandbox")
        self.store = RecordStore(self.db, RecordStatistics(self.db,
                                                           after=settings.analyze_after))
        self.relay = OutboxRelay(self.db, settings) if settings.relay_enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.db.open()
        await migrate(self.db, self.settings.schema)
        warm_up()
        if self.relay is not None:
            self.relay.start()
        try:
            yield
        finally:
            if self.relay is not None:
                await self.relay.stop()
            await self.store.statistics.close()
            await self.db.close()

    async def health(self, request: Request) -> Response:
        try:
            await self.db.execute("SELECT 1")
        except InfrastructureError as exc:
            log.warning("storage unavailable", error=str(exc))
            return problem_response(503, "storage unavailable; retry later",
                                    headers={"Retry-After": "1"})
        state = "disabled" if self.relay is None else self.relay.state
        body = {"status": "ok", "version": __version__, "relay": state}
        return Response(json.dumps(body), media_type=JSON)


def create_app(settings: SandboxSettings | None = None) -> Starlette:
    """The sandbox BSS app for ``settings`` (default: from the environment).

    Nothing connects until the ASGI lifespan starts: then the pool opens, the
    schema is migrated and the outbox relay starts (unless disabled).
    """
    settings = settings or SandboxSettings.from_env()
    sandbox = Sandbox(settings)
    api = RecordApi(sandbox.store, copy_origin=settings.copy_origin)
    routes = [
        Route("/health", sandbox.health, methods=["GET"]),
        Route("/organizations/{org_id}/{entity}", api.collection, methods=["GET", "POST"]),
        Route("/organizations/{org_id}/{entity}/{record_id}", api.item,
              methods=["GET", "PUT", "PATCH", "DELETE"]),
    ]
    middleware = [Middleware(BearerAuth, token=settings.token)] if settings.token else []
    app = Starlette(
        routes=routes, middleware=middleware, lifespan=sandbox.lifespan, max_body_size=MAX_BODY,
        exception_handlers={
            ApiProblem: on_api_problem,
            HTTPException: on_http_exception,
            RecordNotFound: _on_not_found,
            PreconditionFailed: _on_precondition,
            InvalidRecord: _on_invalid,
            InfrastructureError: _on_unavailable,
            Exception: on_unexpected,
        },
    )
    app.state.sandbox = sandbox
    return app
