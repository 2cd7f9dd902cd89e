"""Security scheme choice, OAuth2 grants and token URLs, token freshness and sealing (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.connector.document import ConnectorDocument
from shared.connector.openapi import index_operations
from shared.connector.request import RequestPlan
from shared.connector.security import auth_scheme
from shared.errors import ConfigurationError
from shared.http.auth import Applied, Authenticator, choose_schemes, grant_type, token_url
from shared.http.settings import InstanceEndpoint, Timeouts
from shared.http.tokens import MemoryTokenStore, Token, TokenCipher
from shared.transform import UNDEFINED

BASE = "https://crm.example.test/api"
SCHEMES: dict[str, Any] = {
    "key": {"type": "apiKey", "in": "header", "name": "X-Key"},
    "partner": {"type": "apiKey", "in": "query", "name": "partner"},
    "basic": {"type": "http", "scheme": "basic"},
    "bearer": {"type": "http", "scheme": "bearer"},
    "oauth": {"type": "oauth2", "flows": {
        "clientCredentials": {"tokenUrl": "/oauth/cc", "scopes": {}},
        "password": {"tokenUrl": "https://login.example.test/pw", "scopes": {}},
    }},
    "code": {"type": "oauth2", "flows": {"authorizationCode": {
        "authorizationUrl": "https://login.example.test/authorize",
        "tokenUrl": "https://login.example.test/token", "scopes": {}}}},
}


def document(security: list[dict[str, list[str]]], op_security: Any = None) -> ConnectorDocument:
    ok = {"200": {"description": "ok"}}
    operation: dict[str, Any] = {"operationId": "listThings", "responses": ok}
    if op_security is not None:
        operation["security"] = op_security
    doc = {"openapi": "3.0.3", "security": security,
           "components": {"securitySchemes": SCHEMES}, "paths": {"/things": {"get": operation}}}
    return ConnectorDocument(doc, "0" * 64, "t", "1", (), index_operations(doc), {}, {}, {}, {}, {})


def chosen(doc: ConnectorDocument, names: set[str], **settings: Any) -> list[str]:
    op = doc.operations["listThings"]
    return [s.name for s in choose_schemes(doc, op, names, settings, BASE)]


# -- which scheme ---------------------------------------------------------------------------


def test_the_first_alternative_the_credentials_fill_is_chosen() -> None:
    doc = document([{"oauth": []}, {"key": []}, {"basic": []}])
    assert chosen(doc, {"apiKey"}) == ["key"]
    assert chosen(doc, {"username", "password"}) == ["oauth"], "password grant comes first"
    assert chosen(doc, {"clientId", "clientSecret", "apiKey"}) == ["oauth"]
    assert chosen(doc, {"accessToken"}) == ["oauth"]


def test_an_alternative_of_two_schemes_needs_both() -> None:
    doc = document([{"key": [], "partner": []}, {"basic": []}])
    assert chosen(doc, {"key", "partner"}) == ["key", "partner"]
    assert chosen(doc, {"apiKey", "username", "password"}) == ["key", "partner"], (
        "apiKey fills both api keys")
    assert chosen(doc, {"key", "username", "password"}) == ["basic"]


def test_operation_security_overrides_the_document_and_empty_means_anonymous() -> None:
    assert chosen(document([{"key": []}], op_security=[{"bearer": []}]), {"token"}) == ["bearer"]
    assert chosen(document([{"key": []}], op_security=[{}]), set()) == []
    assert chosen(document([]), set()) == []


def test_the_security_scheme_setting_wins() -> None:
    doc = document([{"key": []}, {"partner": []}])
    assert chosen(doc, {"apiKey"}, securityScheme="partner") == ["partner"]
    assert chosen(doc, {"apiKey"}, securityScheme="basic") == ["basic"], (
        "a declared scheme outside the operation's requirement is honoured")
    with pytest.raises(ConfigurationError, match="securityScheme 'nope'"):
        chosen(doc, {"apiKey"}, securityScheme="nope")


def test_no_alternative_filled_names_schemes_and_credential_names_only() -> None:
    doc = document([{"key": []}, {"basic": []}])
    with pytest.raises(ConfigurationError) as caught:
        chosen(doc, {"username", "token"})
    assert str(caught.value) == (
        "GET /things needs security key | basic, and the instance's credentials "
        "(token, username) fill none of them")


def test_oauth_without_a_token_url_cannot_use_a_grant() -> None:
    doc = document([{"code": []}, {"key": []}])
    assert chosen(doc, {"clientId", "clientSecret", "apiKey"}) == ["code"], (
        "an authorization-code flow's tokenUrl serves client credentials too")
    bare = document([{"oidc": []}])
    bare.document["components"]["securitySchemes"]["oidc"] = {
        "type": "openIdConnect", "openIdConnectUrl": "https://login.example.test/.well-known"}
    with pytest.raises(ConfigurationError):
        chosen(bare, {"clientId", "clientSecret"})
    assert chosen(bare, {"clientId", "clientSecret"}, tokenUrl="https://t.example.test") == [
        "oidc"]


# -- grants and token URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "grant"),
    [({"refreshToken", "clientId", "clientSecret"}, "refresh_token"),
     ({"username", "password", "clientId"}, "password"),
     ({"clientId", "clientSecret"}, "client_credentials"),
     ({"clientId"}, None), ({"accessToken"}, None)],
)
def test_grant_type(names, grant) -> None:
    assert grant_type(names) == grant


def test_token_url_precedence() -> None:
    oauth = auth_scheme("oauth", SCHEMES["oauth"])
    code = auth_scheme("code", SCHEMES["code"])
    assert token_url(oauth, "client_credentials", {}, BASE) == "https://crm.example.test/oauth/cc"
    assert token_url(oauth, "password", {}, BASE) == "https://login.example.test/pw"
    assert token_url(code, "refresh_token", {}, BASE) == "https://login.example.test/token"
    assert token_url(oauth, "password", {"tokenUrl": "token"}, BASE) == (
        "https://crm.example.test/api/token")
    assert token_url(auth_scheme("x", {"type": "oauth2"}), "password", {}, BASE) is None


# -- placing credentials --------------------------------------------------------------------


def test_credentials_are_placed_by_scheme_and_hidden_from_repr() -> None:
    doc = document([{"key": [], "partner": [], "basic": []}])
    creds = {"key": "header-secret-1", "partner": "query-secret-2",
             "username": "u", "password": "pw-secret-3"}
    auth = Authenticator(doc, InstanceEndpoint("i-1"), BASE, creds, MemoryTokenStore(),
                         timeouts=Timeouts(), refresh_margin=60)
    op = doc.operations["listThings"]
    plan = RequestPlan("GET", f"{BASE}/things?a=1", {}, UNDEFINED, op)
    placed = auth.place(plan, Applied(tuple(auth.schemes_for(op))))
    assert placed.headers["X-Key"] == "header-secret-1"
    assert placed.url == f"{BASE}/things?a=1&partner=query-secret-2"
    assert placed.headers["Authorization"] == "Basic dTpwdy1zZWNyZXQtMw=="
    for secret in creds.values():
        if len(secret) > 3:
            assert secret not in repr(auth)


# -- tokens ---------------------------------------------------------------------------------

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_a_token_is_refreshed_a_minute_ahead_or_at_half_its_life() -> None:
    hour = Token("a", T0 + timedelta(hours=1), obtained_at=T0)
    assert hour.usable(T0 + timedelta(minutes=58), margin=60)
    assert not hour.usable(T0 + timedelta(minutes=59, seconds=1), margin=60)
    short = Token("a", T0 + timedelta(seconds=10), obtained_at=T0)
    assert short.usable(T0 + timedelta(seconds=4), margin=60)
    assert not short.usable(T0 + timedelta(seconds=5), margin=60)
    assert Token("a", None, obtained_at=T0).usable(T0 + timedelta(days=400), margin=60)


def test_token_repr_hides_secrets() -> None:
    token = Token("at-very-secret", T0, "rt-very-secret", T0)
    assert "very-secret" not in repr(token)


def test_cipher_round_trip_and_binding() -> None:
    creds = {"clientId": "cid", "clientSecret": "s3cr3t"}
    cipher = TokenCipher.derive("inst-1", creds)
    sealed = cipher.seal("at-123", "access_token")
    assert b"at-123" not in sealed
    assert cipher.seal("at-123", "access_token") != sealed, "a fresh nonce every time"
    assert TokenCipher.derive("inst-1", dict(creds)).open(sealed, "access_token") == "at-123"
    assert cipher.open(sealed, "refresh_token") is None, "bound to its column"
    assert TokenCipher.derive("inst-2", creds).open(sealed, "access_token") is None
    assert TokenCipher.derive("inst-1", {**creds, "clientSecret": "rotated"}).open(
        sealed, "access_token") is None
    assert cipher.open(sealed[:-1] + bytes([sealed[-1] ^ 1]), "access_token") is None
    assert cipher.open(b"short", "access_token") is None
    assert "s3cr3t" not in repr(cipher)


def test_key_material_is_unambiguous() -> None:
    """Name/value boundaries are framed: {"ab": "c"} and {"a": "bc"} derive different keys."""
    sealed = TokenCipher.derive("i", {"ab": "c"}).seal("x", "f")
    assert TokenCipher.derive("i", {"a": "bc"}).open(sealed, "f") is None
