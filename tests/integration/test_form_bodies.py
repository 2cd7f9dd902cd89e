"""Form bodies reach a real HTTP server as the vendor's spec says (tests/data/vendor/
billing.yaml, a Stripe-like API): the pusher, with the real third-party client, pushes an
account whose body is ``application/x-www-form-urlencoded`` with ``deepObject`` fields;
a multipart upload goes out part by part; a body the form cannot carry is a schema
violation that sends nothing.

No database or broker: the pusher's stores are the in-memory fakes of tests/unit/pusher,
the HTTP is real (tests/integration/http_stub.py).
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from shared.connector import ConnectorDocument, load_connector
from shared.connector.document import CallSpec
from shared.connector.preview import preview_push
from shared.connector.request import plan_request
from shared.errors import SchemaViolation
from shared.http import InstanceEndpoint, ThirdPartyClient
from shared.transform import TransformContext
from tests.integration.http_stub import StubServer
from tests.integration.real_client_pusher import pusher_world
from tests.unit.pusher.conftest import INSTANCE, World, sample

ROOT = Path(__file__).resolve().parents[2]
BILLING = ROOT / "tests" / "data" / "vendor" / "billing.yaml"
ACCOUNT = "acc_01HV3K8Q2Z7M4N5P6R7S8T9V0W"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def billing() -> ConnectorDocument:
    return load_connector(BILLING)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
async def client(
    billing: ConnectorDocument, stub: StubServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ThirdPartyClient]:
    monkeypatch.setenv("T_USERNAME", "billing-user")
    monkeypatch.setenv("T_PASSWORD", "billing-password")
    endpoint = InstanceEndpoint(
        INSTANCE, server_url=f"{stub.url}/v1",
        credentials={"username": "env:T_USERNAME", "password": "env:T_PASSWORD"})
    third_party = ThirdPartyClient(billing, endpoint)
    yield third_party
    await third_party.aclose()


@pytest.fixture
def world(billing: ConnectorDocument, client: ThirdPartyClient) -> World:
    return pusher_world(billing, client, "account")


def account(**changes: object) -> dict:
    return sample("account", **{"parentAccountId": None, **changes})


async def test_a_deep_object_form_body_arrives_whole(world, stub, billing) -> None:
    world.put("account", account())

    outcome = await world.run("account", ACCOUNT)

    assert (outcome.outcome, outcome.external_id) == ("created", "rec-1")
    [sent] = stub.requests
    assert (sent.method, sent.path, sent.headers["content-type"]) == ("POST", "/v1/customers", FORM)
    assert parse_qsl(sent.body.decode(), strict_parsing=True) == [
        ("name", "Northwind Logistics"),
        ("email", "accounts@northwind-logistics.fr"),
        ("tax_exempt", "false"),
        ("locales", "fr-FR"), ("locales", "en-GB"),
        ("billing_address[line1]", "12 rue de la Paix"),
        ("billing_address[city]", "Paris"),
        ("billing_address[country]", "FR"),
        ("charges[0][amount]", "50000"), ("charges[0][currency]", "EUR"),
        ("charges[1][amount]", "4500"), ("charges[1][currency]", "EUR"),
        ("metadata[code]", "C-000412"),
        ("metadata[segment]", "Enterprise"),
    ]  # the nulls (description, billing_address.line2) left out, not sent as "None"
    preview = preview_push(billing, billing.objects["Customer"], account(), "create",
                           server=f"{stub.url}/v1")
    assert preview.requests[0].content == sent.body, "preview shows the bytes sent"
    assert sent.body.decode() in preview.render()


async def test_a_body_the_form_cannot_carry_is_a_schema_violation_and_sends_nothing(
    world, stub
) -> None:
    """updateCustomer declares no deepObject style for its list of charges: sent as
    plain form fields they would be lost, so the push fails (dead-lettered, as any schema
    violation) before anything is sent."""
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="cus_1", push_hash="old")
    world.put("account", account())

    with pytest.raises(SchemaViolation) as caught:
        await world.handle("account", ACCOUNT)

    assert stub.requests == []
    assert str(caught.value).startswith(f"the body cannot be sent as {FORM}: at /charges/0: ")
    assert "declare style deepObject for 'charges'" in str(caught.value)
    assert world.link("account", ACCOUNT).last_error.startswith("SchemaViolation: ")


async def test_the_request_schema_is_checked_on_the_body_before_it_is_encoded(
    world, stub
) -> None:
    world.put("account", account(name="N" * 61))

    with pytest.raises(SchemaViolation) as caught:
        await world.run("account", ACCOUNT)

    assert "at /name" in str(caught.value) and "too long" in str(caught.value)
    assert stub.requests == []


async def test_a_multipart_upload_goes_out_part_by_part(billing, client, stub) -> None:
    operation = billing.operations["uploadFile"]
    call = CallSpec("create", "/test", operation, {}, {}, None, {})
    body = {"purpose": "invoice", "file": "%PDF-1.4 …", "details": {"pages": 2, "ok": True},
            "link": {"create": True, "expires_at": 1718000000}, "tags": ["a", "b"],
            "note": None}
    plan = plan_request(call, base_url=f"{stub.url}/v1", data={}, context=TransformContext(),
                        body=body)

    response = await client.send(plan)

    assert response.status == 200
    [sent] = stub.requests
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + sent.headers["content-type"].encode() + b"\r\n\r\n" + sent.body)
    parts = [(p.get_param("name", header="content-disposition"), p.get_content_type(),
              p.get_payload(decode=True).decode()) for p in message.iter_parts()]
    assert parts == [
        ("purpose", "text/plain", "invoice"),
        ("file", "application/octet-stream", "%PDF-1.4 …"),
        ("details", "application/json", '{"pages":2,"ok":true}'),
        ("link[create]", "text/plain", "true"),
        ("link[expires_at]", "text/plain", "1718000000"),
        ("tags", "text/plain", "a"),
        ("tags", "text/plain", "b"),
    ]
    again = plan_request(call, base_url=f"{stub.url}/v1", data={},
                         context=TransformContext(), body=body)
    assert again.content == sent.body, "the same body is the same bytes (boundary included)"
