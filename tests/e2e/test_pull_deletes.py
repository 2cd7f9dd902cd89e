"""Deletes from the third party, end to end with real processes: a local third party
(``tests/integration/listing_server.py``: real HTTP) whose object says how a deleted
record shows — a tombstone (``pull.deleted``: ``archived = true``) and a list of
deleted ids (``pull.deletedList``) — ``bss-sync pull --wait`` (discovery), RabbitMQ,
the puller and the sandbox BSS.

With ``pull`` ``delete`` permitted, both kinds of delete remove the BSS record (audit
``deleted``, link marked deleted); without it, the BSS record stays and the audit row
says ``skipped`` with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from demo.waiting import wait_until
from shared.messaging.topology import PULLER, WorkQueue
from tests.e2e.conftest import make_stack
from tests.e2e.stack import Connector, Tenant, TestStack
from tests.integration.listing_server import ListingServer, listing_connector

pytestmark = pytest.mark.e2e

PULLER_DEAD = WorkQueue(PULLER).dead_queue
WAIT = 60.0
COUNT = 6
ARCHIVED, REMOVED = "c00001", "c00004"


@pytest.fixture(scope="module")
def connector_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return listing_connector(tmp_path_factory.mktemp("listing"), deletes=True, kinds=("page",))


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, connector_file: Path) -> TestStack:
    """Sandbox BSS + the puller, on the stack's own database and vhost."""
    return make_stack(request, [Connector("listing", [connector_file])], {},
                      services=(PULLER,))


@pytest.fixture
def server() -> Iterator[ListingServer]:
    with ListingServer(COUNT, size=4) as running:
        yield running


def pull(stack: TestStack, tenant: Tenant) -> str:
    done = stack.cli(["pull", "--instance", tenant.instance_id, "--wait"])
    return done.stdout


def puller_rows(stack: TestStack, tenant: Tenant, outcome: str) -> dict[str, dict[str, Any]]:
    return {r["external_id"]: r for r in stack.audit.rows(tenant.instance_id, service=PULLER,
                                                           outcome=outcome)}


def wait_for(stack: TestStack, tenant: Tenant, outcome: str,
             external_ids: set[str]) -> dict[str, dict[str, Any]]:
    return wait_until(
        lambda: (found := puller_rows(stack, tenant, outcome)).keys() >= external_ids and found,
        timeout=WAIT, what=f"{sorted(external_ids)} audited {outcome!r} by the puller",
        state=lambda: stack.audit.summary(tenant.instance_id) + " / puller: " + str(
            sorted((r["external_id"], r["outcome"]) for r in stack.audit.rows(
                tenant.instance_id, service=PULLER))),
        between=stack.check_processes)


def links(stack: TestStack, tenant: Tenant) -> dict[str, dict[str, Any]]:
    with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
        return {r["external_id"]: r for r in conn.execute(
            "SELECT external_id, bss_id, state FROM links WHERE instance_id = %s",
            (tenant.instance_id,)).fetchall()}


def bss_status(stack: TestStack, tenant: Tenant, bss_id: str) -> int:
    return stack.bss.http.get(f"/organizations/{tenant.org_id}/account/{bss_id}").status_code


def synced(stack: TestStack, tenant: Tenant, server: ListingServer) -> dict[str, str]:
    """The first discovery's records created in the BSS: ``{external id: BSS id}``."""
    out = pull(stack, tenant)
    assert f"{COUNT} published of {COUNT} listed" in out, out
    created = wait_for(stack, tenant, "created", {r["id"] for r in server.records})
    ids = {external_id: row["record_id"] for external_id, row in created.items()}
    assert all(bss_status(stack, tenant, bss_id) == 200 for bss_id in ids.values())
    return ids


def delete_two(server: ListingServer) -> None:
    server.archive(ARCHIVED)  # a tombstone in the listing
    server.remove(REMOVED)  # gone from the listing, its id in /items/deleted


def test_deleted_on_the_third_party_is_deleted_in_the_bss(stack: TestStack,
                                                          server: ListingServer) -> None:
    stack.purge(PULLER_DEAD)
    tenant = stack.tenant("listing", server.url, credentials={},
                          permissions={"account": {"pull": ["create", "update", "delete"]}})
    ids = synced(stack, tenant, server)

    delete_two(server)
    out = pull(stack, tenant)
    assert "1 listed as deleted" in out, out
    deleted = wait_for(stack, tenant, "deleted", {ARCHIVED, REMOVED})
    assert {k: r["record_id"] for k, r in deleted.items()} == {
        ARCHIVED: ids[ARCHIVED], REMOVED: ids[REMOVED]}
    # the tombstone came as a listed record, the removed one as a listed deleted id
    assert {k: r["action"] for k, r in deleted.items()} == {ARCHIVED: "upsert",
                                                            REMOVED: "delete"}
    assert bss_status(stack, tenant, ids[ARCHIVED]) == 404
    assert bss_status(stack, tenant, ids[REMOVED]) == 404
    others = set(ids) - {ARCHIVED, REMOVED}
    assert all(bss_status(stack, tenant, ids[k]) == 200 for k in others)
    state = links(stack, tenant)
    assert (state[ARCHIVED]["state"], state[REMOVED]["state"]) == ("deleted", "deleted")
    assert {state[k]["state"] for k in others} == {"linked"}
    assert stack.dead_letters(PULLER_DEAD) == []


def test_without_pull_delete_the_delete_is_skipped_with_the_reason(
        stack: TestStack, server: ListingServer) -> None:
    stack.purge(PULLER_DEAD)
    tenant = stack.tenant("listing", server.url, credentials={},
                          permissions={"account": {"pull": ["create", "update"]}})
    ids = synced(stack, tenant, server)

    delete_two(server)
    pull(stack, tenant)
    skipped = wait_for(stack, tenant, "skipped", {ARCHIVED, REMOVED})
    for external_id in (ARCHIVED, REMOVED):
        row = skipped[external_id]
        assert row["details"]["reason"] == (
            "the instance is not permitted to delete account records (pull)"), row
        assert row["record_id"] == ids[external_id]
        assert bss_status(stack, tenant, ids[external_id]) == 200
    assert puller_rows(stack, tenant, "deleted") == {}
    assert {s["state"] for s in links(stack, tenant).values()} == {"linked"}
    assert stack.dead_letters(PULLER_DEAD) == []
