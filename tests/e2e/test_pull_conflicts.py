"""A record changed on both sides since its last sync, under each conflict policy, end to
end (real processes: sandbox BSS, json-server behind the proxy, dispatcher, pusher,
puller; docs/architecture.md §5, *Conflicts*).

An account is pushed to the CRM. With the pusher stopped (its messages wait in its
queue), the account is renamed in the BSS and its company renamed in the CRM, in the
order the case asks. Then either the push runs first (the pusher started) and the pull
after it — the nightly order — or the pull first. Whichever order, the winner's name
ends up on both sides, the loser's step writes nothing, the audit rows say who won and
why, and one more pull writes nothing anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.records import account_bodies
from tests.e2e.stack import Tenant, TestStack
from tests.e2e.thirdparty import FaultProxy
from tests.e2e.two_way import TwoWay, after, two_way_stack

pytestmark = pytest.mark.e2e

IN_BSS, IN_CRM = "Renamed in the BSS", "Renamed in the CRM"


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
def two_way(stack: TestStack, proxy: FaultProxy) -> Iterator[TwoWay]:
    assert stack.crm is not None
    stack.crm.reset()
    proxy.reset()
    yield TwoWay(stack, proxy)
    if not stack.pusher.alive:
        stack.pusher.start()


def pushed_account(two_way: TwoWay, tenant: Tenant) -> tuple[str, str]:
    """An account created in the BSS and pushed: its BSS id and its company's id."""
    account = two_way.stack.bss.create(tenant.org_id, "account", account_bodies(1)[0])
    [row] = two_way.pushed(tenant, account["id"])
    assert row["outcome"] == "created"
    return account["id"], row["external_id"]


def rename_both(two_way: TwoWay, tenant: Tenant, bss_id: str, company_id: str,
                crm_last: bool) -> None:
    """Rename the account in the BSS and the company in the CRM, the CRM last or first."""
    def in_bss() -> str:
        return str(two_way.stack.bss.patch(tenant.org_id, "account", bss_id,
                                           {"name": IN_BSS})["updatedAt"])

    def in_crm() -> str:
        return str(two_way.crm_patch("companies", company_id, {"name": IN_CRM})["updatedAt"])

    first, second = (in_bss, in_crm) if crm_last else (in_crm, in_bss)
    after(first())
    second()


CASES = [
    # policy, the CRM renamed last?, winner, why (the start of the audit row's reason)
    pytest.param("bss-wins", True, "bss", "the policy is bss-wins", id="bss-wins"),
    pytest.param("external-wins", False, "external", "the policy is external-wins",
                 id="external-wins"),
    pytest.param("newest-wins", True, "external", "newest-wins: the external record is newer",
                 id="newest-wins-crm-later"),
    pytest.param("newest-wins", False, "bss", "newest-wins: the BSS record is newer",
                 id="newest-wins-bss-later"),
]


@pytest.mark.parametrize("first", ["push", "pull"])
@pytest.mark.parametrize(("policy", "crm_last", "winner", "why"), CASES)
def test_a_record_changed_on_both_sides_is_decided_by_the_policy(
        two_way: TwoWay, policy: str, crm_last: bool, winner: str, why: str,
        first: str) -> None:
    tenant = two_way.tenant(conflict={"account": policy})
    bss_id, company_id = pushed_account(two_way, tenant)
    two_way.stack.pusher.stop()
    rename_both(two_way, tenant, bss_id, company_id, crm_last)

    if first == "push":
        two_way.stack.pusher.start()
        push = two_way.pushed(tenant, bss_id, count=2)[-1]
        pull = one_row(two_way.pull(tenant, entity="account").rows, company_id)
    else:
        pull = one_row(two_way.pull(tenant, entity="account").rows, company_id)
        two_way.stack.pusher.start()
        push = two_way.pushed(tenant, bss_id, count=2)[-1]

    name = IN_CRM if winner == "external" else IN_BSS
    assert two_way.bss_record(tenant, "account", bss_id)["name"] == name
    assert two_way.companies()[company_id]["name"] == name
    decided = push if first == "push" else pull  # the step that met the conflict
    if policy == "bss-wins" and first == "push":
        # bss-wins pushes without reading the CRM: an ordinary update, nothing to decide
        assert (push["outcome"], pull["outcome"]) == ("updated", "unchanged")
        assert "conflict" not in push["details"]
    else:
        assert decided["details"]["conflict"]["policy"] == policy
        assert decided["details"]["conflict"]["winner"] == winner
        assert decided["details"]["conflict"]["why"].startswith(why)
        assert (push["outcome"], pull["outcome"]) == expected_outcomes(winner, first)
    if decided["outcome"] == "skipped":
        assert decided["details"]["reason"].startswith(
            "changed on both sides since the last sync; " + why)

    settled_without_writes(two_way, tenant, company_id)


def expected_outcomes(winner: str, first: str) -> tuple[str, str]:
    """(push, pull) outcomes: the first step meets the conflict; the loser's side is
    skipped there, or finds nothing left to do when it runs second."""
    if winner == "bss":
        return ("updated", "unchanged") if first == "push" else ("updated", "skipped")
    return ("skipped", "updated") if first == "push" else ("unchanged", "updated")


def one_row(rows: list[dict[str, Any]], external_id: str) -> dict[str, Any]:
    [row] = [r for r in rows if r["external_id"] == external_id]
    return row


def settled_without_writes(two_way: TwoWay, tenant: Tenant, company_id: str) -> None:
    """One more pull finds the record unchanged and writes nowhere."""
    versions = two_way.bss_versions(tenant)
    sent = len(two_way.proxy.requests())
    again = one_row(two_way.pull(tenant, entity="account").rows, company_id)
    assert again["outcome"] == "unchanged"
    assert two_way.bss_versions(tenant) == versions
    assert two_way.crm_writes(since=sent) == []
