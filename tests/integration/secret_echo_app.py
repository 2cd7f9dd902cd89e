"""A consumer process whose third party echoes our credentials back, for the masking tests.

    python -m tests.integration.secret_echo_app --connector FILE --server URL --path PATH

The real service runtime (``shared.messaging.runner.main``: logging configured as
a service's, settle, audit, dead letters) consumes ``pusher`` in burst mode. For
each message the handler

* asks the third party ``GET PATH`` itself, sending the basic-auth header, and logs
  what came back as it is — the careless log line the redaction must still catch;
* sends the same request through the real :class:`~shared.http.ThirdPartyClient`,
  whose credentials are references (``--credentials``, JSON: ``{"username":
  "env:…", "password": "file:…"}``, resolved under ``CREDENTIALS_DIR``), and lets
  its error (the answer quoting our ``Authorization`` header) fail the message.

Infrastructure comes from the environment like a service's.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import structlog

from shared.connector import load_connector
from shared.connector.request import RequestPlan
from shared.credentials import resolve_credentials
from shared.http import InstanceEndpoint, ThirdPartyClient
from shared.messaging.codec import SYNC_CODEC, Handler, InboundMessage
from shared.messaging.runner import RuntimeDeps, main
from shared.messaging.topology import PUSHER
from shared.transform import UNDEFINED

log = structlog.get_logger(__name__)


def echo_handler(connector: Path, server: str, path: str,
                 credentials: dict[str, str]) -> Handler:
    document = load_connector(connector)
    operation = document.operations["get_status"]
    clients: list[ThirdPartyClient] = []

    async def handle(message: InboundMessage[Any]) -> Any:
        resolved = resolve_credentials(credentials)
        pair = f"{resolved['username']}:{resolved['password']}".encode()
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{server}{path}", headers={
                "Authorization": f"Basic {base64.b64encode(pair).decode()}"})
        log.warning("what the third party said", status=answer.status_code, said=answer.text)
        if not clients:
            clients.append(ThirdPartyClient(document, InstanceEndpoint(
                "echo-1", server_url=server, credentials=credentials)))
        plan = RequestPlan(operation.method, f"{server}{path}", {"Accept": "application/json"},
                           UNDEFINED, operation)
        return await clients[0].send(plan)  # raises: the answer is a 400

    return handle


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="secret_echo_app")
    parser.add_argument("--connector", type=Path, required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--credentials", type=json.loads, required=True)
    args = parser.parse_args(argv)

    def factory(_deps: RuntimeDeps) -> Handler:
        return echo_handler(args.connector, args.server, args.path, args.credentials)

    return main(PUSHER, SYNC_CODEC, factory, burst_idle=0.5)


if __name__ == "__main__":
    sys.exit(run())
