"""The harness that runs bss-sync with everything around it, for the demo
(``python -m demo``) and the end-to-end tests (``tests/e2e``) alike.

``Stack(StackConfig(...))`` brings up, a step per method, each checked before the next
(:meth:`Stack.start` runs them all in this order):

1. :meth:`~Stack.create_database` and :meth:`~Stack.create_vhost` — a PostgreSQL
   database and a RabbitMQ vhost of its own (``recreate``: dropped first when they
   exist, as the demo wants; otherwise a name already taken is an error);
2. :meth:`~Stack.migrate` and :meth:`~Stack.declare_topology` — ``bss-sync db upgrade``
   and ``bss-sync topology declare``, as an operator runs them;
3. :meth:`~Stack.start_crm` — the Acme CRM stand-in (json-server,
   :mod:`demo.thirdparty`), when ``crm_port`` is set;
4. :meth:`~Stack.start_sandbox` — the sandbox BSS (``python -m sandbox serve``), healthy;
5. :meth:`~Stack.start_service` — the services (``python -m services.<name>``), each
   consuming its queue.

Every process runs in a session of its own with its log in ``workdir``.
:meth:`Stack.stop` stops what was started — the services in reverse order (the
puller and the pusher before the dispatcher: in-flight work finishes), then the sandbox and the
CRM — whatever failed before, and never raises; :meth:`Stack.drop` removes the
database and the vhost. Nothing here prints: callers say what happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psycopg
from kombu import Connection

from demo.processes import LoggedSandbox, Service, bss_sync
from demo.thirdparty import NODE_BIN, JsonServer
from sandbox.settings import SandboxSettings
from shared.messaging.amqp_url import broker_urls, kombu_hostname, with_vhost
from shared.messaging.management import ManagementClient, management_url_for
from shared.messaging.topology import DISPATCHER, PULLER, PUSHER
from shared.storage.db import quote_ident, redact_url, url_with_database

#: The services of the push path, in the order they start (and stop reversed).
PUSH_PATH = (DISPATCHER, PUSHER)
#: Both directions: the push path and the puller (the demo's services).
BOTH_WAYS = (*PUSH_PATH, PULLER)


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """Where a stack runs and how; see the module docstring."""

    #: The broker (any vhost: the stack's own replaces it); a cluster's nodes, comma-separated.
    amqp_url: str
    #: The PostgreSQL server (any database: the stack's own replaces it).
    database_url: str
    database: str
    vhost: str
    #: Logs, generated files, json-server's database.
    workdir: Path
    #: The RabbitMQ management API (default: the AMQP host, port 15672).
    management_url: str | None = None
    #: Drop a database and a vhost of the same names first (the demo's fresh start).
    recreate: bool = False
    retry_delays: tuple[float, ...] = (1.0, 2.0, 5.0, 30.0)
    services: tuple[str, ...] = PUSH_PATH
    #: The sandbox BSS's port (0: a free one) and bearer token (None: open).
    bss_port: int = 0
    bss_token: str | None = None
    #: The sandbox relay's longest pause between reconnections (None: its default).
    relay_backoff_cap: float | None = None
    #: The Acme CRM stand-in's port (0: a free one; None: no CRM) and API key.
    crm_port: int | None = None
    crm_api_key: str = ""
    #: Added to the services' and the CLI's environment (credentials they resolve).
    service_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The sandbox and the CRM get SIGTERM when this process dies (the services always do).
    orphans_die: bool = False


class Stack:
    """One running installation; see the module docstring."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.workdir = config.workdir
        self.database_url = url_with_database(config.database_url, config.database)
        self.amqp_url = with_vhost(config.amqp_url, config.vhost)  # every node of a cluster
        self.management_url = management_url_for(config.amqp_url, config.management_url)
        self.management = ManagementClient.for_amqp_url(config.amqp_url, config.management_url)
        self.crm: JsonServer | None = None
        self.sandbox: LoggedSandbox | None = None
        self.services: dict[str, Service] = {}
        self.created_database = False
        self.created_vhost = False

    @property
    def env(self) -> dict[str, str]:
        """What the services and the CLI are configured with (docs/architecture.md §7)."""
        env = {
            "AMQP_URL": self.amqp_url,
            "DATABASE_URL": self.database_url,
            "DB_SCHEMA": "public",
            "BSS_API_URL": self.sandbox.url if self.sandbox else "",
            "RETRY_DELAYS": json.dumps(list(self.config.retry_delays)),
            "LOG_FORMAT": "json",  # one JSON object per line in the logs (try jq)
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_TIMEOUT": "10",
        }
        if self.config.bss_token is not None:  # a reference, as an operator would give it
            env.update(BSS_API_TOKEN="env:STACK_BSS_TOKEN", STACK_BSS_TOKEN=self.config.bss_token)
        env.update(self.config.service_env)
        return env

    # ------------------------------------------------------------------ all at once

    def start(self) -> Stack:
        """Every step of the module docstring, in order; :meth:`stop` undoes them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.create_database()
        self.create_vhost()
        self.migrate()
        self.declare_topology()
        if self.config.crm_port is not None:
            self.start_crm()
        self.start_sandbox()
        for name in self.config.services:
            self.start_service(name)
        return self

    def problems(self) -> list[str]:
        """What is missing to start (one sentence each, saying how to fix it); empty
        when PostgreSQL, RabbitMQ and its management API answer, and Node.js and
        json-server are there when a CRM is wanted."""
        found = []
        try:
            psycopg.connect(self.config.database_url, connect_timeout=5).close()
        except psycopg.Error as exc:
            found.append(f"PostgreSQL is not reachable at "
                         f"{redact_url(self.config.database_url)} ({first_line(exc)}): "
                         "start it, or set DATABASE_URL")
        try:
            with Connection(kombu_hostname(self.config.amqp_url), connect_timeout=5) as conn:
                conn.ensure_connection(max_retries=len(broker_urls(self.config.amqp_url)),
                                       timeout=5)
        except Exception as exc:
            found.append(f"RabbitMQ is not reachable at {redact_url(self.config.amqp_url)} "
                         f"({first_line(exc)}): start it, or set AMQP_URL")
        else:
            try:
                self.management.overview()
            except Exception as exc:
                found.append(f"the RabbitMQ management API is not reachable at "
                             f"{self.management_url} ({first_line(exc)}): "
                             "`rabbitmq-plugins enable rabbitmq_management`")
        if self.config.crm_port is not None:
            if shutil.which("node") is None:
                found.append("node is not on PATH: the Acme CRM stand-in needs Node.js 18+")
            elif not (NODE_BIN / "json-server").exists():
                found.append(f"{NODE_BIN / 'json-server'} is missing: run `make install` "
                             "(or `npm ci`) at the repository root")
        return found

    # ------------------------------------------------------------------ steps

    def create_database(self) -> bool:
        """Create the database (dropped first with ``recreate``); whether it existed."""
        name = quote_ident(self.config.database)
        with psycopg.connect(self.config.database_url, autocommit=True) as conn:
            existed = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                   (self.config.database,)).fetchone() is not None
            if self.config.recreate:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        self.created_database = True
        return existed

    def create_vhost(self) -> bool:
        """Create the vhost (deleted first with ``recreate``); whether it existed."""
        vhost = self.config.vhost
        existed = vhost in self.management.vhosts()
        if existed and not self.config.recreate:
            raise RuntimeError(f"the RabbitMQ vhost {vhost!r} exists already")
        if existed:
            self.management.delete_vhost(vhost)
        self.management.create_vhost(vhost)
        self.created_vhost = True
        return existed

    def migrate(self) -> str:
        """``bss-sync db upgrade``: bss-sync's tables; its output."""
        return self.cli(["db", "upgrade"]).stdout

    def declare_topology(self) -> str:
        """``bss-sync topology declare``: the exchanges and queues; its output."""
        return self.cli(["topology", "declare"]).stdout

    def start_crm(self, port: int | None = None) -> JsonServer:
        """The Acme CRM stand-in on ``port`` (default ``crm_port``), answering."""
        self.crm = JsonServer(self.workdir, self.config.crm_api_key,
                              port=port if port is not None else self.config.crm_port or 0,
                              db_name="acme-crm-db.json",
                              log_name="acme-crm.log", die_with_parent=self.config.orphans_die)
        self.crm.start()  # assigned first: stop() stops it even if this is interrupted
        return self.crm

    def start_sandbox(self, port: int | None = None) -> LoggedSandbox:
        """The sandbox BSS on ``port`` (default ``bss_port``; its relay publishing to the
        vhost), healthy."""
        extra = {"backoff_cap": self.config.relay_backoff_cap} \
            if self.config.relay_backoff_cap is not None else {}
        settings = SandboxSettings(database_url=self.database_url, schema="sandbox",
                                   amqp_url=self.amqp_url, token=self.config.bss_token,
                                   poll_interval=0.2, **extra)
        port = port if port is not None else self.config.bss_port
        self.sandbox = LoggedSandbox(settings, self.workdir / "sandbox.log", port=port or None,
                                     orphan_dies=self.config.orphans_die)
        self.sandbox.start()
        return self.sandbox

    def start_service(self, name: str) -> Service:
        """``python -m services.<name>``, consuming its queue (see :class:`Service`)."""
        service = Service(name, self.env, self.workdir)
        self.services[name] = service
        return service.start()

    def cli(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``bss-sync ARGS`` with the stack's environment (``RuntimeError`` if it fails,
        with ``check``)."""
        return bss_sync(args, self.env, check=check)

    # ------------------------------------------------------------------ while it runs

    def check_processes(self) -> None:
        """Raise ``RuntimeError`` naming the first process that exited, with its log."""
        for name, service in self.services.items():
            if service.process is not None and not service.alive:
                raise RuntimeError(f"the {name} exited; its log ({service.log_path}):\n"
                                   f"{service.tail()}")
        sandbox = self.sandbox
        if sandbox is not None and sandbox.pid is not None and not sandbox.alive:
            raise RuntimeError(f"the sandbox BSS exited; its log ({sandbox.log_path}):\n"
                               f"{sandbox.tail()}")
        if self.crm is not None and self.crm.pid is not None and not self.crm.alive:
            raise RuntimeError(f"the Acme CRM stand-in exited; its log "
                               f"({self.crm.log_path}):\n{self.crm.tail()}")

    def process_logs(self) -> list[tuple[str, str]]:
        """Tails of every process's output (a failed test's report)."""
        sections = [(f"{name} log (tail)", service.tail(60))
                    for name, service in self.services.items()]
        if self.sandbox is not None:
            sections.append(("sandbox output (tail)", self.sandbox.tail(30)))
        if self.crm is not None:
            sections.append(("json-server output (tail)", self.crm.tail(20)))
        return sections

    # ------------------------------------------------------------------ afterwards

    @property
    def running(self) -> bool:
        """Whether any process was started and not stopped."""
        return bool(self.services or self.sandbox or self.crm)

    def stop(self) -> None:
        """Stop every process started, the services last started first; never raises."""
        for service in reversed(list(self.services.values())):
            with contextlib.suppress(Exception):
                service.stop()
        self.services.clear()
        if self.sandbox is not None:
            with contextlib.suppress(Exception):
                self.sandbox.stop()
            self.sandbox = None
        if self.crm is not None:
            with contextlib.suppress(Exception):
                self.crm.stop()
            self.crm = None

    def drop(self) -> None:
        """Delete the vhost and drop the database this stack created; never raises."""
        if self.created_vhost:
            with contextlib.suppress(Exception):
                self.management.delete_vhost(self.config.vhost)
        if self.created_database:
            with contextlib.suppress(Exception), psycopg.connect(
                    self.config.database_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.config.database)} "
                             "WITH (FORCE)")

    def close(self) -> None:
        """Release the management API client (after :meth:`stop` and :meth:`drop`)."""
        with contextlib.suppress(Exception):
            self.management.close()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
