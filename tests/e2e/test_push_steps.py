"""Actions made of several requests (``steps``), end to end: the sandbox BSS, RabbitMQ,
the dispatcher and the pusher as real processes, PostgreSQL, and a real HTTP third
party (``customers_server.py``) serving tests/data/vendor/customers.yaml, whose account
create is two requests — the customer, then its billing address under it.

The case that matters: the address request fails once (500) after the customer was
created. The retry must not create a second customer: the link to it is durable
before the failure is reported, and the retry sends only the address. Then an update
reads the customer (ETag, address id) and writes both with what it read; a delete
removes it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from demo.stack import PUSH_PATH
from demo.waiting import wait_until
from tests.e2e.conftest import make_stack
from tests.e2e.customers_server import CustomersServer
from tests.e2e.records import account_bodies
from tests.e2e.stack import FULL_PUSH, PUSHER_DEAD, Connector, Tenant, TestStack
from tests.unit.test_steps import CUSTOMERS

pytestmark = pytest.mark.e2e

KEY = "e2e-billing-key-" + secrets.token_hex(8)  # no 8 letters of a path in it
WAIT = 60.0


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> TestStack:
    return make_stack(request, [Connector("customers", [CUSTOMERS])], {"CUSTOMERS_KEY": KEY},
                      services=PUSH_PATH)


@pytest.fixture
def server(stack: TestStack) -> Iterator[CustomersServer]:
    stack.purge(PUSHER_DEAD)
    with CustomersServer(KEY) as running:
        yield running


def tenant_of(stack: TestStack, server: CustomersServer) -> Tenant:
    return stack.tenant("customers", f"{server.url}/api",
                        credentials={"apiKey": "env:CUSTOMERS_KEY"},
                        permissions={"account": FULL_PUSH})


def rows(stack: TestStack, tenant: Tenant, record_id: str) -> list[dict[str, Any]]:
    return stack.audit.rows(tenant.instance_id, record_id=record_id)


def wait_for(stack: TestStack, tenant: Tenant, record_id: str, outcome: str,
             count: int = 1) -> list[dict[str, Any]]:
    """The record's audit rows once ``count`` of them say ``outcome``."""
    return wait_until(
        lambda: (found := rows(stack, tenant, record_id)) and sum(
            1 for r in found if r["outcome"] == outcome) >= count and found,
        timeout=WAIT, what=f"{count} {outcome!r} audit row(s) for {record_id}",
        state=lambda: [(r["outcome"], r["error_message"]) for r in rows(
            stack, tenant, record_id)], between=stack.check_processes)


def link_of(stack: TestStack, tenant: Tenant, record_id: str) -> dict[str, Any]:
    with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT state, external_id, push_steps, push_hash, claim"
                           " FROM links WHERE instance_id = %s AND bss_id = %s",
                           (tenant.instance_id, record_id)).fetchone()
    assert row is not None, f"no link for {record_id}"
    return row


def test_the_address_failing_once_leaves_one_customer_its_address_and_the_link(
        stack: TestStack, server: CustomersServer) -> None:
    tenant = tenant_of(stack, server)
    server.fail[("POST", "addresses")] = [500]
    body = account_bodies(1)[0]

    account = stack.bss.create(tenant.org_id, "account", body)
    audit = wait_for(stack, tenant, account["id"], "created")

    held = server.state()
    assert len(held["customers"]) == 1, held  # the retry created no second customer
    [customer] = held["customers"].values()
    [address] = held["addresses"].values()
    assert (customer["name"], customer["reference"]) == (body["name"], body["code"])
    assert customer["billingAddressId"] == address["id"]
    billing = body["addresses"][0]
    assert (address["customer"], address["line1"], address["city"], address["country"]) == (
        customer["id"], billing["line1"], billing["city"], billing["countryCode"])
    assert server.sent("POST", "customers") == 1
    assert server.sent("POST", "addresses") == 2  # the 500, then the retry's

    failed = [r for r in audit if r["outcome"] == "retrying"]
    assert len(failed) == 1, [(r["outcome"], r["error_message"]) for r in audit]
    assert failed[0]["error_message"].startswith(
        f"step 'address' of the create: POST /api/customers/{customer['id']}/addresses "
        "answered 500"), failed[0]["error_message"]
    assert failed[0]["details"]["step"] == "address"  # searchable, not only in the text
    assert failed[0]["details"]["request"].startswith("POST /api/customers/")
    [created] = [r for r in audit if r["outcome"] == "created"]
    assert created["external_id"] == customer["id"]
    assert "an earlier attempt stopped after the step(s) customer" in \
        created["details"]["resumed"]
    link = link_of(stack, tenant, account["id"])
    assert (link["state"], link["external_id"], link["push_steps"], link["claim"]) == (
        "linked", customer["id"], None, None)
    assert link["push_hash"] is not None
    assert stack.dead_letters() == []


def test_an_update_reads_then_writes_and_a_delete_removes_the_customer(
        stack: TestStack, server: CustomersServer) -> None:
    tenant = tenant_of(stack, server)
    account = stack.bss.create(tenant.org_id, "account", account_bodies(1)[0])
    wait_for(stack, tenant, account["id"], "created")
    [customer_id] = server.state()["customers"]

    stack.bss.patch(tenant.org_id, "account", account["id"], {
        "name": "Renamed Ltd", "addresses": [{**account["addresses"][0], "city": "Lyon"}]})
    wait_for(stack, tenant, account["id"], "updated")

    held = server.state()
    customer = held["customers"][customer_id]
    assert (customer["name"], customer["version"]) == ("Renamed Ltd", 2)  # If-Match held
    assert [a["city"] for a in held["addresses"].values()] == ["Lyon"]  # replaced, not added
    assert server.sent("GET", "customer") == 1 and server.sent("PUT", "address") == 1

    stack.bss.delete(tenant.org_id, "account", account["id"])
    wait_for(stack, tenant, account["id"], "deleted")
    assert server.state() == {"customers": {}, "addresses": {}}
    assert link_of(stack, tenant, account["id"])["state"] == "deleted"


def test_a_step_refused_for_good_names_itself_in_the_dead_letter_and_its_row(
        stack: TestStack, server: CustomersServer) -> None:
    tenant = tenant_of(stack, server)
    server.fail[("POST", "addresses")] = [422]
    account = stack.bss.create(tenant.org_id, "account", account_bodies(1)[0])

    [dead] = [r for r in wait_for(stack, tenant, account["id"], "dead")
              if r["outcome"] == "dead"]
    assert (dead["error_class"], dead["details"]["step"]) == ("RemoteRejected", "address")
    [letter] = wait_until(lambda: stack.dead_letters(), timeout=WAIT,
                          what="the account's dead letter")
    headers = letter["properties"]["headers"]
    assert (headers["x-failed-step"], headers["x-http-status"], headers["x-record-id"]) == (
        "address", 422, account["id"])
    assert headers["x-error"].startswith("step 'address' of the create:")
