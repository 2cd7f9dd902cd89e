"""A create whose answer was lost, then a delete (docs/architecture.md §5 step 4).

A create notes on its link what it sends before it goes out. When its answer never
comes back (the process dies, the answer is unusable) and the record is then deleted
in the BSS, the delete finds the remote record — by the match with the record the
create sent, or by replaying the create with the same idempotency key — and deletes
it. Nothing found: the create made nothing (skipped). Nothing can look: retried with
the reason, never "never synchronized".
"""

from __future__ import annotations

import dataclasses

import pytest

from shared.errors import (
    CreateOutcomeUnknown,
    DependencyPending,
    RecordBusy,
    RemoteProtocolError,
    RemoteUnavailable,
)
from shared.storage.links import LinkConflict, PushMark
from tests.unit.pusher.conftest import INSTANCE, ORG, World, sample
from tests.unit.pusher.fakes import Answer
from tests.unit.pusher.test_push import ACCOUNT, CONTACT, REPLAYED, account, header

MATCH = "GET /companies?accountNumber=C-000412"
TIMEOUT = RemoteUnavailable("POST /people failed: ReadTimeout")


async def lost_company_create(world: World, external_id: str = "co-7") -> None:
    """The account's create reaches Acme (``external_id``) but its answer is unusable; the
    account is then deleted in the BSS."""
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"name": "Northwind, no id"}))
    with pytest.raises(RemoteProtocolError):
        await world.run("account", ACCOUNT, "m-1")
    world.bss.remove(ORG, "account", ACCOUNT)


async def lost_person_create(world: World) -> None:
    """The contact's create times out (Acme may have made it); the contact is then
    deleted in the BSS."""
    world.put("contact", sample("contact"))
    world.links.seed(INSTANCE, "account", sample("contact")["accountId"], external_id="co-1")
    world.remote.script("createPerson", Answer(error=TIMEOUT))
    with pytest.raises(RemoteUnavailable):
        await world.run("contact", CONTACT, "m-1")
    world.bss.remove(ORG, "contact", CONTACT)


# -- the note a create leaves ---------------------------------------------------------------


async def test_a_create_notes_what_it_sends_on_its_link_before_it_goes_out(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))
    send, at_send = world.remote.send, []

    async def watching(plan, **kwargs):
        at_send.append(world.link("account", ACCOUNT))
        return await send(plan, **kwargs)

    world.remote.send = watching

    await world.run("account", ACCOUNT)

    matching, creating = at_send
    assert matching.create_sent_at is None  # the match changes nothing remotely
    trace = creating.create_trace
    assert creating.create_sent_at is not None and creating.claim == "m-1"
    assert trace["key"] == header(world, 1, "Idempotency-Key")
    assert trace["record"] == account() and trace["body"] == world.remote.requests[1].body
    link = world.link("account", ACCOUNT)
    assert (link.state, link.create_sent_at, link.create_sent) == ("linked", None, None)


async def test_a_create_refused_made_nothing_and_its_note_goes(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(422, {"message": "vatId is invalid"}))

    with pytest.raises(Exception, match="answered 422"):
        await world.run("account", ACCOUNT)

    link = world.link("account", ACCOUNT)
    assert (link.create_sent_at, link.claim) == (None, None)
    assert link.last_error.startswith("RemoteRejected")


async def test_a_create_whose_answer_was_lost_keeps_its_note(world):
    await lost_person_create(world)

    link = world.link("contact", CONTACT)
    assert (link.state, link.external_id, link.claim) == ("creating", None, None)
    assert link.create_pending and link.create_trace["record"]["id"] == CONTACT


