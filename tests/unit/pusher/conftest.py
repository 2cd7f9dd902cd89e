"""A pusher wired to in-memory fakes (tests/unit/pusher/fakes.py) and the Acme connector.

``world.handle(entity, record_id)`` runs a push message through ``PushHandler`` as the
consumer would; ``world.push(...)`` runs one ``RecordPush`` directly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.pusher.handler import PushHandler
from services.pusher.outcome import PushOutcome
from services.pusher.push import RecordPush
from shared.connector import ConnectorDocument, load_connector
from shared.connector.payloads import PayloadChecker
from shared.messaging.codec import HandlerResult, InboundMessage
from shared.messaging.envelope import SyncMessage
from tests.unit.pusher.fakes import (
    FakeAudit,
    FakeBss,
    FakeClock,
    FakeInstances,
    FakeLinkStore,
    FakeTarget,
    FakeThirdParty,
    instance,
)

ROOT = Path(__file__).resolve().parents[3]
ENTITIES = ROOT / "tests" / "data" / "entities"
ORG = "org-1"
INSTANCE = "acme-1"
ALL_ACTIONS = ("create", "update", "delete")


@functools.cache
def acme() -> ConnectorDocument:
    return load_connector(ROOT / "connectors" / "acme-crm.json")


def sample(entity: str, **changes: Any) -> dict[str, Any]:
    """A canonical record of ``entity`` (tests/data/entities), with ``changes``."""
    record = json.loads((ENTITIES / f"{entity}.json").read_text())
    record.update(changes)
    return record


@dataclasses.dataclass
class World:
    """The pusher and everything it talks to, in memory."""

    links: FakeLinkStore
    bss: FakeBss
    remote: FakeThirdParty
    audit: FakeAudit
    clock: FakeClock
    target: FakeTarget
    handler: PushHandler

    def permit(self, *permissions: tuple[str, str]) -> None:
        """Replace the instance's push permissions with ``(entity, action)`` pairs."""
        perms = frozenset((entity, "push", action) for entity, action in permissions)
        self.target = dataclasses.replace(
            self.target, instance=dataclasses.replace(self.target.instance, permissions=perms))
        self.handler.registry = FakeInstances(self.target)

    def put(self, entity: str, record: dict[str, Any]) -> dict[str, Any]:
        self.bss.put(ORG, entity, record)
        return record

    def link(self, entity: str, bss_id: str) -> Any:
        return self.links.get(INSTANCE, entity, bss_id)

    def push(self, entity: str, record_id: str, message_id: str = "m-1", *,
             depth: int = 0) -> RecordPush:
        obj = self.target.connector.objects_for(entity)[0]
        return RecordPush(ctx=self.target, obj=obj, org_id=ORG, record_id=record_id,
                          message_id=message_id, links=self.links, bss=self.bss,
                          parents=self.handler, depth=depth, clock=self.clock)

    async def run(self, entity: str, record_id: str, message_id: str = "m-1", *,
                  depth: int = 0) -> PushOutcome:
        return await self.push(entity, record_id, message_id, depth=depth).run()

    async def handle(self, entity: str, record_id: str, message_id: str = "m-1",
                     action: str = "updated", attempt: int = 0) -> HandlerResult:
        message = SyncMessage(id=message_id, direction="push", org_id=ORG,
                              instance_id=INSTANCE, entity=entity, action=action,
                              trigger="event", attempt=attempt,
                              created_at=datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
                              record_id=record_id)
        return await self.handler(InboundMessage(message, message.context()))


@pytest.fixture
def world() -> World:
    """Every action permitted on accounts, contacts and cases."""
    clock = FakeClock()
    links = FakeLinkStore(clock)
    bss = FakeBss()
    remote = FakeThirdParty()
    audit = FakeAudit()
    connector = acme()
    target = FakeTarget(
        instance=instance(INSTANCE, org_id=ORG, permissions=[
            (entity, "push", action) for entity in ("account", "contact", "case")
            for action in ALL_ACTIONS]),
        connector=connector, client=remote, checker=PayloadChecker(connector))
    handler = PushHandler(FakeInstances(target), links, bss, audit, clock=clock)
    return World(links, bss, remote, audit, clock, target, handler)
