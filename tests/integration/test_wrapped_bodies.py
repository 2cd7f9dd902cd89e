"""A vendor that wraps the one record it creates in an array (tests/data/vendor/
wrapped.yaml, a Zoho-like CRM: ``{"data": [{…}], "trigger": ["workflow"]}``), mapped
field by field with indexed targets (``data[0].Account_Name``): the pusher, with the
real third-party client, sends exactly that body to a real HTTP server, reads the new
id from inside the answer's array, updates through the extending transform, and
refuses — before sending anything — a record that leaves a required field of the
wrapped record empty.

No database or broker: the pusher's stores are the in-memory fakes of tests/unit/pusher,
the HTTP is real (tests/integration/http_stub.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.connector import ConnectorDocument, load_connector
from shared.connector.preview import preview_push
from shared.errors import SchemaViolation
from shared.http import InstanceEndpoint, ThirdPartyClient
from tests.integration.http_stub import StubServer
from tests.integration.real_client_pusher import pusher_world
from tests.unit.pusher.conftest import INSTANCE, World, sample

ROOT = Path(__file__).resolve().parents[2]
WRAPPED = ROOT / "tests" / "data" / "vendor" / "wrapped.yaml"
ACCOUNT = "acc_01HV3K8Q2Z7M4N5P6R7S8T9V0W"
ZOHO_ID = "4876876000000333001"


@pytest.fixture(scope="module")
def wrapped() -> ConnectorDocument:
    return load_connector(WRAPPED)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        server.answer("/v1/Accounts", 201, {"data": [
            {"code": "SUCCESS", "status": "success", "details": {"id": ZOHO_ID}}]})
        server.answer(f"/v1/Accounts/{ZOHO_ID}", 200, {"data": [
            {"code": "SUCCESS", "status": "success", "details": {"id": ZOHO_ID}}]})
        yield server


@pytest.fixture
async def client(
    wrapped: ConnectorDocument, stub: StubServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ThirdPartyClient]:
    monkeypatch.setenv("W_USERNAME", "crm-user")
    monkeypatch.setenv("W_PASSWORD", "crm-password")
    endpoint = InstanceEndpoint(
        INSTANCE, server_url=f"{stub.url}/v1",
        credentials={"username": "env:W_USERNAME", "password": "env:W_PASSWORD"})
    third_party = ThirdPartyClient(wrapped, endpoint)
    yield third_party
    await third_party.aclose()


@pytest.fixture
def world(wrapped: ConnectorDocument, client: ThirdPartyClient) -> World:
    return pusher_world(wrapped, client, "account")


def account(**changes: object) -> dict:
    return sample("account", **{"parentAccountId": None, **changes})


async def test_a_create_sends_the_record_wrapped_in_an_array(world, stub, wrapped) -> None:
    world.put("account", account())

    outcome = await world.run("account", ACCOUNT)

    assert (outcome.outcome, outcome.external_id) == ("created", ZOHO_ID)
    [sent] = stub.requests
    assert (sent.method, sent.path) == ("POST", "/v1/Accounts")
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.body) == {
        "data": [{
            "Account_Name": "Northwind Logistics",
            "Account_Number": "C-000412",
            "Website": "www.northwind-logistics.fr",
            "Phone": "+33 1 84 88 12 00",
            "Employees": 420,
            "Billing_Address": {"City": "Paris", "Country": "FR"},
            "Tag": [{"name": "key-account"}, {"name": "logistics"}],
        }],
        "trigger": ["workflow"],
    }
    assert world.link("account", ACCOUNT).external_id == ZOHO_ID
    preview = preview_push(wrapped, wrapped.objects["Account"], account(), "create",
                           server=f"{stub.url}/v1")
    assert preview.requests[0].body == json.loads(sent.body), "preview shows the body sent"


async def test_an_update_sends_the_extending_transforms_body(world, stub) -> None:
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id=ZOHO_ID, push_hash="old")
    world.put("account", account(tags=["logistics"], webSite=None))

    outcome = await world.run("account", ACCOUNT)

    assert outcome.outcome == "updated"
    [sent] = stub.requests
    assert (sent.method, sent.path) == ("PUT", f"/v1/Accounts/{ZOHO_ID}")
    assert json.loads(sent.body) == {
        "data": [{
            "Account_Name": "Northwind Logistics",
            "Account_Number": "C-000412",
            "Phone": "+33 1 84 88 12 00",
            "Employees": 420,
            "Billing_Address": {"City": "Paris", "Country": "FR"},
            "Tag": [{"name": "logistics"}],  # the second tag's element left out
            "Description": "Key account since 2019; 3 depots in Ile-de-France.",
        }],
        "trigger": ["approval"],
    }


async def test_a_required_field_of_the_wrapped_record_left_empty_sends_nothing(
    world, stub
) -> None:
    world.put("account", account(code=None))

    with pytest.raises(SchemaViolation) as caught:
        await world.handle("account", ACCOUNT)

    assert stub.requests == []
    assert "at /data/0: 'Account_Number' is a required property" in str(caught.value)
    assert world.link("account", ACCOUNT).last_error.startswith("SchemaViolation: ")
