"""The third-party client against a real local HTTP server (``http_stub``): credentials
placed right, OAuth2 tokens shared and refreshed, outcomes classified, limits honoured.

The tests that share tokens through PostgreSQL use the database fixtures and are
marked ``integration``; the others need only the loopback interface.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from shared.connector import ConnectorDocument, load_connector
from shared.connector.request import RequestPlan, plan_request
from shared.errors import (
    AuthenticationFailed,
    ConfigurationError,
    MappingError,
    RateLimited,
    RemoteConflict,
    RemoteProtocolError,
    RemoteRejected,
    RemoteUnavailable,
    UnsafeRequest,
)
from shared.http import ClientOptions, InstanceEndpoint, ThirdPartyClient
from shared.storage.db import Database
from shared.transform import UNDEFINED, TransformContext
from tests.fixtures.vendor_specs import VendorSpecs
from tests.integration.http_stub import StubServer

ROOT = Path(__file__).resolve().parents[2]

SCHEMES = {
    "headerKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
    "queryKey": {"type": "apiKey", "in": "query", "name": "api_key"},
    "cookieKey": {"type": "apiKey", "in": "cookie", "name": "session_key"},
    "basic": {"type": "http", "scheme": "basic"},
    "bearer": {"type": "http", "scheme": "bearer"},
    "oauth": {
        "type": "oauth2",
        "flows": {
            "clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {}},
            "password": {"tokenUrl": "/oauth/token", "scopes": {}},
        },
    },
}
JSON_OK = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}


def _paths() -> dict[str, Any]:
    get = {"responses": {"200": JSON_OK}}
    paths: dict[str, Any] = {
        f"/{name}": {"get": {"operationId": f"get_{name}", **get}}
        for name in ("text", "huge", "redirect", "loop")
    }
    no_content = {"204": {"description": "no content"}}
    paths["/empty"] = {"get": {"operationId": "get_empty", "responses": no_content}}
    for name in ("echo", "status", "sleep", "protected"):  # sleep: the stub's slow answer
        param = {"name": "p", "in": "path", "required": True, "schema": {"type": "string"}}
        paths[f"/{name}/{{p}}"] = {
            "get": {"operationId": f"get_{name}", "parameters": [param], **get},
            "post": {
                "operationId": f"post_{name}",
                "parameters": [param],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"201": JSON_OK},
            },
        }
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
              for n in ("k", "code")]
    paths["/once/{k}/{code}"] = {"get": {"operationId": "get_once", "parameters": params, **get}}
    return paths


def make_connector(
    tmp_path: Path, security: list[dict[str, list[str]]], **sync: Any
) -> ConnectorDocument:
    """A connector over the stub's routes with every kind of security scheme."""
    document = {
        "openapi": "3.0.3",
        "info": {"title": "Stub", "version": "1"},
        "servers": [{"url": "http://127.0.0.1:1"}],
        "security": security,
        "components": {"securitySchemes": SCHEMES},
        "paths": _paths(),
        "x-synchronization": {
            "objects": {
                "Thing": {
                    "entity": "account",
                    "push": {"create": {"operation": "post_echo", "params": {"p": "things"}}},
                }
            },
            **sync,
        },
    }
    path = tmp_path / f"stub-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(document))
    return load_connector(path)


