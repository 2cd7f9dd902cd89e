"""The end-to-end tests' installation: the stack harness of the demo
(:class:`demo.stack.Stack`: database, vhost, migrations, topology, sandbox BSS,
json-server, dispatcher and pusher as real processes) and what tests drive it with.

* :class:`TestStack` adds to the harness what tests need: :meth:`TestStack.tenant`
  gives a test an organization and an instance of its own, applied with ``bss-sync
  apply`` from a generated installation file — a fresh organization means fresh
  caches in the services (they cache instances by id for a few seconds) and records
  nobody else touches; the previous test's organization disappears from the file and
  is deactivated. It reads the dead-letter queue and purges queues.
* :class:`BssApi` writes records through the sandbox's HTTP API (events follow);
  :class:`AuditLog` reads ``audit_log``; :func:`~demo.waiting.wait_until` polls with
  a deadline and fails showing the state it last saw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import secrets
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
from psycopg.rows import dict_row

from demo.processes import Service
from demo.stack import Stack, StackConfig
from shared.messaging.topology import DISPATCHER, PUSHER, WorkQueue

RETRY_DELAYS = (1, 2, 4)
BSS_TOKEN = "e2e-bss-token-" + secrets.token_hex(8)
ACME_API_KEY = "e2e-acme-key-" + secrets.token_hex(8)
HUBSPOT_TOKEN = "e2e-hubspot-token-" + secrets.token_hex(8)
FINAL_OUTCOMES = frozenset({"created", "updated", "deleted", "unchanged", "skipped", "dead"})
#: The pusher's dead-letter queue (docs/architecture.md §4).
PUSHER_DEAD = WorkQueue(PUSHER).dead_queue
_tenants = itertools.count(1)
T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------- the BSS


class BssApi:
    """The sandbox BSS's record API, as the host BSS's own users would write to it."""

    def __init__(self, url: str, token: str) -> None:
        self._url, self._token = url, token
        self.http = self._client()

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self._url, timeout=30.0,
                            headers={"Authorization": f"Bearer {self._token}"})

    def _each(self, call: Callable[[httpx.Client, T], R], items: Iterable[T],
              concurrency: int) -> list[R]:
        """``call(client, item)`` for every item, ``concurrency`` threads at once, each
        thread with a client of its own, closed at the end: one client shared by the
        threads once failed a read with EBADF (a connection closed under another
        thread's request)."""
        local, clients = threading.local(), []
        lock = threading.Lock()

        def run(item: T) -> R:
            if (client := getattr(local, "client", None)) is None:
                client = local.client = self._client()
                with lock:
                    clients.append(client)
            return call(client, item)

        try:
            with ThreadPoolExecutor(concurrency) as pool:
                return list(pool.map(run, items))
        finally:
            for client in clients:
                client.close()

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise AssertionError(f"the BSS answered {response.status_code} to "
                                 f"{response.request.method} {response.request.url.path}: "
                                 f"{response.text[:500]}")
        return response

    def create(self, org: str, entity: str, body: dict[str, Any],
               client: httpx.Client | None = None) -> dict[str, Any]:
        return self._check((client or self.http).post(f"/organizations/{org}/{entity}",
                                                      json=body)).json()

    def create_many(self, org: str, entity: str, bodies: Iterable[dict[str, Any]],
                    concurrency: int = 8) -> list[dict[str, Any]]:
        """Create every body (``concurrency`` at a time); the stored records, in order."""
        return self._each(lambda client, body: self.create(org, entity, body, client),
                          bodies, concurrency)

    def patch(self, org: str, entity: str, record_id: str, changes: dict[str, Any],
              client: httpx.Client | None = None) -> dict[str, Any]:
        return self._check((client or self.http).patch(
            f"/organizations/{org}/{entity}/{record_id}", json=changes,
            headers={"Content-Type": "application/merge-patch+json"})).json()

    def patch_many(self, org: str, entity: str, changes: dict[str, dict[str, Any]],
                   concurrency: int = 8) -> dict[str, dict[str, Any]]:
        """``{record id: changes}`` → ``{record id: the record after the change}``."""
        done = self._each(lambda client, item: self.patch(org, entity, *item, client=client),
                          changes.items(), concurrency)
        return {record["id"]: record for record in done}

    def delete(self, org: str, entity: str, record_id: str) -> None:
        self._check(self.http.delete(f"/organizations/{org}/{entity}/{record_id}"))


# --------------------------------------------------------------------------- audit_log


class AuditLog:
    """Reads the pusher's audit rows (a connection of its own, autocommit)."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(database_url, autocommit=True, row_factory=dict_row)

    def close(self) -> None:
        self.conn.close()

    def rows(self, instance_id: str, *, entity: str | None = None,
             outcome: str | None = None, record_id: str | None = None,
             service: str = "pusher") -> list[dict[str, Any]]:
        """Rows of ``instance_id`` (oldest first), narrowed by the other arguments."""
        sql = ("SELECT at, service, entity, action, record_id, external_id, outcome, attempt,"
               " http_status, error_class, error_message, message_id, details"
               " FROM audit_log WHERE instance_id = %s AND service = %s")
        params: list[Any] = [instance_id, service]
        for column, value in (("entity", entity), ("outcome", outcome),
                              ("record_id", record_id)):
            if value is not None:
                sql += f" AND {column} = %s"
                params.append(value)
        return self.conn.execute(sql + " ORDER BY at, id", params).fetchall()

    def dispatched(self, org_id: str) -> dict[str, list[list[str]]]:
        """The dispatcher's fan-out rows of ``org_id``: ``{record id: [instances, …]}``
        (one list of instance ids per event dispatched)."""
        rows = self.conn.execute(
            "SELECT record_id, details FROM audit_log WHERE service = 'dispatcher'"
            " AND org_id = %s AND outcome = 'dispatched' ORDER BY at, id", (org_id,))
        found: dict[str, list[list[str]]] = defaultdict(list)
        for row in rows.fetchall():
            found[row["record_id"]].append(row["details"].get("instances"))
        return dict(found)

    def outcomes(self, instance_id: str, entity: str | None = None) -> dict[str, list[str]]:
        """``{record id: [outcome, …]}`` in the order they were written."""
        found: dict[str, list[str]] = defaultdict(list)
        for row in self.rows(instance_id, entity=entity):
            found[row["record_id"]].append(row["outcome"])
        return dict(found)

    def summary(self, instance_id: str) -> str:
        """Counts by (entity, outcome, http status): the state shown when a wait fails."""
        counts = Counter((r["entity"], r["outcome"], r["http_status"])
                         for r in self.rows(instance_id))
        return ", ".join(f"{e} {o} {s or '-'}: {n}" for (e, o, s), n in sorted(
            counts.items(), key=str)) or "no audit rows"


# --------------------------------------------------------------------------- tenants


@dataclasses.dataclass(frozen=True)
class Connector:
    """A connector of the installation file: ``spec`` files and the ``overlay`` applied
    to them, if any (absolute paths)."""

    id: str
    spec: list[Path]
    overlay: Path | None = None

    def entry(self) -> dict[str, Any]:
        """Its entry in the installation file's ``connectors``."""
        entry: dict[str, Any] = {"id": self.id, "spec": [str(p) for p in self.spec]}
        if self.overlay is not None:
            entry["overlay"] = str(self.overlay)
        return entry


@dataclasses.dataclass(frozen=True)
class Tenant:
    """One test's organization and instance."""

    org_id: str
    instance_id: str
    connector_id: str


FULL_PUSH = {"push": ["create", "update", "delete"]}


# --------------------------------------------------------------------------- the stack


class TestStack(Stack):
    """A module's installation (see the module docstring); ``connectors`` are what
    :meth:`tenant` may instantiate."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, config: StackConfig, connectors: list[Connector]) -> None:
        super().__init__(config)
        self.connectors = {c.id: c for c in connectors}
        self._bss: BssApi | None = None
        self._audit: AuditLog | None = None

    def start(self) -> TestStack:
        super().start()
        assert self.sandbox is not None and self.config.bss_token is not None
        self._bss = BssApi(self.sandbox.url, self.config.bss_token)
        self._audit = AuditLog(self.database_url)
        return self

    def stop(self) -> None:
        """Stop everything, drop the database and the vhost (never leaves processes)."""
        for closer in (self._bss, self._audit):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        super().stop()
        self.drop()
        self.close()

    @property
    def bss(self) -> BssApi:
        """The sandbox BSS's API (once started)."""
        assert self._bss is not None, "the stack is not started"
        return self._bss

    @property
    def audit(self) -> AuditLog:
        """The audit log (once started)."""
        assert self._audit is not None, "the stack is not started"
        return self._audit

    @property
    def pusher(self) -> Service:
        return self.services[PUSHER]

    @property
    def dispatcher(self) -> Service:
        return self.services[DISPATCHER]

    # -- tenants ----------------------------------------------------------------------------

    def tenant(self, connector_id: str, server: str, *, credentials: dict[str, str],
               permissions: dict[str, dict[str, list[str]]] | None = None,
               settings: dict[str, Any] | None = None,
               conflict: str | dict[str, str] | None = None) -> Tenant:
        """A new organization with one instance of ``connector_id`` at ``server``, applied
        with ``bss-sync apply``. ``permissions`` default: push create, update and delete of
        accounts and contacts. ``conflict``: the instance's conflict policy override."""
        n = next(_tenants)
        tenant = Tenant(f"org-{n}-{secrets.token_hex(2)}", f"inst-{n}-{secrets.token_hex(2)}",
                        connector_id)
        instance: dict[str, Any] = {
            "id": tenant.instance_id, "name": f"{connector_id} for test {n}",
            "connector": connector_id, "server": server, "credentials": credentials,
            "permissions": permissions or {"account": FULL_PUSH, "contact": FULL_PUSH},
        }
        if settings:
            instance["settings"] = settings
        if conflict is not None:
            instance["conflict"] = conflict
        installation = {
            "timezone": "UTC",
            "connectors": [c.entry() for c in self.connectors.values()],
            "organizations": [{"id": tenant.org_id, "name": f"Test organization {n}",
                               "instances": [instance]}],
        }
        path = self.workdir / f"installation-{n}.json"
        path.write_text(json.dumps(installation, indent=2))
        self.cli(["apply", str(path)])
        return tenant

    # -- queues -----------------------------------------------------------------------------

    def dead_letters(self, queue: str = PUSHER_DEAD) -> list[dict[str, Any]]:
        """Every message of ``queue``, left in it (management API ``get``, ack_requeue_true)."""
        return self.management.for_vhost(self.config.vhost).get_messages(queue, count=1000,
                                                                         requeue=True)

    def purge(self, queue: str) -> None:
        self.management.for_vhost(self.config.vhost).purge_queue(queue)


class ClockedWorld:
    """A stack whose dispatchers read the time from the file ``clock`` (``CLOCK_FILE``),
    so that a test moves their schedules on; and its database."""

    def __init__(self, stack: TestStack, clock: Path) -> None:
        self.stack = stack
        self.clock = clock

    def set_clock(self, instant: datetime) -> None:
        self.clock.write_text(instant.isoformat())

    def db(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.stack.database_url, row_factory=dict_row, autocommit=True)
