"""Fixtures of the chaos suite: the seed, the broker, the network proxies, the stack.

``CHAOS_SEED`` picks the run (unset: a random seed, printed); the broker is a
RabbitMQ node of the suite's own (``tests/fixtures/rabbit_node.py``); the suite's
PostgreSQL proxy and third-party proxy run on one loop (:class:`NetworkLoop`); the
stack is the end-to-end harness with its processes behind the PostgreSQL proxy.
A failed run's report carries the processes' log tails.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from demo.stack import StackConfig
from tests.chaos.harness import ChaosStack, chaos_connector
from tests.chaos.network import close_quietly
from tests.e2e.conftest import node_tools  # noqa: F401 - the fixture, shared
from tests.e2e.stack import ACME_API_KEY, BSS_TOKEN
from tests.fixtures.database import DATABASE_PREFIX
from tests.fixtures.rabbit_node import RabbitNode, own_node
from tests.fixtures.tcp_proxy import NetworkLoop, TcpProxy

#: The retry ladder of the run: five attempts over ~15 s, so that a fault of a few
#: seconds is ridden out and the ladder still ends within the suite's time.
CHAOS_RETRY_DELAYS = (1, 2, 4, 8)


@pytest.fixture(scope="session")
def chaos_seed() -> int:
    value = os.environ.get("CHAOS_SEED")
    seed = int(value) if value else random.SystemRandom().randrange(1, 10**6)
    print(f"\nchaos: CHAOS_SEED={seed}")
    return seed


@pytest.fixture(scope="module")
def network() -> Iterator[NetworkLoop]:
    loop = NetworkLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def db_proxy(network: NetworkLoop, postgres_server_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(postgres_server_url)
    proxy = TcpProxy(network, parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        yield proxy
    finally:
        close_quietly(proxy)


@pytest.fixture(scope="module")
def chaos_broker() -> Iterator[RabbitNode]:
    """A RabbitMQ node of the suite's own (with its management API), to stop and kill:
    never the machine's shared broker."""
    with own_node(management=True) as node:
        yield node


@pytest.fixture(scope="module")
def chaos_stack(request: pytest.FixtureRequest, node_tools: None,  # noqa: F811
                chaos_broker: RabbitNode, db_proxy: TcpProxy,
                tmp_path_factory: pytest.TempPathFactory) -> ChaosStack:
    """The stack on ``chaos_broker``, its processes reaching PostgreSQL through
    ``db_proxy``. With ``CHAOS_KEEP`` set, its database is kept (and named) for a
    post-mortem."""
    workdir = tmp_path_factory.mktemp("chaos")
    config = StackConfig(
        amqp_url=chaos_broker.amqp_url,
        database_url=request.getfixturevalue("postgres_server_url"),
        database=f"{DATABASE_PREFIX}{int(time.time())}_{secrets.token_hex(3)}",
        vhost="bss-sync-chaos", workdir=workdir,
        management_url=chaos_broker.management_url, retry_delays=CHAOS_RETRY_DELAYS,
        bss_token=BSS_TOKEN, relay_backoff_cap=1.0, crm_port=0, crm_api_key=ACME_API_KEY,
        service_env={"ACME_KEY": ACME_API_KEY, "DB_POOL_SIZE": "4", "SHUTDOWN_TIMEOUT": "15"})
    stack = ChaosStack(config, [chaos_connector(workdir)], db_proxy,
                       keep_database=bool(os.environ.get("CHAOS_KEEP")))
    request.addfinalizer(stack.stop)
    stack.start()
    return stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    stack = getattr(item, "funcargs", {}).get("chaos_stack")
    if report.failed and report.when == "call" and stack is not None:
        with contextlib.suppress(Exception):
            for title, text in stack.process_logs():
                report.sections.append((title, text))
