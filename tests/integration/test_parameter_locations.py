"""Header and cookie parameters reach a real HTTP server where the vendor's spec puts them
(tests/data/vendor/crm.yaml): the listing's since value as ``If-Modified-Since``, the
tenant as a cookie, the API key from the instance's credential — and the query string
holds only the page parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.connector import ConnectorDocument, load_connector
from shared.connector.paging import first_page, list_request
from shared.http import InstanceEndpoint, ThirdPartyClient
from shared.transform import TransformContext
from tests.integration.http_stub import StubServer

CRM = Path(__file__).resolve().parents[2] / "tests" / "data" / "vendor" / "crm.yaml"
API_KEY = "crm-k3y-0042-S3cr3t"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture(scope="module")
def crm() -> ConnectorDocument:
    return load_connector(CRM)


@pytest.fixture
async def client(crm: ConnectorDocument, stub: StubServer,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ThirdPartyClient]:
    monkeypatch.setenv("T_CRM_KEY", API_KEY)
    endpoint = InstanceEndpoint("crm-1", server_url=stub.url, variables={"tenant": "acme"},
                                credentials={"apiKey": "env:T_CRM_KEY"})
    async with ThirdPartyClient(crm, endpoint) as made:
        yield made


async def test_the_listing_sends_its_since_value_as_a_header(crm, client, stub) -> None:
    call = crm.objects["Contact"].pull_list
    since = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    context = TransformContext(variables=crm.variables({"tenant": "acme"}))

    response = await client.send(list_request(call, client.base_url, context,
                                              first_page(call, since), since))

    assert response.status == 200
    [sent] = stub.requests
    assert sent.query == {"page": "1", "per_page": "50"}
    assert sent.headers["if-modified-since"] == "2025-03-01T12:30:00Z"
    assert sent.headers["cookie"] == "tenant=acme"
    assert sent.headers["x-api-key"] == API_KEY
