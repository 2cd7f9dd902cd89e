"""Instances as a service process works with them: configuration, compiled connector,
HTTP client, payload checker — built once, cached, rebuilt when the configuration changes.

docs/architecture.md §5 step 1: "load the instance (cached, invalidated on config change)". A
cached instance is re-read (one indexed row) at most every ``ttl`` seconds; when its
``updated_at`` or its connector's content hash moved, it is rebuilt. ``bss-sync
apply`` bumps ``updated_at`` on any change, so a change takes effect within ``ttl``.
Compiled connectors are shared by content hash; the old HTTP client of a rebuilt
instance is closed after a grace period (requests in flight finish on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from shared.connector import ConnectorDocument, DocumentInvalid, document_from_bundle
from shared.connector.payloads import PayloadChecker
from shared.errors import ConfigurationError
from shared.http import ThirdPartyClient
from shared.http.settings import InstanceEndpoint
from shared.storage.connectors import ConnectorStore
from shared.storage.db import Database
from shared.storage.instances import Instance, InstanceStore
from shared.transform import LinkLookup, LookupTable, TransformContext

log = structlog.get_logger("shared.runtime")
DEFAULT_TTL = 5.0
CLOSE_GRACE = 60.0


@dataclasses.dataclass(frozen=True)
class InstanceContext:
    """Everything needed to process one instance's records in this process."""

    instance: Instance
    connector: ConnectorDocument
    client: ThirdPartyClient
    checker: PayloadChecker
    lookups: Mapping[str, LookupTable]
    variables: Mapping[str, Any]

    def transform_context(self, links: LinkLookup | None) -> TransformContext:
        return TransformContext(lookups=self.lookups, links=links, variables=self.variables)


def effective_lookups(connector: ConnectorDocument,
                      overrides: Mapping[str, Any]) -> dict[str, LookupTable]:
    """The connector's tables with the instance's entries over them (instance tables the
    connector lacks are added)."""
    tables = dict(connector.lookups)
    for name, entries in overrides.items():
        if not isinstance(entries, Mapping):
            continue
        base = tables.get(name)
        tables[name] = (base.overlaid(entries) if base is not None
                        else LookupTable.from_spec(name, entries))
    return tables


def effective_variables(connector: ConnectorDocument, instance: Instance) -> dict[str, Any]:
    """What ``$var(name)`` sees for an instance (see ``ConnectorDocument.variables``)."""
    return connector.variables(instance.variables or {})


class InstanceRegistry:
    """Caches ``InstanceContext``s for one process."""

    def __init__(self, db: Database, *, ttl: float = DEFAULT_TTL,
                 share_tokens: bool = True) -> None:
        self._db = db
        self._instances = InstanceStore(db)
        self._connectors = ConnectorStore(db)
        self._ttl = ttl
        self._share_tokens = share_tokens
        self._cache: dict[str, tuple[float, InstanceContext | None]] = {}
        self._compiled: dict[str, ConnectorDocument] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def get(self, instance_id: str) -> InstanceContext | None:
        """The instance's context, ``None`` when no such instance exists.

        Raises ``ConfigurationError`` when its connector cannot be compiled or its
        client cannot be built (missing credential…), ``InfrastructureError``.
        """
        cached = self._cache.get(instance_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(instance_id)
            if cached is not None and time.monotonic() - cached[0] < self._ttl:
                return cached[1]
            context = await self._load(instance_id, cached[1] if cached else None)
            self._cache[instance_id] = (time.monotonic(), context)
            return context

    async def _load(self, instance_id: str,
                    previous: InstanceContext | None) -> InstanceContext | None:
        instance = await self._instances.get(instance_id)
        if instance is None:
            self._retire(previous)
            return None
        if (previous is not None and previous.instance.updated_at == instance.updated_at
                and previous.connector.sha256 == instance.connector_sha256
                and previous.instance.enabled == instance.enabled):
            return previous
        connector = await self._connector(instance)
        endpoint = InstanceEndpoint.of(instance)
        client = ThirdPartyClient(connector, endpoint,
                                  db=self._db if self._share_tokens else None)
        context = InstanceContext(
            instance=instance, connector=connector, client=client,
            checker=PayloadChecker(connector),
            lookups=effective_lookups(connector, instance.lookups),
            variables=effective_variables(connector, instance))
        self._retire(previous)
        log.info("instance.loaded", instance_id=instance.id, connector=instance.connector_id,
                 sha256=connector.sha256[:12], enabled=instance.enabled)
        return context

    async def _connector(self, instance: Instance) -> ConnectorDocument:
        compiled = self._compiled.get(instance.connector_sha256)
        if compiled is not None:
            return compiled
        stored = await self._connectors.get(instance.connector_id)
        if stored is None:
            raise ConfigurationError(f"instance {instance.id}: connector "
                                     f"{instance.connector_id!r} is not in the database")
        try:
            compiled = document_from_bundle(stored.document, title=stored.title,
                                            version=stored.version)
        except DocumentInvalid as exc:
            first = exc.problems[0].format() if exc.problems else "no detail"
            raise ConfigurationError(f"connector {instance.connector_id} stored in the database "
                                     f"is invalid: {first}") from None
        self._compiled[compiled.sha256] = compiled
        return compiled

    def _retire(self, context: InstanceContext | None) -> None:
        if context is None:
            return

        async def close_later() -> None:
            await asyncio.sleep(CLOSE_GRACE)
            await context.client.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close every client (at shutdown)."""
        for task in list(self._closing):
            task.cancel()
        for _, context in self._cache.values():
            if context is not None:
                with contextlib.suppress(Exception):
                    await context.client.aclose()
        self._cache.clear()


class GetsInstances(Protocol):
    async def get(self, instance_id: str) -> InstanceContext | None: ...


async def instance_for(registry: GetsInstances, instance_id: str,
                       org_id: str) -> InstanceContext | str:
    """The context of a message's instance, or why the message is for none (a skip
    reason): the instance does not exist, is inactive, or belongs to another org."""
    ctx = await registry.get(instance_id)
    if ctx is None:
        return f"instance {instance_id} does not exist"
    if not ctx.instance.enabled:
        return f"instance {instance_id} is inactive"
    if ctx.instance.org_id != org_id:
        return f"instance {instance_id} belongs to another organization"
    return ctx
