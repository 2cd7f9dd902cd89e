"""The real adapters and the fakes satisfy the puller's ports, signature by signature
(the pusher's check, tests/unit/pusher/test_ports.py, applied to services.puller.ports)."""

from __future__ import annotations

import pytest

from services.puller import ports
from shared.bss import BssClient
from shared.http import ThirdPartyClient
from shared.runtime import InstanceContext, InstanceRegistry
from shared.storage.links import LinkStore
from tests.unit.puller.fakes import FakeBssWrites
from tests.unit.pusher import fakes, test_ports

CONFORMING = [
    (ports.Links, LinkStore), (ports.Links, fakes.FakeLinkStore),
    (ports.BssWrites, BssClient), (ports.BssWrites, FakeBssWrites),
    (ports.ThirdParty, ThirdPartyClient), (ports.ThirdParty, fakes.FakeThirdParty),
    (ports.PullSource, InstanceContext), (ports.PullSource, fakes.FakeTarget),
    (ports.Instances, InstanceRegistry), (ports.Instances, fakes.FakeInstances),
]


@pytest.mark.parametrize(("port", "adapter"), CONFORMING,
                         ids=[f"{a.__name__}-{p.__name__}" for p, a in CONFORMING])
def test_the_adapter_fits_the_port(port, adapter, monkeypatch):
    monkeypatch.setattr(test_ports, "NARROWER", {"InstanceContext": "PullSource",
                                                 "FakeTarget": "PullSource"})
    assert test_ports.mismatches(port, adapter) == []


def test_a_drifted_bss_client_does_not_fit(monkeypatch):
    class Drifted(FakeBssWrites):
        async def patch(self, org_id, entity, record_id, changes, *, origin):  # no if_match
            return None

    assert test_ports.mismatches(ports.BssWrites, Drifted) != []
