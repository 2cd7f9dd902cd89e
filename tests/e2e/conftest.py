"""Fixtures of the end-to-end tests (docs/architecture.md §9): real processes, real servers.

Per module (started once, shared by the module's tests): a :class:`TestStack` — the
demo's harness: its own database and vhost, the sandbox BSS, a dispatcher and a
pusher as subprocesses, json-server for the Acme tests — and the third party's front
(the fault proxy, or Prism). Per test: the third party emptied, the proxy passing
everything through again, the dead-letter queue purged, and a tenant (organization
+ instance) of the test's own from :meth:`TestStack.tenant`.

When a test fails, the tails of the services' logs (and of the third party's) are
added to its report.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from demo.stack import PUSH_PATH, StackConfig
from demo.thirdparty import NODE_BIN, JsonServer
from tests.e2e.records import ACME_CONNECTOR
from tests.e2e.stack import (
    ACME_API_KEY,
    BSS_TOKEN,
    FULL_PUSH,
    PUSHER_DEAD,
    RETRY_DELAYS,
    Connector,
    Tenant,
    TestStack,
)
from tests.e2e.thirdparty import FaultProxy
from tests.fixtures.database import DATABASE_PREFIX

#: The read timeout of the ``acme-crm-short-timeout`` connector (a copy of acme-crm.json):
#: the timeout test holds answers longer than this, not the real connector's 30 s.
SHORT_READ_TIMEOUT = 1.0
_vhosts = itertools.count(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed or report.when == "teardown":
        return
    seen: set[int] = set()
    for value in getattr(item, "funcargs", {}).values():
        describe = getattr(value, "failure_report", None)
        if callable(describe) and id(value) not in seen:
            seen.add(id(value))
            with contextlib.suppress(Exception):
                for title, text in describe():
                    report.sections.append((title, text))


def make_stack(request: pytest.FixtureRequest, connectors: list[Connector],
               extra_env: dict[str, str], *, crm: bool = False,
               services: tuple[str, ...] = PUSH_PATH,
               retry_delays: tuple[float, ...] = RETRY_DELAYS) -> TestStack:
    """A started :class:`TestStack` for the requesting module (with json-server as the
    Acme CRM when ``crm``) running ``services`` on the ``retry_delays`` ladder, stopped
    and dropped at the module's end."""
    rabbitmq = request.getfixturevalue("rabbitmq")
    session_vhost = request.getfixturevalue("_session_vhost")
    name = request.module.__name__.rsplit(".", 1)[-1]
    config = StackConfig(
        amqp_url=rabbitmq.amqp_url, database_url=request.getfixturevalue("postgres_server_url"),
        # named as tests/fixtures/database.py names them: a killed session's get dropped
        database=f"{DATABASE_PREFIX}{int(time.time())}_{secrets.token_hex(3)}",
        vhost=f"{session_vhost}.e2e-{next(_vhosts)}",
        workdir=request.getfixturevalue("tmp_path_factory").mktemp(f"e2e-{name}"),
        management_url=rabbitmq.management_url, retry_delays=retry_delays,
        bss_token=BSS_TOKEN, relay_backoff_cap=1.0, crm_port=0 if crm else None,
        crm_api_key=ACME_API_KEY, service_env=extra_env, services=services)
    stack = TestStack(config, connectors)
    request.addfinalizer(stack.stop)
    stack.start()
    return stack


def make_clocked_stack(request: pytest.FixtureRequest, redelivery_cron: str,
                       services: tuple[str, ...], extra_env: dict[str, str] | None = None,
                       ) -> tuple[TestStack, Path]:
    """A stack with the Acme CRM whose dispatchers run the schedules on a clock read
    from a file (``CLOCK_FILE``, set to now), the daily redelivery on
    ``redelivery_cron``; the stack and the clock's file."""
    clock = request.getfixturevalue("tmp_path_factory").mktemp("clock") / "now"
    clock.write_text(datetime.now(UTC).isoformat())
    env = {"ACME_KEY": ACME_API_KEY, "ACME_BAD_KEY": "not-the-key", "SCHEDULES_ENABLED": "true",
           "REDELIVERY_SCHEDULE": redelivery_cron, "CLOCK_FILE": str(clock),
           "SCHEDULE_INTERVAL": "0.2", **(extra_env or {})}
    stack = make_stack(request, [Connector("acme-crm", [ACME_CONNECTOR])], env, crm=True,
                       services=services)
    return stack, clock


