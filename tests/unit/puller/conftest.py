"""A puller wired to in-memory fakes and the Acme connector.

``world.handle(entity, record)`` runs a pull message through ``PullHandler`` as the
consumer would; ``world.pull(...)`` runs one ``RecordPull`` directly. ``world.audit``
holds the rows the handler writes itself (parents pulled first).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.puller.handler import PullHandler
from shared.connector import ConnectorDocument, load_connector
from shared.connector.payloads import PayloadChecker
from shared.messaging.codec import HandlerResult, InboundMessage
from shared.messaging.envelope import SyncMessage
from shared.storage.links import Link
from tests.unit.puller.fakes import FakeBssWrites
from tests.unit.pusher.fakes import (
    FakeAudit,
    FakeInstances,
    FakeLinkStore,
    FakeTarget,
    FakeThirdParty,
    instance,
)

ROOT = Path(__file__).resolve().parents[3]
ORG = "org-1"
INSTANCE = "acme-1"
ALL_ACTIONS = ("create", "update", "delete")
MESSAGE = "00000000-0000-4000-8000-000000000001"


@functools.cache
def acme() -> ConnectorDocument:
    return load_connector(ROOT / "connectors" / "acme-crm.json")


def acme_with(directory: Path, obj: str, **pull: Any) -> ConnectorDocument:
    """The Acme connector with ``pull`` keys of object ``obj`` replaced (``None``
    removes one), loaded from a copy in ``directory``."""
    document = json.loads((ROOT / "connectors" / "acme-crm.json").read_text())
    spec = document["x-synchronization"]["objects"][obj]["pull"]
    for key, value in pull.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    path = directory / "acme-crm.json"
    path.write_text(json.dumps(document))
    return load_connector(path)


def company(**changes: Any) -> dict[str, Any]:
    """An Acme company as the third party lists it (tests/data/acme), with ``changes``."""
    record = json.loads((ROOT / "tests" / "data" / "acme" / "company.json").read_text())
    record.update(changes)
    return record


def person(**changes: Any) -> dict[str, Any]:
    return {"id": 41, "firstName": "Ada", "lastName": "Lovelace", "email": "ada@globex.example",
            "companyId": 17, "primary": True, "updatedAt": "2025-06-01T10:30:00.000Z",
            **changes}


@dataclasses.dataclass
class World:
    """The puller and everything it talks to, in memory."""

    links: FakeLinkStore
    bss: FakeBssWrites
    remote: FakeThirdParty
    target: FakeTarget
    handler: PullHandler
    audit: FakeAudit

    def permit(self, *permissions: tuple[str, str]) -> None:
        """Replace the instance's pull permissions with ``(entity, action)`` pairs."""
        perms = frozenset((entity, "pull", action) for entity, action in permissions)
        self.use(dataclasses.replace(self.target.instance, permissions=perms))

    def use(self, inst: Any, connector: ConnectorDocument | None = None) -> None:
        self.target = dataclasses.replace(self.target, instance=inst,
                                          connector=connector or self.target.connector)
        self.handler.registry = FakeInstances(self.target)

    def link(self, entity: str, external_id: str) -> Link | None:
        return self.links._find(INSTANCE, entity, "external_id", external_id)

    def linked(self, entity: str, external_id: Any, bss_id: str,
               record: dict[str, Any] | None = None, *, pull_hash: str | None = None,
               in_bss: bool = True) -> Link:
        """An earlier sync left ``external_id`` linked to BSS record ``bss_id`` (still in
        the BSS unless ``in_bss`` is false)."""
        if in_bss:
            self.bss.put(ORG, entity, {**(record or {"name": "Old"}), "id": bss_id})
        link = self.links.seed(INSTANCE, entity, bss_id, external_id=str(external_id))
        return self.links._put(dataclasses.replace(link, pull_hash=pull_hash))

    async def handle(self, entity: str, record: dict[str, Any] | None = None, *,
                     external_id: str | None = None, action: str = "upsert",
                     message_id: str = MESSAGE, direction: str = "pull",
                     attempt: int = 0) -> HandlerResult:
        message = SyncMessage(id=message_id, direction=direction, org_id=ORG,
                              instance_id=INSTANCE, entity=entity, action=action,
                              trigger="manual", attempt=attempt,
                              created_at=datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
                              external_id=external_id, record=record)
        return await self.handler(InboundMessage(message, message.context()))


@pytest.fixture
def world() -> World:
    """Every pull action permitted on accounts, contacts and cases."""
    links = FakeLinkStore()
    bss = FakeBssWrites()
    remote = FakeThirdParty()
    connector = acme()
    target = FakeTarget(
        instance=instance(INSTANCE, org_id=ORG, permissions=[
            (entity, "pull", action) for entity in ("account", "contact", "case")
            for action in ALL_ACTIONS]),
        connector=connector, client=remote, checker=PayloadChecker(connector))
    audit = FakeAudit()
    handler = PullHandler(FakeInstances(target), links, bss, audit)
    return World(links, bss, remote, target, handler, audit)
