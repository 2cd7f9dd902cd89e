"""A secret never shows — whole, in pieces of 8+ characters, or in base64 — in logs, audit
rows, dead-letter headers or CLI error messages (docs/architecture.md §7).

The third party here is a leaking one (``http_stub``: ``/status/400?echo_header=…``
answers 400 quoting our ``Authorization: Basic base64(user:password)`` header, and a
message holding a piece of the password and another base64 value holding it). The
password is a ``file:`` reference in a ``CREDENTIALS_DIR`` of the test's own, the
user an ``env:`` one. A real service process (``secret_echo_app``: the runtime, its
logging, settle, audit) handles one message against it; everything it left behind is
searched for the password.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

import shared.logging
from shared.cli.main import main as cli
from shared.connector import load_connector
from shared.connector.request import RequestPlan
from shared.http import InstanceEndpoint, ThirdPartyClient
from shared.logging import redact
from shared.messaging.envelope import SyncMessage, encode
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.tooling import publish_blocking
from shared.messaging.topology import PUSH_EXCHANGE, PUSHER, sync_routing_key
from shared.paths import project_root
from shared.secret_mask import SecretMask
from shared.storage.db import Database
from shared.transform import UNDEFINED
from tests.fixtures.amqp import TEST_DELIVERY_LIMIT, TEST_RETRY_DELAYS, TestTopology
from tests.integration.http_stub import StubServer

pytestmark = pytest.mark.integration

USER = "echo-user"
PASSWORD = "Zt4-qW9x-Lm2p-Vb7n-Rk5s"


def leaks(text: str, secret: str = PASSWORD) -> list[str]:
    """What of ``secret`` shows in ``text``: itself, any 8-character piece of it, or of
    its base64 (standard or URL-safe, at any of the 3 alignments it can take inside a
    longer encoded value, as in ``base64(user:password)``)."""
    raw = secret.encode()
    forms = [secret, quote(secret, safe="")]
    for skip in range(3):
        whole = len(raw[skip:]) // 3 * 3  # the characters no neighbour byte changes
        forms += [base64.b64encode(raw[skip:skip + whole]).decode(),
                  base64.urlsafe_b64encode(raw[skip:skip + whole]).decode()]
    return sorted({form[i:i + 8] for form in forms for i in range(len(form) - 7)
                   if form[i:i + 8] in text})


def test_the_oracle_sees_a_basic_auth_header_and_a_piece() -> None:
    header = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert leaks(f"Authorization: Basic {header}")
    assert leaks(f"you typed {PASSWORD[5:14]}")
    assert not leaks(f"you typed {PASSWORD[5:12]}")


# ---------------------------------------------------------------------- a service process


SCHEMES = {
    "basic": {"type": "http", "scheme": "basic"},
    "oauth": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "/oauth/token",
                                                                "scopes": {}}}},
}


def _connector(directory: Path, scheme: str = "basic") -> Path:
    """A connector of the stub's ``/status/{p}`` and ``/protected/{p}`` routes, with HTTP
    basic authentication or OAuth2 client credentials."""
    ok = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    param = {"name": "p", "in": "path", "required": True, "schema": {"type": "string"}}
    document = {
        "openapi": "3.0.3", "info": {"title": "Echo", "version": "1"},
        "servers": [{"url": "http://127.0.0.1:1"}],
        "security": [{scheme: []}],
        "components": {"securitySchemes": {scheme: SCHEMES[scheme]}},
        "paths": {f"/{route}/{{p}}": {"get": {"operationId": f"get_{route}",
                                              "parameters": [param],
                                              "responses": {"200": ok}}}
                  for route in ("status", "protected")},
        "x-synchronization": {"objects": {"Thing": {
            "entity": "account", "push": {"update": {"operation": "get_status",
                                                     "params": {"p": "200"}}}}}},
    }
    path = directory / f"echo-{scheme}.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def _message() -> SyncMessage:
    return SyncMessage(id=str(uuid.uuid4()), direction="push", org_id="org1",
                       instance_id="echo-1", entity="account", action="update",
                       trigger="event", attempt=0, created_at=datetime.now(UTC).isoformat(),
                       record_id="acc-1")


def _run_app(topology: TestTopology, database_url: str, stub: StubServer,
             tmp_path: Path) -> str:
    """Run the service process until its queue is empty; its output (the logs)."""
    secrets_dir = tmp_path / "secrets"
    (secrets_dir / "echo").mkdir(parents=True)
    (secrets_dir / "echo" / "password").write_text(PASSWORD + "\n")
    message = _message()
    key = sync_routing_key(message.entity, message.action, message.org_id, message.instance_id)
    publish_blocking(topology.url, [OutgoingMessage(PUSH_EXCHANGE, key, encode(message),
                                                    message.id)])
    blob = base64.urlsafe_b64encode(f"session:{PASSWORD}:1".encode()).decode()
    path = "/status/400?echo_header=Authorization&message=" + quote(
        f"wrong password, you typed {PASSWORD[3:15]}; session {blob}")
    env = {k: v for k, v in os.environ.items() if k != "PREFETCH"}
    env.update(AMQP_URL=topology.url, DATABASE_URL=database_url, DB_SCHEMA="public",
               RETRY_DELAYS=json.dumps(list(TEST_RETRY_DELAYS)),
               DELIVERY_LIMIT=str(TEST_DELIVERY_LIMIT), LOG_LEVEL="INFO", LOG_FORMAT="json",
               PYTHONPATH=str(project_root()), CREDENTIALS_DIR=str(secrets_dir),
               ECHO_USER=USER)
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.secret_echo_app",
         "--connector", str(_connector(tmp_path)), "--server", stub.url, "--path", path,
         "--credentials", json.dumps({"username": "env:ECHO_USER",
                                      "password": "file:echo/password"})],
        env=env, cwd=project_root(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


async def test_an_echoed_basic_auth_header_shows_nowhere(
        topology: TestTopology, db: Database, database_url: str, stub: StubServer,
        tmp_path: Path) -> None:
    logs = _run_app(topology, database_url, stub, tmp_path)

    # The third party did get the password, and did quote it back.
    sent = [r for r in stub.requests if r.path.startswith("/status/400")]
    header = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert len(sent) == 2 and all(r.headers["authorization"] == header for r in sent)

    [dead] = topology.peek(topology.queue(PUSHER).dead_queue)
    headers = json.dumps(dead.headers, default=str)
    assert dead.headers["x-error-class"] == "RemoteRejected"
    assert "answered 400" in dead.headers["x-error"] and "***" in dead.headers["x-error"]
    assert leaks(headers) == [] and leaks(dead.body.decode()) == []

    rows = await db.fetch("SELECT row_to_json(a)::text AS row FROM audit_log a")
    assert [json.loads(r["row"])["outcome"] for r in rows] == ["dead"]
    assert "***" in rows[0]["row"] and leaks(rows[0]["row"]) == []

    lines = [line for line in logs.splitlines() if line.startswith("{")]
    said = [json.loads(line) for line in lines if "what the third party said" in line]
    assert len(said) == 1 and "***" in said[0]["said"], logs[-2000:]
    assert any('"dead-lettered"' in line for line in lines), logs[-2000:]
    assert leaks(logs) == []


# ---------------------------------------------------------------------- OAuth2 tokens


async def test_oauth_tokens_are_masked_wherever_obtained_and_forgotten_two_refreshes_on(
        db: Database, stub: StubServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_CLIENT_ID", stub.oauth.client_id)
    monkeypatch.setenv("ECHO_CLIENT_SECRET", stub.oauth.client_secret)
    document = load_connector(_connector(tmp_path, "oauth"))
    operation = document.operations["get_protected"]
    endpoint = InstanceEndpoint("echo-oauth", server_url=stub.url, credentials={
        "clientId": "env:ECHO_CLIENT_ID", "clientSecret": "env:ECHO_CLIENT_SECRET"})

    async def token_of(client: ThirdPartyClient) -> str:
        plan = RequestPlan("GET", f"{stub.url}/protected/x", {}, UNDEFINED, operation)
        answer = await client.send(plan)
        return answer.body["headers"]["authorization"].removeprefix("Bearer ")

    await db.execute("INSERT INTO organizations (id, name) VALUES ('org-1', 'Org')")
    await db.execute("INSERT INTO connectors (id, title, version, sha256, document)"
                     " VALUES ('echo', 'Echo', '1', %s, '{}')", ("0" * 64,))
    await db.execute("INSERT INTO instances (id, org_id, connector_id, name, credentials)"
                     " VALUES ('echo-oauth', 'org-1', 'echo', 'Echo', %s)",
                     (json.dumps(endpoint.credentials),))
    here = ThirdPartyClient(document, endpoint, db=db)
    elsewhere = ThirdPartyClient(document, endpoint, db=db)
    try:
        first = await token_of(here)
        assert redact(f"token {first}") == "token ***"
        # Another process: it never fetched the token, it finds it in the shared store.
        monkeypatch.setattr(shared.logging, "_mask", SecretMask())
        assert await token_of(elsewhere) == first and stub.oauth.grants() == [
            "client_credentials"]
        assert redact(f"token {first}") == "token ***"

        tokens = [first]
        for _ in range(10):
            stub.oauth.revoke_all()  # the next request is refused, then refreshed
            tokens.append(await token_of(elsewhere))
        registered = len(shared.logging._mask)
    finally:
        await here.aclose()
        await elsewhere.aclose()
    assert len(set(tokens)) == 11
    assert [redact(token) == "***" for token in tokens] == [False] * 9 + [True] * 2
    assert registered <= 4, "client id and secret, two tokens"


# ---------------------------------------------------------------------- CLI error messages


def test_cli_apply_never_quotes_a_literal_secret(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    text = "\n".join([
        "connectors:",
        "  - id: echo",
        f"    spec: {_connector(tmp_path)}",
        "organizations:",
        "  - id: org",
        "    name: Org",
        "    instances:",
        "      - id: inst",
        "        name: Inst",
        "        connector: echo",
        f"        server: https://{USER}:{PASSWORD}@crm.example/",
        "        credentials:",
        f"          password: {PASSWORD}",
        "          token: file:../elsewhere/token",
        "        variables:",
        f"          dbPassword: {PASSWORD[2:]}",
        "        settings:",
        "          oauth:",
        f"            clientSecret: {PASSWORD}",
        f"          header: Basic {basic}",
        "",
    ])
    path = tmp_path / "installation.yaml"
    path.write_text(text)
    assert cli(["apply", str(path)]) == 1
    captured = capsys.readouterr()
    base = "/organizations/0/instances/0"
    located = [line.split(": ", 2)[:2] for line in captured.err.splitlines()[:-1]]
    assert located == [[f"{path}:11", f"{base}/server"],
                       [f"{path}:13", f"{base}/credentials/password"],
                       [f"{path}:14", f"{base}/credentials/token"],
                       [f"{path}:16", f"{base}/variables/dbPassword"],
                       [f"{path}:19", f"{base}/settings/oauth/clientSecret"],
                       [f"{path}:20", f"{base}/settings/header"]]
    assert all("env:NAME or file:PATH" in line or "CREDENTIALS_DIR" in line
               for line in captured.err.splitlines()[:-1])
    assert captured.err.splitlines()[-1] == "bss-sync: 6 problems; nothing was applied"
    assert leaks(captured.err + captured.out) == []
