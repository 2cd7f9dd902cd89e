"""A ``$bssId`` parent not linked yet is pulled first (services.puller.pull,
``RecordPull._pull_parent``; the handler's ``pull_parent`` audits it): read with
its object's ``pull.read``, transformed, written, linked — or, when that cannot
link it, the child waits with ``DependencyPending`` as before."""

from __future__ import annotations

import pytest

from services.puller.pull import MAX_PARENT_DEPTH, parent_pull_message_id
from shared.errors import BssUnavailable, DependencyPending
from tests.unit.puller.conftest import INSTANCE, MESSAGE, ORG, World, acme_with, company, person
from tests.unit.pusher.fakes import Answer

OTHER = "00000000-0000-4000-8000-000000000002"


async def test_a_contact_whose_company_is_not_linked_pulls_the_company_first(world: World):
    world.remote.script("getCompany", Answer(200, company(id=17)))

    result = await world.handle("contact", person(companyId=17))

    assert world.remote.sent == ["GET /companies/17"]
    [account] = world.bss.of(ORG, "account")
    [contact] = world.bss.of(ORG, "contact")
    assert account["name"] == "Globex Telecom" and contact["accountId"] == account["id"]
    assert [(w.method, w.entity, w.origin) for w in world.bss.writes] == [
        ("POST", "account", INSTANCE), ("POST", "contact", INSTANCE)]
    assert world.link("account", "17").bss_id == account["id"]
    assert world.link("account", "17").state == "linked"
    assert result.outcome == "created"
    assert result.details["parents"] == [f"account 17 created {account['id']}"]
    [row] = world.audit.rows  # the parent's own row; the runtime writes the child's
    assert (row.service, row.entity, row.direction, row.action, row.outcome) == (
        "puller", "account", "pull", "dependency", "created")
    assert (row.record_id, row.external_id, row.correlation_id) == (account["id"], "17",
                                                                    MESSAGE)
    assert row.message_id == parent_pull_message_id(INSTANCE, "account", "17", MESSAGE, 1)


async def test_a_parent_linked_meanwhile_is_not_pulled_again(world: World):
    world.remote.script("getCompany", Answer(200, company(id=17)))
    await world.handle("contact", person(id=41, companyId=17))

    result = await world.handle("contact", person(id=42, companyId=17), message_id=OTHER)

    assert result.outcome == "created" and "parents" not in result.details
    assert world.remote.sent == ["GET /companies/17"]
    assert len(world.bss.of(ORG, "account")) == 1


async def test_a_parent_gone_from_the_third_party_leaves_the_child_waiting(world: World):
    world.remote.script("getCompany", Answer(404, {"error": "not found"}))

    with pytest.raises(DependencyPending) as caught:
        await world.handle("contact", person(companyId=17))

    assert caught.value.retryable and caught.value.entity == "account"
    assert world.bss.writes == []
    [row] = world.audit.rows
    assert (row.entity, row.outcome) == ("account", "skipped")
    assert world.link("contact", "41").claim is None


async def test_a_parent_the_instance_may_not_create_leaves_the_child_waiting(world: World):
    world.permit(("contact", "create"), ("account", "update"))

    world.remote.script("getCompany", Answer(200, company(id=17)))
    with pytest.raises(DependencyPending):
        await world.handle("contact", person(companyId=17))

    assert world.bss.writes == []
    assert "not permitted to create" in world.audit.rows[0].details["reason"]


async def test_a_parent_another_delivery_is_pulling_leaves_the_child_waiting(world: World):
    await world.links.claim_external_for_create(INSTANCE, "account", "17", OTHER, 300)
    world.remote.script("getCompany", Answer(200, company(id=17)))

    with pytest.raises(DependencyPending):
        await world.handle("contact", person(companyId=17))

    assert world.bss.writes == [] and world.audit.rows == []  # nothing happened to it
    assert world.link("account", "17").claim == OTHER


async def test_a_parent_breaking_the_schema_is_audited_failed_and_the_child_waits(
        world: World):
    world.remote.script("getCompany", Answer(200, company(id=17, email="not an email")))

    with pytest.raises(DependencyPending):
        await world.handle("contact", person(companyId=17))

    assert world.bss.writes == []
    [row] = world.audit.rows
    assert (row.entity, row.outcome, row.error_class) == ("account", "failed",
                                                          "SchemaViolation")
    assert "/email" in row.error_message
    assert "SchemaViolation" in world.link("account", "17").last_error


async def test_a_transient_failure_of_the_parents_write_leaves_the_child_waiting(
        world: World):
    world.remote.script("getCompany", Answer(200, company(id=17)),
                        Answer(200, company(id=17)))
    world.bss.fail_next(BssUnavailable("the BSS answered 503", http_status=503))
    with pytest.raises(DependencyPending):
        await world.handle("contact", person(companyId=17))
    assert world.audit.rows[0].outcome == "failed"

    result = await world.handle("contact", person(companyId=17))  # the retry

    assert result.outcome == "created"
    assert len(world.bss.of(ORG, "account")) == 1


async def test_without_an_audit_log_no_parent_is_pulled(world: World):
    world.handler.audit = None
    with pytest.raises(DependencyPending):
        await world.handle("contact", person(companyId=17))
    assert world.remote.sent == [] and world.bss.writes == []


def chain(length: int) -> list[dict]:
    """Companies 1…length, each the parent of the one before (the last has none)."""
    return [company(id=n, accountNumber=f"C-{n:06d}",
                    parentCompanyId=n + 1 if n < length else None)
            for n in range(1, length + 1)]


async def test_parents_of_parents_are_pulled_first_up_to_the_depth_limit(world: World):
    companies = chain(MAX_PARENT_DEPTH + 1)
    world.remote.script("getCompany", *(Answer(200, c) for c in companies[1:]))

    result = await world.handle("account", companies[0])

    assert result.outcome == "created"
    accounts = {a["code"]: a for a in world.bss.of(ORG, "account")}
    assert len(accounts) == MAX_PARENT_DEPTH + 1
    for n in range(1, MAX_PARENT_DEPTH + 1):
        child, parent = accounts[f"C-{n:06d}"], accounts[f"C-{n + 1:06d}"]
        assert child["parentAccountId"] == parent["id"]
    # written top-down: the farthest parent first
    assert [w.body["code"] for w in world.bss.writes] == [
        f"C-{n:06d}" for n in range(MAX_PARENT_DEPTH + 1, 0, -1)]


async def test_a_chain_deeper_than_the_limit_waits(world: World):
    companies = chain(MAX_PARENT_DEPTH + 2)
    world.remote.script("getCompany", *(Answer(200, c) for c in companies[1:]))

    with pytest.raises(DependencyPending):
        await world.handle("account", companies[0])

    assert world.bss.writes == []
    assert [r.outcome for r in world.audit.rows] == ["failed"] * MAX_PARENT_DEPTH
    assert all(r.error_class == "DependencyPending" for r in world.audit.rows)


async def test_a_record_referring_to_itself_is_not_pulled_first(world: World):
    with pytest.raises(DependencyPending):
        await world.handle("account", company(id=17, parentCompanyId=17))
    assert world.remote.sent == []


async def test_a_parent_whose_object_cannot_read_is_not_pulled(world: World, tmp_path):
    world.use(world.target.instance, acme_with(tmp_path, "Account", read=None))
    with pytest.raises(DependencyPending):
        await world.handle("contact", person(companyId=17))
    assert world.remote.sent == [] and world.audit.rows == []
