"""The pusher over the in-memory stores of tests/unit/pusher, sending through the real
third-party client: for tests of what reaches a real HTTP server (``http_stub``)."""

from __future__ import annotations

from collections.abc import Iterable

from services.pusher.handler import PushHandler
from shared.connector import ConnectorDocument
from shared.connector.payloads import PayloadChecker
from shared.http import ThirdPartyClient
from tests.unit.pusher.conftest import INSTANCE, ORG, World
from tests.unit.pusher.fakes import (
    FakeAudit,
    FakeBss,
    FakeClock,
    FakeInstances,
    FakeLinkStore,
    FakeTarget,
    instance,
)


def pusher_world(connector: ConnectorDocument, client: ThirdPartyClient, entity: str,
                 actions: Iterable[str] = ("create", "update")) -> World:
    """A ``World`` whose instance ``INSTANCE`` may push ``actions`` of ``entity``."""
    clock = FakeClock()
    links = FakeLinkStore(clock)
    target = FakeTarget(
        instance=instance(INSTANCE, org_id=ORG,
                          permissions=[(entity, "push", action) for action in actions]),
        connector=connector, client=client,  # type: ignore[arg-type]
        checker=PayloadChecker(connector))
    audit, bss = FakeAudit(), FakeBss()
    handler = PushHandler(FakeInstances(target), links, bss, audit, clock=clock)
    return World(links, bss, client, audit, clock, target, handler)  # type: ignore[arg-type]