async def test_a_create_whose_claim_was_taken_over_meanwhile_is_not_sent(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    note = world.links.note_create_sent

    async def taken_over_first(*args, **kwargs):
        await world.links.claim_for_create(INSTANCE, "account", ACCOUNT, "m-other", 0)
        return await note(*args, **kwargs)

    world.links.note_create_sent = taken_over_first

    with pytest.raises(RecordBusy, match="taken over by another delivery"):
        await world.run("account", ACCOUNT)

    assert world.remote.sent == [MATCH]  # the create never went out
    link = world.link("account", ACCOUNT)
    assert (link.claim, link.create_sent_at) == ("m-other", None)


# -- the delete finds what the create made ----------------------------------------------------


async def test_a_deleted_record_whose_create_answer_was_unusable_is_matched_then_deleted(world):
    await lost_company_create(world)
    world.remote.script("listCompanies", Answer(200, [{"id": "co-7", "name": "Northwind"}]))
    world.remote.script("deleteCompany", Answer(204))

    outcome = await world.run("account", ACCOUNT, "m-2")

    assert world.remote.sent[2:] == [MATCH, "DELETE /companies/co-7"]
    assert (outcome.outcome, outcome.external_id, outcome.http_status) == ("deleted", "co-7", 204)
    assert "lost its answer" in outcome.details["resolved"]
    assert "GET /companies found co-7" in outcome.details["resolved"]
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.claim, link.create_sent) == (
        "deleted", "co-7", None, None)
    assert link.push_mark == PushMark("m-2", 0, "deleted")


async def test_a_lost_create_the_match_does_not_find_made_nothing(world):
    await lost_company_create(world)
    world.remote.script("listCompanies", Answer(200, []))

    outcome = await world.run("account", ACCOUNT, "m-2")

    assert world.remote.sent[2:] == [MATCH]
    assert outcome.outcome == "skipped" and outcome.external_id is None
    assert "made no record in the third party (its match finds none)" in (
        outcome.details["reason"])
    link = world.link("account", ACCOUNT)
    assert (link.state, link.claim, link.create_sent_at) == ("creating", None, None)
    again = await world.run("account", ACCOUNT, "m-3")  # now truly never synchronized
    assert "never synchronized" in again.details["reason"] and len(world.remote.sent) == 3


async def test_a_lost_person_create_is_replayed_with_its_key_then_deleted(world):
    await lost_person_create(world)
    first = world.remote.requests[0]
    world.remote.script("createPerson", Answer(201, {"id": "pe-1", "lastName": "x"}, REPLAYED))
    world.remote.script("deletePerson", Answer(200, {}))

    outcome = await world.run("contact", CONTACT, "m-2")

    replay = world.remote.requests[1]
    assert world.remote.sent[1:] == ["POST /people", "DELETE /people/pe-1"]
    assert replay.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
    assert replay.body == first.body  # the same create, not one made from other values
    assert (outcome.outcome, outcome.external_id) == ("deleted", "pe-1")
    assert "answered with the record its idempotency key made" in outcome.details["resolved"]
    assert world.link("contact", CONTACT).state == "deleted"


async def test_a_replay_that_makes_the_record_now_deletes_it_too(world):
    await lost_person_create(world)
    world.remote.script("createPerson", Answer(201, {"id": "pe-2"}))  # no replay header
    world.remote.script("deletePerson", Answer(200, {}))

    outcome = await world.run("contact", CONTACT, "m-2")

    assert world.remote.sent[1:] == ["POST /people", "DELETE /people/pe-2"]
    assert (outcome.outcome, outcome.external_id) == ("deleted", "pe-2")
    assert "made pe-2 now (the first had not reached the third party)" in (
        outcome.details["resolved"])


async def test_a_lost_create_nothing_can_find_is_retried_with_the_reason(world):
    await lost_person_create(world)
    connector = world.target.connector
    world.target = dataclasses.replace(world.target, connector=dataclasses.replace(
        connector, settings={**connector.settings, "idempotency": {}}))

    with pytest.raises(CreateOutcomeUnknown) as unknown:
        await world.run("contact", CONTACT, "m-2")

    assert unknown.value.retryable
    assert "may have reached the third party" in str(unknown.value)
    assert "its id is unknown" in str(unknown.value)
    assert world.remote.sent == ["POST /people"]  # the lost create only: nothing more
    link = world.link("contact", CONTACT)
    assert link.create_pending and link.claim is None
    assert link.last_error.startswith("CreateOutcomeUnknown: a create of this contact")


