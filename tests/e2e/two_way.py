"""Both directions at once, for the loop guard and conflict tests: a stack running the
dispatcher, the pusher and the puller (real processes) with the sandbox BSS and
json-server as the Acme CRM behind the fault proxy, which logs every request bss-sync
sends the CRM — the count of writes to the third party. Writes to the BSS are counted
by the sandbox's own record versions (``sandbox.records.version``: one per write).

:class:`TwoWay` drives it: records written on either side as their own users would
(the BSS through its API, the CRM straight to json-server, past the proxy), a pull run
with ``bss-sync pull --wait`` and waited for until the puller settled every message it
published, and the counts.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from demo.processes import LoggedSandbox
from demo.thirdparty import JsonServer
from shared.messaging.topology import DISPATCHER, PULLER, PUSHER
from tests.e2e.conftest import make_stack
from tests.e2e.records import ACME_CONNECTOR
from tests.e2e.stack import ACME_API_KEY, Connector, Tenant, TestStack
from tests.e2e.thirdparty import FaultProxy
from tests.fixtures.waiting import wait_until

TWO_WAY = {"push": ["create", "update", "delete"], "pull": ["create", "update", "delete"]}
WAIT = 90.0
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
Record = dict[str, Any]


def two_way_stack(request: pytest.FixtureRequest) -> TestStack:
    """The module's stack: dispatcher, pusher and puller, json-server as the Acme CRM."""
    return make_stack(request, [Connector("acme-crm", [ACME_CONNECTOR])],
                      {"ACME_KEY": ACME_API_KEY}, crm=True,
                      services=(DISPATCHER, PUSHER, PULLER))


@dataclasses.dataclass
class Pull:
    """One ``bss-sync pull --wait`` and what the puller made of its messages."""

    run_id: str
    published: int
    rows: list[Record]  # the puller's final rows of the run

    def outcomes(self) -> dict[tuple[str, str], str]:
        """``{(entity, external id): outcome}``."""
        return {(r["entity"], r["external_id"]): r["outcome"] for r in self.rows}