def plan(
    document: ConnectorDocument, operation: str, url: str, body: Any = UNDEFINED
) -> RequestPlan:
    headers = {"Accept": "application/json"}
    if body is not UNDEFINED:
        headers["Content-Type"] = "application/json"
    op = document.operations[operation]
    return RequestPlan(op.method, url, headers, body, op)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credential values in the environment; references are ``env:T_<NAME>``."""
    values = {
        "apiKey": "k3y-S3cr3t-0042-header",
        "username": "the-user",
        "password": "the-password",
        "token": "b3arer-S3cr3t-0042",
        "clientId": "the-client",
        "clientSecret": "the-client-secret",
    }
    for name, value in values.items():
        monkeypatch.setenv(f"T_{name.upper()}", value)
    return values


def refs(*names: str) -> dict[str, str]:
    return {name: f"env:T_{name.upper()}" for name in names}


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., ThirdPartyClient]]:
    """Builds clients on the stub; closes them all after the test."""
    made: list[ThirdPartyClient] = []

    def build(
        document: ConnectorDocument,
        server: str,
        credentials: dict[str, str],
        settings: dict[str, Any] | None = None,
        instance_id: str = "inst-1",
        **kw: Any,
    ) -> ThirdPartyClient:
        endpoint = InstanceEndpoint(
            instance_id, server_url=server, credentials=credentials, settings=settings or {}
        )
        client = ThirdPartyClient(document, endpoint, **kw)
        made.append(client)
        return client

    yield build
    for client in made:
        await client.aclose()


# -- credentials placed right, and never shown ---------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "names", "check"),
    [
        ("headerKey", ("apiKey",), lambda r, s: r["headers"]["x-api-key"] == s["apiKey"]),
        ("queryKey", ("apiKey",), lambda r, s: r["query"]["api_key"] == s["apiKey"]),
        ("cookieKey", ("apiKey",),
         lambda r, s: r["headers"]["cookie"] == f"session_key={s['apiKey']}"),
        ("basic", ("username", "password"),
         lambda r, s: r["headers"]["authorization"]
         == "Basic " + base64.b64encode(b"the-user:the-password").decode()),
        ("bearer", ("token",),
         lambda r, s: r["headers"]["authorization"] == f"Bearer {s['token']}"),
    ],
)
async def test_each_scheme_places_its_credential_and_never_shows_it(
    tmp_path, stub, secrets_env, clients, scheme, names, check
) -> None:
    document = make_connector(tmp_path, [{scheme: []}])
    client = clients(document, stub.url, refs(*names))
    response = await client.send(plan(document, "get_echo", f"{stub.url}/echo/x?a=1"))
    assert response.status == 200
    assert check(response.body, secrets_env)
    assert response.body["query"]["a"] == "1"

    secret_values = [secrets_env[n] for n in names]
    with pytest.raises(RemoteRejected) as caught:
        echo = {"headerKey": "echo_header=X-Api-Key", "cookieKey": "echo_header=Cookie",
                "queryKey": "echo_query=api_key"}.get(scheme, "echo_header=Authorization")
        await client.send(plan(document, "get_status", f"{stub.url}/status/400?{echo}"))
    shown = [str(caught.value), repr(caught.value), json.dumps(caught.value.details),
             repr(client), repr(client._auth)]
    for text in shown:
        for value in secret_values:
            assert value not in text
    assert "***" in str(caught.value), "the echoed credential is masked, not dropped"


async def test_acme_connector_sends_its_api_key_header(stub, secrets_env) -> None:
    acme = load_connector(ROOT / "connectors" / "acme-crm.json")
    port = str(stub.port)
    endpoint = InstanceEndpoint("acme-1", variables={"port": port}, credentials=refs("apiKey"))
    client = ThirdPartyClient(acme, endpoint)
    try:
        assert client.base_url == stub.url
        op = acme.operations["createCompany"]
        response = await client.send(
            RequestPlan("POST", f"{stub.url}/companies", {"Content-Type": "application/json"},
                        {"name": "Acme"}, op))
    finally:
        await client.aclose()
    assert response.body["headers"]["x-api-key"] == secrets_env["apiKey"]
    assert response.body["body"] == {"name": "Acme"}
    assert response.body["headers"]["user-agent"].startswith("bss-sync/")


async def test_no_credential_for_any_alternative_is_a_configuration_error(
    tmp_path, stub, secrets_env, clients
) -> None:
    document = make_connector(tmp_path, [{"headerKey": []}, {"basic": []}])
    client = clients(document, stub.url, refs("token"))
    with pytest.raises(ConfigurationError, match=r"headerKey \| basic.*\(token\)"):
        await client.send(plan(document, "get_echo", f"{stub.url}/echo/x"))
    assert stub.paths() == []


async def test_security_scheme_setting_picks_the_alternative(
    tmp_path, stub, secrets_env, clients
) -> None:
    document = make_connector(tmp_path, [{"headerKey": []}, {"queryKey": []}])
    client = clients(document, stub.url, refs("apiKey"), {"securityScheme": "queryKey"})
    response = await client.send(plan(document, "get_echo", f"{stub.url}/echo/x"))
    assert response.body["query"]["api_key"] == secrets_env["apiKey"]
    assert "x-api-key" not in response.body["headers"]


# -- OAuth2 ---------------------------------------------------------------------------------


async def test_client_credentials_token_fetched_once_for_50_concurrent_requests(
    tmp_path, stub, secrets_env, clients
) -> None:
    stub.oauth.delay = 0.2  # every request arrives while the grant is in progress
    document = make_connector(tmp_path, [{"oauth": []}], rateLimit={"concurrency": 16})
    client = clients(document, stub.url, refs("clientId", "clientSecret"), {"scope": ["a", "b"]})
    responses = await asyncio.gather(*(
        client.send(plan(document, "get_protected", f"{stub.url}/protected/{i}"))
        for i in range(50)))
    assert {r.status for r in responses} == {200}
    assert stub.oauth.calls == [
        {"grant_type": "client_credentials", "client_auth": "basic", "scope": "a b"}]
    tokens = {r.body["headers"]["authorization"] for r in responses}
    assert len(tokens) == 1


async def test_a_401_refreshes_the_token_exactly_once_then_succeeds(
    tmp_path, stub, secrets_env, clients
) -> None:
    document = make_connector(tmp_path, [{"oauth": []}])
    client = clients(document, stub.url, refs("username", "password", "clientId", "clientSecret"))
    first = await client.send(plan(document, "get_protected", f"{stub.url}/protected/a"))
    assert stub.oauth.grants() == ["password"]

    stub.oauth.revoke_all()  # the server forgets every access token
    results = await asyncio.gather(*(
        client.send(plan(document, "get_protected", f"{stub.url}/protected/b{i}"))
        for i in range(10)))
    assert {r.status for r in results} == {200}
    assert stub.oauth.grants() == ["password", "refresh_token"], "one refresh for ten 401s"
    assert results[0].body["headers"]["authorization"] != first.body["headers"]["authorization"]


async def test_a_second_401_after_the_refresh_is_authentication_failed(
    tmp_path, stub, secrets_env, clients
) -> None:
    document = make_connector(tmp_path, [{"oauth": []}])
    client = clients(document, stub.url, refs("clientId", "clientSecret"))
    with pytest.raises(AuthenticationFailed, match="answered 401 even after a token refresh"):
        await client.send(plan(document, "get_status", f"{stub.url}/status/401"))
    assert stub.oauth.grants() == ["client_credentials", "client_credentials"]
    assert stub.paths().count("/status/401") == 2


async def test_a_refused_grant_is_authentication_failed_without_the_secret(
    tmp_path, stub, secrets_env, clients, monkeypatch
) -> None:
    monkeypatch.setenv("T_CLIENTSECRET", "a-wrong-client-secret")
    document = make_connector(tmp_path, [{"oauth": []}])
    client = clients(document, stub.url, refs("clientId", "clientSecret"), {"tokenAuth": "body"})
    with pytest.raises(AuthenticationFailed, match="invalid_client") as caught:
        await client.send(plan(document, "get_protected", f"{stub.url}/protected/x"))
    assert "a-wrong-client-secret" not in str(caught.value)
    assert stub.oauth.calls[0]["client_auth"] == "body"
    assert "/protected/x" not in stub.paths()


async def test_a_refused_refresh_token_falls_back_to_the_password_grant(
    tmp_path, stub, secrets_env, clients, monkeypatch
) -> None:
    monkeypatch.setenv("T_REFRESHTOKEN", "rt-expired-long-ago")
    document = make_connector(tmp_path, [{"oauth": []}])
    client = clients(document, stub.url,
                     refs("refreshToken", "username", "password", "clientId", "clientSecret"))
    response = await client.send(plan(document, "get_protected", f"{stub.url}/protected/x"))
    assert response.status == 200
    assert stub.oauth.grants() == ["refresh_token", "password"]


async def test_hubspot_refresh_token_with_client_credentials_in_the_body(
    vendor_specs: VendorSpecs, stub, secrets_env, monkeypatch
) -> None:
    stub.oauth.refresh.add("rt-initial-from-the-install-flow")
    monkeypatch.setenv("T_REFRESHTOKEN", "rt-initial-from-the-install-flow")
    hubspot = load_connector(vendor_specs.files,
                             overlay=ROOT / "connectors" / "hubspot-crm.overlay.json")
    endpoint = InstanceEndpoint(
        "hubspot-1", server_url=stub.url,
        credentials=refs("refreshToken", "clientId", "clientSecret"),
        settings={"tokenUrl": f"{stub.url}/oauth/token", "tokenAuth": "body"},
    )
    async with ThirdPartyClient(hubspot, endpoint) as client:
        op = hubspot.operations["GET /crm/v3/objects/companies"]
        response = await client.send(
            RequestPlan("GET", f"{stub.url}/crm/v3/objects/companies?limit=10", {}, UNDEFINED, op))
    assert response.status == 200
    assert stub.oauth.calls == [
        {"grant_type": "refresh_token", "client_auth": "body", "scope": None}]


# -- outcomes ---------------------------------------------------------------------------------


@pytest.fixture
async def open_client(
    tmp_path, stub, secrets_env, clients
) -> tuple[ConnectorDocument, ThirdPartyClient]:
    document = make_connector(tmp_path, [{"headerKey": []}], timeouts={"read": 0.3})
    return document, clients(document, stub.url, refs("apiKey"),
                             options=ClientOptions(max_response_bytes=64 * 1024))


async def test_read_timeout_is_remote_unavailable(open_client, stub) -> None:
    document, client = open_client
    started = time.monotonic()
    # /sleep/2: the stub answers after 2 s (simulated latency), past the 0.3 s read timeout
    with pytest.raises(RemoteUnavailable, match=r"GET /sleep/2 failed: ReadTimeout"):
        await client.send(plan(document, "get_sleep", f"{stub.url}/sleep/2"))
    assert time.monotonic() - started < 1.5


async def test_connection_refused_is_remote_unavailable(tmp_path, secrets_env, clients) -> None:
    document = make_connector(tmp_path, [{"headerKey": []}])
    client = clients(document, "http://127.0.0.1:9", refs("apiKey"))
    with pytest.raises(RemoteUnavailable, match="ConnectError"):
        await client.send(plan(document, "get_echo", "http://127.0.0.1:9/echo/x"))


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, RemoteUnavailable), (502, RemoteUnavailable), (503, RemoteUnavailable),
     (408, RemoteUnavailable), (409, RemoteConflict), (423, RemoteConflict),
     (404, RemoteRejected), (403, AuthenticationFailed), (429, RateLimited)],
)
async def test_statuses_are_classified(open_client, stub, status, error) -> None:
    document, client = open_client
    with pytest.raises(error) as caught:
        await client.send(plan(document, "get_status", f"{stub.url}/status/{status}"))
    assert caught.value.http_status == status
    assert type(caught.value) is error


async def test_422_is_remote_rejected_with_status_and_body_snippet(open_client, stub) -> None:
    document, client = open_client
    with pytest.raises(RemoteRejected) as caught:
        await client.send(plan(document, "post_status",
                               f"{stub.url}/status/422?message=name%20is%20required",
                               body={"name": ""}))
    assert caught.value.http_status == 422
    assert str(caught.value) == 'POST /status/422 answered 422: {"message": "name is required"}'


async def test_a_long_error_body_is_truncated(open_client, stub) -> None:
    document, client = open_client
    with pytest.raises(RemoteRejected) as caught:
        await client.send(plan(document, "get_status",
                               f"{stub.url}/status/400?message={'y' * 2000}"))
    assert len(str(caught.value)) < 400
    assert str(caught.value).endswith("…")


async def test_429_with_a_short_retry_after_waits_and_succeeds_inline(open_client, stub) -> None:
    document, client = open_client
    started = time.monotonic()
    response = await client.send(
        plan(document, "get_once", f"{stub.url}/once/k1/429?retry_after=1"))
    assert response.status == 200
    assert time.monotonic() - started >= 0.9
    assert stub.paths().count("/once/k1/429") == 2


async def test_429_with_a_long_retry_after_is_rate_limited(open_client, stub) -> None:
    document, client = open_client
    with pytest.raises(RateLimited) as caught:
        await client.send(plan(document, "get_status", f"{stub.url}/status/429?retry_after=120"))
    assert caught.value.retry_after == 120
    assert stub.paths().count("/status/429") == 1
    assert client.throttle.clock() + 100 < client.throttle._limiter.paused_until


async def test_503_with_a_short_retry_after_is_retried_once_then_rate_limited(
    open_client, stub
) -> None:
    document, client = open_client
    with pytest.raises(RateLimited) as caught:
        await client.send(plan(document, "get_status", f"{stub.url}/status/503?retry_after=0"))
    assert caught.value.retry_after == 0
    assert caught.value.http_status == 503
    assert stub.paths().count("/status/503") == 2


async def test_redirect_on_the_same_host_is_followed(open_client, stub, secrets_env) -> None:
    document, client = open_client
    response = await client.send(
        plan(document, "get_redirect", f"{stub.url}/redirect?to=/echo/after&status=307"))
    assert response.status == 200
    assert response.body["path"] == "/echo/after"
    assert response.body["headers"]["x-api-key"] == secrets_env["apiKey"]
    assert response.url == f"{stub.url}/echo/after"


@pytest.mark.parametrize(("status", "method", "body"),
                         [(302, "GET", None), (303, "GET", None), (307, "POST", {"a": 1})])
async def test_a_redirected_post_follows_the_method_rules(
    open_client, stub, status, method, body
) -> None:
    document, client = open_client
    response = await client.send(plan(
        document, "post_echo", f"{stub.url}/redirect?to=/echo/created&status={status}",
        body={"a": 1}))
    assert (response.body["method"], response.body["path"], response.body["body"]) == (
        method, "/echo/created", body)


async def test_redirect_to_another_host_is_unsafe(open_client, stub) -> None:
    document, client = open_client
    with pytest.raises(UnsafeRequest, match="leaves the instance's server"):
        await client.send(plan(
            document, "get_redirect", f"{stub.url}/redirect?to={stub.other_url}/echo/stolen"))
    assert "/echo/stolen" not in stub.paths()


async def test_a_next_page_url_on_another_host_is_unsafe(open_client, stub) -> None:
    document, client = open_client
    with pytest.raises(UnsafeRequest) as caught:
        await client.send(plan(document, "get_echo", f"{stub.other_url}/echo/page2?api_key=x"))
    assert stub.paths() == []
    assert "api_key" not in str(caught.value)
    with pytest.raises(UnsafeRequest):
        await client.send(plan(document, "get_echo", f"https://127.0.0.1:{stub.port}/echo/p"))


async def test_a_relative_next_page_url_is_resolved_on_the_server(open_client, stub) -> None:
    document, client = open_client
    response = await client.send(plan(document, "get_echo", "/echo/page3?page=3"))
    assert response.body["query"] == {"page": "3"}


async def test_endless_redirects_are_a_protocol_error(open_client, stub) -> None:
    document, client = open_client
    with pytest.raises(RemoteProtocolError, match="redirected more than 5 times"):
        await client.send(plan(document, "get_loop", f"{stub.url}/loop"))
    assert stub.paths().count("/loop") == 6


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_an_oversized_body_is_a_protocol_error(open_client, stub, chunked) -> None:
    document, client = open_client
    with pytest.raises(RemoteProtocolError, match="over the 65536-byte limit"):
        await client.send(plan(document, "get_huge",
                               f"{stub.url}/huge?bytes=200000&chunked={chunked}"))
    response = await client.send(plan(document, "get_huge", f"{stub.url}/huge?bytes=1000"))
    assert response.body == "x" * 998


async def test_the_default_limit_is_ten_megabytes(tmp_path, stub, secrets_env, clients) -> None:
    document = make_connector(tmp_path, [{"headerKey": []}])
    client = clients(document, stub.url, refs("apiKey"))
    with pytest.raises(RemoteProtocolError, match="over the 10485760-byte limit"):
        await client.send(plan(document, "get_huge",
                               f"{stub.url}/huge?bytes={11 * 1024 * 1024}&chunked=1"))


async def test_a_compressed_body_is_decoded_and_limited_once_decoded(open_client, stub) -> None:
    document, client = open_client
    response = await client.send(plan(document, "get_huge", f"{stub.url}/gzip?bytes=5000"))
    assert response.body == "x" * 5000
    # ~200 bytes on the wire, 200 kB once inflated: the limit is on what we would parse
    with pytest.raises(RemoteProtocolError, match="over the 65536-byte limit"):
        await client.send(plan(document, "get_huge", f"{stub.url}/gzip?bytes=200000"))


async def test_no_cookie_jar_a_set_cookie_is_not_sent_back(open_client, stub) -> None:
    document, client = open_client
    await client.send(plan(document, "get_echo", f"{stub.url}/cookie"))
    response = await client.send(plan(document, "get_echo", f"{stub.url}/echo/x"))
    assert "cookie" not in response.body["headers"]
    assert response.body["headers"]["user-agent"].startswith("bss-sync")


@pytest.mark.parametrize("value", ["v\r\nX-Injected: 1", "v\nX-Injected: 1", "caf\u00e9"])
async def test_a_header_value_with_a_line_break_or_not_ascii_is_refused_unsent(
        open_client, stub, value) -> None:
    document, client = open_client
    bad = plan(document, "get_echo", f"{stub.url}/echo/x")
    bad.headers["If-Match"] = value
    before = len(stub.paths())
    with pytest.raises(MappingError, match="If-Match"):
        await client.send(bad)
    assert len(stub.paths()) == before


async def test_urls_the_fast_path_cannot_send_as_they_are_still_go_out(open_client, stub) -> None:
    document, client = open_client
    for path, seen in (("/echo/a/../b", "/echo/b"), ("/echo/x y", "/echo/x%20y"),
                       ("/echo/caf\u00e9", "/echo/caf%C3%A9")):
        response = await client.send(plan(document, "get_echo", f"{stub.url}{path}"))
        assert response.status == 200
        assert stub.paths()[-1] == seen


async def test_a_non_json_200_where_json_is_promised_is_a_protocol_error(open_client, stub) -> None:
    document, client = open_client
    with pytest.raises(RemoteProtocolError, match="not JSON \\(text/html\\): <html>"):
        await client.send(plan(document, "get_text", f"{stub.url}/text"))


async def test_an_empty_body_is_fine(open_client, stub) -> None:
    document, client = open_client
    response = await client.send(plan(document, "get_empty", f"{stub.url}/empty"))
    assert (response.status, response.body) == (204, None)


# -- limits -----------------------------------------------------------------------------------


async def test_rate_limit_spreads_requests_over_time(tmp_path, stub, secrets_env, clients) -> None:
    document = make_connector(
        tmp_path, [{"headerKey": []}], rateLimit={"requests": 10, "per": "1s", "concurrency": 20})
    client = clients(document, stub.url, refs("apiKey"))
    started = time.monotonic()
    await asyncio.gather(*(
        client.send(plan(document, "get_echo", f"{stub.url}/echo/{i}")) for i in range(20)))
    assert time.monotonic() - started >= 0.9, "the second ten wait for the first second to pass"
    assert len(stub.paths()) == 20


async def test_concurrency_is_never_exceeded(tmp_path, stub, secrets_env, clients) -> None:
    document = make_connector(tmp_path, [{"headerKey": []}], rateLimit={"concurrency": 3})
    client = clients(document, stub.url, refs("apiKey"))
    # /sleep/0.1: each answer takes 0.1 s (simulated latency), so that requests overlap
    await asyncio.gather(*(
        client.send(plan(document, "get_sleep", f"{stub.url}/sleep/0.1")) for _ in range(12)))
    assert stub.max_in_flight == 3


async def test_the_instance_override_replaces_the_connector_limit(
    tmp_path, stub, secrets_env, clients
) -> None:
    document = make_connector(tmp_path, [{"headerKey": []}], rateLimit={"concurrency": 8})
    client = clients(document, stub.url, refs("apiKey"), {"rateLimit": {"concurrency": 2}})
    # /sleep/0.1: each answer takes 0.1 s (simulated latency), so that requests overlap
    await asyncio.gather(*(
        client.send(plan(document, "get_sleep", f"{stub.url}/sleep/0.1")) for _ in range(8)))
    assert stub.max_in_flight == 2


# -- tokens shared through PostgreSQL ------------------------------------------------------


async def seed_instance(db: Database, instance_id: str) -> None:
    await db.execute("INSERT INTO organizations (id, name) VALUES ('org-1', 'Org')"
                     " ON CONFLICT DO NOTHING")
    await db.execute("INSERT INTO connectors (id, title, version, sha256, document)"
                     " VALUES ('stub', 'Stub', '1', %s, '{}') ON CONFLICT DO NOTHING",
                     ("0" * 64,))
    await db.execute("INSERT INTO instances (id, org_id, connector_id, name, credentials)"
                     " VALUES (%s, 'org-1', 'stub', 'Stub', %s)",
                     (instance_id, Jsonb(refs("username", "password", "clientId",
                                              "clientSecret"))))


@pytest.mark.integration
async def test_two_workers_share_one_token_through_postgresql(
    tmp_path, stub, secrets_env, clients, db
) -> None:
    await seed_instance(db, "inst-1")
    stub.oauth.delay = 0.3
    document = make_connector(tmp_path, [{"oauth": []}])
    credentials = refs("username", "password", "clientId", "clientSecret")
    worker_a = clients(document, stub.url, credentials, db=db)
    worker_b = clients(document, stub.url, credentials, db=db)
    results = await asyncio.gather(*(
        worker.send(plan(document, "get_protected", f"{stub.url}/protected/{i}"))
        for i in range(10) for worker in (worker_a, worker_b)))
    assert stub.oauth.grants() == ["password"], "one token request for both workers"
    assert len({r.body["headers"]["authorization"] for r in results}) == 1

    row = await db.fetchrow("SELECT * FROM oauth_tokens WHERE instance_id = 'inst-1'")
    assert row is not None and row["expires_at"] is not None
    as_text = (await db.fetchval(
        "SELECT row_to_json(t)::text FROM oauth_tokens t WHERE instance_id = 'inst-1'"))
    access = results[0].body["headers"]["authorization"].removeprefix("Bearer ")
    issued_refresh = next(iter(stub.oauth.refresh))
    for secret in (access, issued_refresh, *secrets_env.values()):
        assert secret not in as_text
        assert secret.encode() not in bytes(row["access_token"])
        assert secret.encode() not in bytes(row["refresh_token"])

    worker_c = clients(document, stub.url, credentials, db=db)  # a process started later
    await worker_c.send(plan(document, "get_protected", f"{stub.url}/protected/late"))
    assert stub.oauth.grants() == ["password"]


@pytest.mark.integration
async def test_a_refresh_by_one_worker_is_reused_by_the_other(
    tmp_path, stub, secrets_env, clients, db
) -> None:
    await seed_instance(db, "inst-1")
    document = make_connector(tmp_path, [{"oauth": []}])
    credentials = refs("username", "password", "clientId", "clientSecret")
    worker_a = clients(document, stub.url, credentials, db=db)
    worker_b = clients(document, stub.url, credentials, db=db)
    await worker_a.send(plan(document, "get_protected", f"{stub.url}/protected/1"))
    await worker_b.send(plan(document, "get_protected", f"{stub.url}/protected/2"))
    stub.oauth.revoke_all()
    await asyncio.gather(
        worker_a.send(plan(document, "get_protected", f"{stub.url}/protected/3")),
        worker_b.send(plan(document, "get_protected", f"{stub.url}/protected/4")),
    )
    assert stub.oauth.grants() == ["password", "refresh_token"]


@pytest.mark.integration
async def test_a_worker_with_other_credentials_cannot_read_the_stored_token(
    tmp_path, stub, secrets_env, clients, db, monkeypatch
) -> None:
    await seed_instance(db, "inst-1")
    document = make_connector(tmp_path, [{"oauth": []}])
    credentials = refs("clientId", "clientSecret")
    await clients(document, stub.url, credentials, db=db).send(
        plan(document, "get_protected", f"{stub.url}/protected/1"))
    monkeypatch.setenv("T_APIKEY", "an-unrelated-credential")
    other = clients(document, stub.url, {**credentials, **refs("apiKey")}, db=db)
    await other.send(plan(document, "get_protected", f"{stub.url}/protected/2"))
    assert stub.oauth.grants() == ["client_credentials", "client_credentials"]



# -- hostile values in paths --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fast", "httpx"])
async def test_a_dot_segment_value_stays_in_its_segment_and_errors_name_the_line_sent(
        tmp_path, stub, secrets_env, clients, kind) -> None:
    """A record code of ``..`` in ``/once/{k}/{code}`` goes on the wire as ``%2E%2E`` (never
    resolved into ``/404``), with either transport; the error and the answer name the
    request line as it was sent."""
    thing = {"entity": "account", "push": {
        "create": {"operation": "post_echo", "params": {"p": "things"}},
        "update": {"operation": "get_once", "params": {"k": "{record.code}", "code": "404"}}}}
    document = make_connector(tmp_path, [{"headerKey": []}], objects={"Thing": thing})
    client = clients(document, stub.url, refs("apiKey"), http_transport=kind)
    request = plan_request(document.objects["Thing"].push["update"], base_url=stub.url,
                           data={"record": {"code": ".."}}, context=TransformContext())

    with pytest.raises(RemoteRejected) as refused:
        await client.send(request)
    answered = await client.send(request)  # the stub answers the second time

    assert str(refused.value).startswith("GET /once/%2E%2E/404 answered 404")
    assert answered.request == "GET /once/%2E%2E/404"
    assert [r.path for r in stub.requests] == ["/once/%2E%2E/404"] * 2