async def test_the_id_once_found_is_kept_when_the_delete_fails(world):
    await lost_company_create(world)
    world.remote.script("listCompanies", Answer(200, [{"id": "co-7"}]))
    world.remote.script("deleteCompany", Answer(503, {}), Answer(204))

    with pytest.raises(RemoteUnavailable):
        await world.run("account", ACCOUNT, "m-2")
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.create_sent_at) == ("linked", "co-7", None)
    outcome = await world.run("account", ACCOUNT, "m-2")

    assert world.remote.sent[2:] == [MATCH, "DELETE /companies/co-7", "DELETE /companies/co-7"]
    assert (outcome.outcome, outcome.external_id) == ("deleted", "co-7")


async def test_a_match_naming_a_record_linked_to_another_is_never_deleted(world):
    world.links.seed(INSTANCE, "account", "acc_other", external_id="co-7")
    await lost_company_create(world)
    world.remote.script("listCompanies", Answer(200, [{"id": "co-7"}]))

    with pytest.raises(LinkConflict):
        await world.run("account", ACCOUNT, "m-2")

    assert world.remote.sent[2:] == [MATCH]
    assert world.link("account", ACCOUNT).create_pending


# -- through the handler ----------------------------------------------------------------------


async def test_the_create_redelivered_after_its_process_died_and_the_record_went_deletes(world):
    """The pusher is killed once the create went out: the claim is still the message's,
    the note is on the link. The record is deleted in the BSS; the create message's
    redelivery finds the company and deletes it; the delete event's message then finds
    nothing left to do."""
    world.put("account", account())
    await world.links.claim_for_create(INSTANCE, "account", ACCOUNT, "m-create", 300)
    await world.links.note_create_sent(INSTANCE, "account", ACCOUNT, "m-create",
                                       {"key": "k", "record": account(), "body": {}})
    world.bss.remove(ORG, "account", ACCOUNT)
    world.remote.script("listCompanies", Answer(200, [{"id": "co-7"}]))
    world.remote.script("deleteCompany", Answer(204))

    redelivered = await world.handle("account", ACCOUNT, "m-create", action="create")
    deleted_event = await world.handle("account", ACCOUNT, "m-delete", action="delete")

    assert (redelivered.outcome.value, redelivered.external_id) == ("deleted", "co-7")
    assert deleted_event.outcome.value == "skipped"
    assert world.remote.sent == [MATCH, "DELETE /companies/co-7"]


async def test_a_parent_whose_lost_create_is_deleted_inline_is_no_parent(world):
    await lost_company_create(world)
    world.put("contact", sample("contact", accountId=ACCOUNT))
    world.remote.script("listCompanies", Answer(200, [{"id": "co-7"}]))
    world.remote.script("deleteCompany", Answer(204))

    with pytest.raises(DependencyPending, match=f"account {ACCOUNT} could not be pushed"):
        await world.run("contact", CONTACT, "m-2")

    assert world.remote.sent[2:] == [MATCH, "DELETE /companies/co-7"]
    assert world.link("account", ACCOUNT).state == "deleted"


async def test_an_unusable_answer_holding_a_nul_still_releases_the_claim(world):
    """The error the link remembers quotes the answer; PostgreSQL refuses a NUL in text,
    which would fail the release and leave the record claimed for 300 s."""
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(error=RemoteProtocolError(
        'POST /companies answered 201 with a body that is not JSON: {"id": 7\x00')))

    with pytest.raises(RemoteProtocolError):
        await world.run("account", ACCOUNT)

    link = world.link("account", ACCOUNT)
    assert link.claim is None and "\x00" not in link.last_error
