"""A 200 that carries an error in its body is the failure it is (tests/data/vendor/
invoicing.yaml): the pusher, through the real client and a real HTTP server, fails the
record with the vendor's message — no link, no ``created`` — while the same call's
real success still creates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.connector import ConnectorDocument, load_connector
from shared.errors import RemoteProtocolError, RemoteRejected
from shared.http import InstanceEndpoint, ThirdPartyClient
from tests.integration.http_stub import StubServer
from tests.integration.real_client_pusher import pusher_world
from tests.unit.pusher.conftest import INSTANCE, World, sample

INVOICING = Path(__file__).resolve().parents[2] / "tests" / "data" / "vendor" / "invoicing.yaml"
ACCOUNT = "acc_01HV3K8Q2Z7M4N5P6R7S8T9V0W"


@pytest.fixture(scope="module")
def invoicing() -> ConnectorDocument:
    return load_connector(INVOICING)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
async def world(invoicing: ConnectorDocument, stub: StubServer) -> AsyncIterator[World]:
    endpoint = InstanceEndpoint(INSTANCE, server_url=f"{stub.url}/api")
    async with ThirdPartyClient(invoicing, endpoint) as client:
        yield pusher_world(invoicing, client, "account")


def account() -> dict:
    return sample("account", parentAccountId=None)


async def test_a_200_saying_error_fails_the_create_with_the_vendors_message(
    world, stub
) -> None:
    stub.answer("/api/customers", 200, {"code": 1002,
                                        "message": "Invalid value passed for email"})
    world.put("account", account())

    with pytest.raises(RemoteRejected) as caught:
        await world.handle("account", ACCOUNT)

    assert str(caught.value) == (
        "POST /api/customers answered 200 with an error in its body: "
        "Invalid value passed for email")
    assert caught.value.http_status == 200
    assert caught.value.details["errorRule"] == "errorWhen 'code > 0', errorPointer '/message'"
    link = world.link("account", ACCOUNT)
    assert link is None or link.external_id is None, "nothing was created"
    assert link is None or link.last_error.startswith("RemoteRejected: ")
    assert [(r.entity, r.outcome) for r in world.audit.rows] == []  # the consumer audits it


async def test_the_same_call_answering_success_creates(world, stub) -> None:
    stub.answer("/api/customers", 200, {"code": 0, "message": "success",
                                        "customer": {"customer_id": "cu-9"}})
    world.put("account", account())

    outcome = await world.run("account", ACCOUNT)

    assert (outcome.outcome, outcome.external_id) == ("created", "cu-9")


async def test_an_error_pointer_alone_fails_when_a_value_is_there(world, stub) -> None:
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="cu-9", push_hash="old")
    world.put("account", account())
    stub.answer("/api/customers/cu-9", 200, {"error": "customer is locked"})

    with pytest.raises(RemoteRejected, match="answered 200 with an error in its body: "
                                             "customer is locked"):
        await world.run("account", ACCOUNT)

    for number, quiet in enumerate((None, "", False)):
        stub.answer("/api/customers/cu-9", 200, {"error": quiet})
        world.put("account", {**account(), "name": f"Northwind {number}"})  # a change
        outcome = await world.run("account", ACCOUNT, f"m-{number}")
        assert (outcome.outcome, outcome.external_id) == ("updated", "cu-9")


async def test_an_error_when_that_cannot_be_evaluated_is_a_protocol_error(world, stub) -> None:
    stub.answer("/api/customers", 200, {"code": "zero"})
    world.put("account", account())

    with pytest.raises(RemoteProtocolError, match="errorWhen failed on the answer"):
        await world.run("account", ACCOUNT)