class TwoWay:
    """The stack, json-server and the proxy in front of it (see the module docstring)."""

    def __init__(self, stack: TestStack, proxy: FaultProxy) -> None:
        self.stack = stack
        self.proxy = proxy
        assert stack.crm is not None
        self.crm: JsonServer = stack.crm

    def tenant(self, *, conflict: str | dict[str, str] | None = None) -> Tenant:
        """An organization + instance pushing and pulling accounts and contacts."""
        return self.stack.tenant("acme-crm", self.proxy.url,
                                 credentials={"apiKey": "env:ACME_KEY"},
                                 permissions={"account": TWO_WAY, "contact": TWO_WAY},
                                 conflict=conflict)

    # -- the BSS ------------------------------------------------------------------------------

    def bss_versions(self, tenant: Tenant) -> dict[str, int]:
        """``{record id: version}`` of the organization's records: one version per write."""
        with psycopg.connect(self.stack.database_url, row_factory=dict_row) as conn:
            rows = conn.execute("SELECT id, version FROM sandbox.records WHERE org_id = %s",
                                (tenant.org_id,)).fetchall()
        return {r["id"]: r["version"] for r in rows}

    def bss_record(self, tenant: Tenant, entity: str, record_id: str) -> Record:
        response = self.stack.bss.http.get(f"/organizations/{tenant.org_id}/{entity}/"
                                           f"{record_id}")
        response.raise_for_status()
        return dict(response.json())

    def copy_origin(self, copy: bool) -> None:
        """Restart the sandbox BSS (same port, same database) copying ``X-Sync-Origin``
        into its events or not."""
        old = self.stack.sandbox
        assert old is not None
        if old.settings.copy_origin == copy:
            return
        old.stop()
        sandbox = LoggedSandbox(dataclasses.replace(old.settings, copy_origin=copy),
                                old.log_path, port=old.port, orphan_dies=old.orphan_dies)
        sandbox.start()
        self.stack.sandbox = sandbox

    # -- the CRM ------------------------------------------------------------------------------

    def companies(self) -> dict[str, Record]:
        """json-server's companies by id (as text)."""
        return {str(c["id"]): c for c in self.crm.collection("companies")}

    def crm_patch(self, collection: str, external_id: str, changes: Record) -> Record:
        """A CRM user changes a record (straight to json-server: not a request of ours)."""
        response = self.crm.http.patch(f"/{collection}/{external_id}", json=changes)
        response.raise_for_status()
        return dict(response.json())

    def crm_create(self, collection: str, record: Record) -> Record:
        response = self.crm.http.post(f"/{collection}", json=record)
        response.raise_for_status()
        return dict(response.json())

    def crm_writes(self, since: int = 0) -> list[str]:
        """``"METHOD /path"`` of the writes bss-sync sent the CRM (request ``since`` on)."""
        return [f"{s.method} {s.path}" for s in self.proxy.requests()[since:]
                if s.method in WRITES]

    # -- waiting ------------------------------------------------------------------------------

    def pushed(self, tenant: Tenant, record_id: str, count: int = 1) -> list[Record]:
        """The pusher's final rows of ``record_id`` once there are ``count``."""
        def settled() -> list[Record] | None:
            rows = [r for r in self.stack.audit.rows(tenant.instance_id, record_id=record_id)
                    if r["outcome"] != "retrying"]
            return rows if len(rows) >= count else None
        return wait_until(settled, timeout=WAIT, what=f"{count} push(es) of {record_id}",
                          state=lambda: self.stack.audit.summary(tenant.instance_id),
                          between=self.stack.check_processes)

    def pull(self, tenant: Tenant, *, entity: str | None = None) -> Pull:
        """``bss-sync pull --wait`` (of ``entity``, default: all the instance pulls), then
        until the puller has settled every message it published."""
        only = ["--entity", entity] if entity else []
        output = self.stack.cli(["pull", "--instance", tenant.instance_id, *only,
                                 "--wait"]).stdout
        found = re.search(r"run (\S+): (\d+) messages published", output)
        assert found is not None, f"bss-sync pull printed no run: {output}"
        run_id, published = found.group(1), int(found.group(2))

        def settled() -> list[Record] | None:
            rows = self.puller_rows(tenant, run_id)
            return rows if len(rows) >= published else None
        rows = wait_until(settled, timeout=WAIT, what=f"the puller to settle {published} "
                                                      f"messages of run {run_id}",
                          state=lambda: self.stack.audit.summary(tenant.instance_id),
                          between=self.stack.check_processes)
        return Pull(run_id, published, rows)

    def dispatched(self, tenant: Tenant, record_id: str, count: int = 1) -> list[Record]:
        """The dispatcher's rows of ``record_id``'s events once there are ``count``."""
        def found() -> list[Record] | None:
            rows = self.stack.audit.conn.execute(
                "SELECT outcome, details FROM audit_log WHERE service = 'dispatcher'"
                " AND org_id = %s AND record_id = %s AND outcome <> 'retrying'"
                " ORDER BY at, id", (tenant.org_id, record_id)).fetchall()
            return rows if len(rows) >= count else None
        return wait_until(found, timeout=WAIT, what=f"the dispatcher to handle {count} "
                                                    f"event(s) of {record_id}",
                          between=self.stack.check_processes)

    def puller_rows(self, tenant: Tenant, run_id: str | None = None) -> list[Record]:
        """The puller's final rows (of run ``run_id``), oldest first."""
        rows = self.stack.audit.conn.execute(
            "SELECT * FROM audit_log WHERE service = 'puller' AND instance_id = %s"
            " AND outcome <> 'retrying' AND (%s::text IS NULL OR run_id = %s)"
            " ORDER BY at, id", (tenant.instance_id, run_id, run_id)).fetchall()
        return list(rows)


def after(instant: str) -> None:
    """Return once the clock is past ``instant`` (an RFC 3339 time just written by one
    side), so that the next write on the other side is later (newest-wins)."""
    when = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    wait_until(lambda: datetime.now(UTC) > when, timeout=5.0, interval=0.001,
               what=f"the clock to pass {instant}")
