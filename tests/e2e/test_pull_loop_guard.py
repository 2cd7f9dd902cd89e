"""The loop guard both ways, end to end (real processes: sandbox BSS, json-server behind
the proxy, dispatcher, pusher, puller; docs/architecture.md §5, *Loop guard*).

* Pushed, then listed: records created in the BSS are pushed to the CRM; the next
  listing shows them (json-server stamped a new ``updatedAt``) and the puller writes
  nothing back — zero writes to the BSS (record versions) and to the CRM (the proxy's
  log) over the whole push-then-pull cycle, and the next cycle too.
* Pulled, then echoed: records created in the CRM are pulled into the BSS; the BSS's
  event of that write is not pushed back — by ``origin`` when the BSS copies
  ``X-Sync-Origin`` (the dispatcher sends it nowhere), and by the projection hash when
  it does not (the sandbox set not to copy it: the pusher gets the message and finds
  it ``unchanged``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.records import account_bodies, contact_bodies
from tests.e2e.stack import TestStack
from tests.e2e.thirdparty import FaultProxy
from tests.e2e.two_way import TwoWay, two_way_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, node_tools: None) -> TestStack:
    return two_way_stack(request)


@pytest.fixture(scope="module")
def proxy(stack: TestStack) -> Iterator[FaultProxy]:
    assert stack.crm is not None
    front = FaultProxy(stack.crm.url).start()
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture
def two_way(stack: TestStack, proxy: FaultProxy) -> TwoWay:
    assert stack.crm is not None
    stack.crm.reset()
    proxy.reset()
    return TwoWay(stack, proxy)


@pytest.mark.parametrize("copy_origin", [True, False], ids=["origin", "no-origin"])
def test_a_push_then_pull_cycle_without_changes_writes_nothing_to_either_side(
        two_way: TwoWay, copy_origin: bool) -> None:
    two_way.copy_origin(copy_origin)
    tenant = two_way.tenant()
    bss = two_way.stack.bss
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(4))
    contacts = bss.create_many(tenant.org_id, "contact", contact_bodies(accounts[:2], 1))
    for record in accounts + contacts:
        assert [r["outcome"] for r in two_way.pushed(tenant, record["id"])] == ["created"]
    versions = two_way.bss_versions(tenant)
    companies = two_way.companies()
    people = two_way.crm.collection("people")
    sent = len(two_way.proxy.requests())
    pusher_rows = len(two_way.stack.audit.rows(tenant.instance_id))

    first = two_way.pull(tenant)
    second = two_way.pull(tenant)

    assert first.published == second.published == len(accounts) + len(contacts)
    for pull in (first, second):
        assert set(pull.outcomes().values()) == {"unchanged"}, pull.rows
        assert len(pull.outcomes()) == pull.published
    # By the pull hash each push stored (json-server answers with the record as listed),
    # not by comparing with the BSS record: nothing was left for that to bring up to date.
    assert [r["details"] for r in first.rows] == [{}] * first.published
    assert two_way.crm_writes(since=sent) == []  # nothing written to the CRM
    assert two_way.bss_versions(tenant) == versions  # nothing written to the BSS
    assert two_way.companies() == companies and two_way.crm.collection("people") == people
    assert len(two_way.stack.audit.rows(tenant.instance_id)) == pusher_rows  # no events


@pytest.mark.parametrize("copy_origin", [True, False], ids=["origin", "no-origin"])
def test_a_record_pulled_into_the_bss_is_not_pushed_back(two_way: TwoWay,
                                                         copy_origin: bool) -> None:
    two_way.copy_origin(copy_origin)
    tenant = two_way.tenant()
    company = two_way.crm_create("companies", {
        "name": "Initech", "accountNumber": f"C-{tenant.org_id}", "email": "ap@initech.example",
        "employees": 120, "billingAddress": {"street": "4120 Freidrich Ln", "city": "Austin",
                                             "postalCode": "78744", "country": "US"}})
    person = two_way.crm_create("people", {"firstName": "Peter", "lastName": "Gibbons",
                                           "email": "peter@initech.example",
                                           "companyId": company["id"]})
    sent = len(two_way.proxy.requests())

    pulled = two_way.pull(tenant)

    outcomes = pulled.outcomes()
    assert outcomes == {("account", str(company["id"])): "created",
                        ("contact", str(person["id"])): "created"}, pulled.rows
    bss_ids = [r["record_id"] for r in pulled.rows]
    for record_id in bss_ids:
        [event] = two_way.dispatched(tenant, record_id)
        if copy_origin:  # the event names our instance as its origin: sent nowhere
            assert event["outcome"] == "skipped"
            assert event["details"]["reason"] == ("the change came from the only instance "
                                                  "pushing it")
        else:  # no origin: pushed to us, and the hash finds nothing to send
            assert event["outcome"] == "dispatched"
            assert event["details"]["instances"] == [tenant.instance_id]
            assert [r["outcome"] for r in two_way.pushed(tenant, record_id)] == ["unchanged"]
    assert two_way.crm_writes(since=sent) == []
    assert two_way.bss_versions(tenant) == dict.fromkeys(bss_ids, 1)  # written once

    again = two_way.pull(tenant)

    assert set(again.outcomes().values()) == {"unchanged"}, again.rows
    assert two_way.bss_versions(tenant) == dict.fromkeys(bss_ids, 1)
    assert two_way.crm_writes(since=sent) == []
    if copy_origin:
        assert two_way.stack.audit.rows(tenant.instance_id) == []  # the pusher saw nothing