# --------------------------------------------------------------------------- Acme CRM


def short_timeout_connector(workdir: Path) -> Path:
    """``connectors/acme-crm.json`` with a read timeout of ``SHORT_READ_TIMEOUT`` seconds."""
    document = json.loads(ACME_CONNECTOR.read_text())
    document["x-synchronization"]["timeouts"]["read"] = SHORT_READ_TIMEOUT
    path = workdir / "acme-crm-short-timeout.json"
    path.write_text(json.dumps(document, indent=2))
    return path


@pytest.fixture(scope="session")
def node_tools() -> None:
    """Node.js and the npm tools of package.json: the run stops with one clear line in
    CI (never a silent skip there), the test is skipped with the reason elsewhere."""
    problem = None
    if shutil.which("node") is None:
        problem = "node is not on PATH (the end-to-end tests need Node.js 18+)"
    else:
        missing = [tool for tool in ("json-server", "prism") if not (NODE_BIN / tool).exists()]
        if missing:
            problem = (f"{' and '.join(missing)} missing from {NODE_BIN}: run `npm install` "
                       "(or `make install`) at the repository root")
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.exit(f"end-to-end tests: {problem}", returncode=1)
    pytest.skip(problem)


@pytest.fixture(scope="module")
def acme_stack(request: pytest.FixtureRequest, node_tools: None,
               tmp_path_factory: pytest.TempPathFactory) -> TestStack:
    short = short_timeout_connector(tmp_path_factory.mktemp("connectors"))
    return make_stack(request, [Connector("acme-crm", [ACME_CONNECTOR]),
                                Connector("acme-crm-short-timeout", [short])],
                      {"ACME_KEY": ACME_API_KEY}, crm=True)


@pytest.fixture(scope="module")
def json_server(acme_stack: TestStack) -> JsonServer:
    """The stack's Acme CRM stand-in."""
    assert acme_stack.crm is not None
    return acme_stack.crm


@pytest.fixture(scope="module")
def fault_proxy(json_server: JsonServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(json_server.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


class AcmeWorld:
    """What an Acme test works with: the stack, json-server, the proxy in front of it."""

    def __init__(self, stack: TestStack, json_server: JsonServer, proxy: FaultProxy) -> None:
        self.stack = stack
        self.json_server = json_server
        self.proxy = proxy

    def tenant(self, *, permissions: dict[str, dict[str, list[str]]] | None = None,
               connector: str = "acme-crm") -> Tenant:
        """An organization + instance of ``connector`` pushing to the proxy."""
        return self.stack.tenant(connector, self.proxy.url,
                                 credentials={"apiKey": "env:ACME_KEY"},
                                 permissions=permissions or {"account": FULL_PUSH,
                                                             "contact": FULL_PUSH})

    def failure_report(self) -> list[tuple[str, str]]:
        seen = Counter((s.method, s.path.split("/")[1] if "/" in s.path else s.path,
                        s.status, s.fault) for s in self.proxy.requests())
        proxy = "\n".join(f"{m} /{p} -> {st} {f or ''}: {n}" for (m, p, st, f), n in
                          sorted(seen.items(), key=str)) or "no requests"
        return [*self.stack.process_logs(),
                ("fault proxy requests (method, collection, status, fault)", proxy)]


@pytest.fixture
def acme(acme_stack: TestStack, json_server: JsonServer, fault_proxy: FaultProxy) -> AcmeWorld:
    """A clean Acme CRM, a pass-through proxy and an empty ``pusher.dead``."""
    json_server.reset()
    fault_proxy.reset()
    acme_stack.purge(PUSHER_DEAD)
    return AcmeWorld(acme_stack, json_server, fault_proxy)
