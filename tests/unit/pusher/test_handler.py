"""``PushHandler``: the checks before a push, and parents pushed first with their own
audit rows (in-memory fakes, no I/O)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from services.pusher.push import PARENT_NAMESPACE
from shared.audit import Outcome
from shared.errors import DependencyPending, RemoteRejected, RemoteUnavailable
from tests.unit.pusher.conftest import INSTANCE, World, sample
from tests.unit.pusher.fakes import Answer, FakeInstances

ACCOUNT = "acc_01HV3K8Q2Z7M4N5P6R7S8T9V0W"
CONTACT = "ct_7c1d2e9a-4b5f-4c1e-9a0d-1f2e3d4c5b6a"
CASE = "case_5521"


def parent_message_id(entity: str, record_id: str, child_message_id: str, depth: int) -> str:
    return str(uuid.uuid5(PARENT_NAMESPACE,
                          f"{INSTANCE}:{entity}:{record_id}:{child_message_id}:{depth}"))


def with_account(world: World) -> None:
    world.put("account", sample("account", parentAccountId=None))
    world.put("contact", sample("contact"))


async def test_a_contact_gets_its_account_pushed_first_and_audited(world):
    with_account(world)
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))
    world.remote.script("createPerson", Answer(201, {"id": "pe-1"}))

    result = await world.handle("contact", CONTACT, "m-contact")

    assert world.remote.sent == ["GET /companies?accountNumber=C-000412", "POST /companies",
                                 "POST /people"]
    assert world.remote.requests[2].body["companyId"] == "co-1"
    assert (result.outcome, result.external_id) == (Outcome.CREATED, "pe-1")
    assert result.details["parents"] == [f"account {ACCOUNT}"]
    [row] = world.audit.rows
    assert (row.outcome, row.entity, row.record_id, row.external_id, row.action,
            row.direction, row.http_status) == (Outcome.CREATED, "account", ACCOUNT, "co-1",
                                                "dependency", "push", 201)
    assert row.message_id == parent_message_id("account", ACCOUNT, "m-contact", 1)
    assert row.correlation_id == "m-contact"  # the child's row is found from the parent's
    assert row.details["pushedFirstFor"] == "a record depending on it"
    assert world.link("account", ACCOUNT).external_id == "co-1"
    assert world.link("contact", CONTACT).external_id == "pe-1"


async def test_a_case_gets_both_parents_pushed_first(world):
    with_account(world)
    world.put("case", sample("case"))
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))
    world.remote.script("createPerson", Answer(201, {"id": "pe-1"}))
    world.remote.script("createTicket", Answer(201, {"id": "tk-1"}))

    result = await world.handle("case", CASE, "m-case")

    assert world.remote.sent[-1] == "POST /tickets"
    assert world.remote.requests[-1].body["companyId"] == "co-1"
    assert world.remote.requests[-1].body["personId"] == "pe-1"
    assert result.details["parents"] == [f"account {ACCOUNT}", f"contact {CONTACT}"]
    assert [(r.entity, r.outcome) for r in world.audit.rows] == [
        ("account", Outcome.CREATED), ("contact", Outcome.CREATED)]


async def test_a_parent_that_cannot_be_pushed_leaves_the_child_pending(world):
    world.put("contact", sample("contact"))  # its account is not in the BSS

    with pytest.raises(DependencyPending, match=f"account {ACCOUNT} could not be pushed "
                                                "first: the account is gone from the BSS"):
        await world.handle("contact", CONTACT, "m-contact")

    [row] = world.audit.rows
    assert (row.entity, row.outcome, row.action) == ("account", Outcome.SKIPPED, "dependency")
    assert world.remote.requests == []
    assert world.link("contact", CONTACT).last_error.startswith("DependencyPending: ")


async def test_a_parent_that_fails_is_audited_failed_and_fails_the_child(world):
    with_account(world)
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(422, {"message": "name taken"}))

    with pytest.raises(RemoteRejected, match="POST /companies answered 422"):
        await world.handle("contact", CONTACT, "m-contact")

    [row] = world.audit.rows
    assert (row.entity, row.outcome, row.error_class, row.http_status) == (
        "account", Outcome.FAILED, "RemoteRejected", 422)
    assert "POST /companies answered 422" in row.error_message
    assert world.remote.sent[-1] == "POST /companies"  # the contact was not sent
    assert world.link("account", ACCOUNT).last_error.startswith("RemoteRejected: ")
    assert world.link("contact", CONTACT).last_error.startswith("RemoteRejected: ")


# -- what the handler skips before any push -------------------------------------------------------


async def test_a_message_for_an_entity_the_instance_may_not_push_is_skipped(world):
    world.permit(("contact", "create"))
    world.put("account", sample("account", parentAccountId=None))

    result = await world.handle("account", ACCOUNT)

    assert (result.outcome, result.details["reason"]) == (
        Outcome.SKIPPED, "the instance may not push account records")
    assert world.bss.reads == [] and world.link("account", ACCOUNT) is None


async def test_a_message_for_an_entity_the_connector_does_not_push_is_skipped(world):
    result = await world.handle("invoice", "inv-1")

    assert (result.outcome, result.details["reason"]) == (
        Outcome.SKIPPED, "connector acme-crm does not push invoice")
    assert world.bss.reads == []


async def test_messages_for_unknown_inactive_or_foreign_instances_are_skipped(world):
    world.handler.registry = FakeInstances()
    assert (await world.handle("account", ACCOUNT)).details["reason"] == (
        f"instance {INSTANCE} does not exist")

    inactive = dataclasses.replace(world.target.instance, active=False)
    world.handler.registry = FakeInstances(dataclasses.replace(world.target, instance=inactive))
    assert (await world.handle("account", ACCOUNT)).details["reason"] == (
        f"instance {INSTANCE} is inactive")

    foreign = dataclasses.replace(world.target.instance, org_id="org-2")
    world.handler.registry = FakeInstances(dataclasses.replace(world.target, instance=foreign))
    assert (await world.handle("account", ACCOUNT)).details["reason"] == (
        f"instance {INSTANCE} belongs to another organization")
    assert world.bss.reads == [] and world.remote.requests == []


async def test_aclose_closes_the_clients(world):
    await world.handler.aclose()

    assert world.handler.registry.closed and world.bss.closed


# -- a parent's audit row lost with its process ---------------------------------------------------


async def test_a_childs_redelivery_writes_the_row_its_parent_lost(world):
    """The pusher died after storing the parent's link and before the parent's audit row
    (so before the child was sent): the child's redelivery pushes the parent again, which
    finds its own mark — no second create — and the parent gets its one row."""
    with_account(world)
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))
    world.remote.script("createPerson", Answer(error=RemoteUnavailable("the process died")),
                        Answer(201, {"id": "pe-1"}))
    with pytest.raises(RemoteUnavailable):
        await world.handle("contact", CONTACT, "m-contact")
    world.audit.rows.clear()  # the parent's row: lost with the process

    result = await world.handle("contact", CONTACT, "m-contact")  # redelivered

    assert world.remote.sent == ["GET /companies?accountNumber=C-000412", "POST /companies",
                                 "POST /people", "POST /people"]
    assert (result.outcome, result.external_id) == (Outcome.CREATED, "pe-1")
    [row] = world.audit.rows
    assert (row.entity, row.outcome, row.external_id) == ("account", Outcome.CREATED, "co-1")
    assert row.message_id == parent_message_id("account", ACCOUNT, "m-contact", 1)
    assert "ended before the audit row was written" in row.details["recovered"]


async def test_a_childs_retry_does_not_write_its_parents_row_twice(world):
    with_account(world)
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))
    world.remote.script("createPerson", Answer(503, {"message": "busy"}),
                        Answer(201, {"id": "pe-1"}))
    with pytest.raises(RemoteUnavailable):
        await world.handle("contact", CONTACT, "m-contact")

    result = await world.handle("contact", CONTACT, "m-contact", attempt=1)

    assert result.outcome == Outcome.CREATED
    assert [(r.entity, r.outcome) for r in world.audit.rows] == [("account", Outcome.CREATED)]
    assert world.remote.sent.count("POST /companies") == 1


async def test_a_parents_lost_row_is_written_even_after_an_earlier_failed_row(world):
    """The parent failed once (its ``failed`` row is there), was then pushed, and its
    ``created`` row was lost with the process: ``failed`` is not what settled it, so the
    child's redelivery writes the row it lost."""
    with_account(world)
    world.remote.script("listCompanies", Answer(200, []), Answer(200, []))
    world.remote.script("createCompany", Answer(503, {"message": "busy"}),
                        Answer(201, {"id": "co-1"}))
    world.remote.script("createPerson", Answer(error=RemoteUnavailable("the process died")),
                        Answer(201, {"id": "pe-1"}))
    with pytest.raises(RemoteUnavailable):
        await world.handle("contact", CONTACT, "m-contact")
    with pytest.raises(RemoteUnavailable):
        await world.handle("contact", CONTACT, "m-contact", attempt=1)
    assert [r.outcome for r in world.audit.rows] == [Outcome.FAILED, Outcome.CREATED]
    del world.audit.rows[1]  # the parent's row: lost with the process

    result = await world.handle("contact", CONTACT, "m-contact", attempt=1)  # redelivered

    assert (result.outcome, result.external_id) == (Outcome.CREATED, "pe-1")
    assert world.remote.sent.count("POST /companies") == 2  # the 503, then the create
    assert [(r.entity, r.outcome) for r in world.audit.rows] == [
        ("account", Outcome.FAILED), ("account", Outcome.CREATED)]
    assert "ended before the audit row was written" in world.audit.rows[1].details["recovered"]
