"""``RecordPush``, branch by branch, against in-memory fakes (no I/O).

Each test sets up the BSS record, its link and the third party's answers, runs one
push, and checks what can be observed: the requests sent, the link as stored, the
outcome (or the error raised).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from services.pusher.plan import PushPlanner, payload_hash
from services.pusher.push import CLAIM_STALE_SECONDS, MAX_PARENT_DEPTH
from shared.connector import document_from_bundle
from shared.errors import (
    AmbiguousMatch,
    DependencyPending,
    RateLimited,
    RecordBusy,
    RemoteConflict,
    RemoteProtocolError,
    RemoteRejected,
    RemoteUnavailable,
    SchemaViolation,
)
from shared.storage.links import PushMark
from shared.transform import LinksNotLoaded, PreloadedLinks
from tests.unit.pusher.conftest import INSTANCE, ORG, World, sample
from tests.unit.pusher.fakes import Answer

ACCOUNT = "acc_01HV3K8Q2Z7M4N5P6R7S8T9V0W"


def account(**changes):
    """The sample account, without a parent account (which would have to be linked)."""
    return sample("account", **{"parentAccountId": None, **changes})


def body(world: World, index: int) -> dict:
    return world.remote.requests[index].body


def header(world: World, index: int, name: str) -> str | None:
    return world.remote.requests[index].headers.get(name)


async def planned_body(world: World, entity: str = "account",
                       record_id: str = ACCOUNT) -> dict:
    """The body a create of the record as the BSS holds it now would send."""
    target = world.target
    planner = PushPlanner(obj=target.connector.objects_for(entity)[0],
                          instance=target.instance, connector=target.connector,
                          checker=target.checker, base_url=target.client.base_url,
                          record_id=record_id, message_id="m-plan")
    record = await world.bss.get(ORG, entity, record_id)
    claim = await world.links.claim_for_create(INSTANCE, entity, record_id, "m-plan", 0)
    await world.links.forget_claim(claim, "m-plan")
    preloaded = PreloadedLinks()
    while True:
        try:
            return planner.create(record, claim.link,
                                  target.transform_context(preloaded)).body
        except LinksNotLoaded as missing:
            for _kind, ref_entity, ref_id in missing.wanted:
                found = await world.links.external_ids(INSTANCE, ref_entity, [ref_id])
                preloaded.external[(ref_entity, ref_id)] = found.get(ref_id)


def linked(world: World, external_id: str = "co-1", push_hash: str | None = "old") -> None:
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id=external_id,
                     push_hash=push_hash)


# -- create / update / unchanged -----------------------------------------------------------


async def test_create_looks_for_a_match_then_creates_and_links(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1", "name": "Northwind"}))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies?accountNumber=C-000412", "POST /companies"]
    sent = body(world, 1)
    assert sent["name"] == "Northwind Logistics" and sent["bssId"] == ACCOUNT
    assert header(world, 1, "Idempotency-Key") is not None  # the connector asks for it
    assert header(world, 0, "Idempotency-Key") is None  # not on the match
    assert (outcome.outcome, outcome.external_id, outcome.http_status) == ("created", "co-1", 201)
    assert outcome.details["request"] == "POST /companies"
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.claim) == ("linked", "co-1", None)
    assert link.push_hash == payload_hash(sent)


async def test_update_sends_the_changed_record_and_stores_the_new_hash(world):
    linked(world)
    world.put("account", account(name="Northwind Renamed"))
    world.remote.script("updateCompany", Answer(200, {"id": "co-1"}))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["PATCH /companies/co-1"]
    assert body(world, 0)["name"] == "Northwind Renamed"
    assert header(world, 0, "Idempotency-Key") is None  # the connector keys creates only
    assert (outcome.outcome, outcome.external_id, outcome.http_status) == ("updated", "co-1", 200)
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.claim) == ("linked", "co-1", None)
    assert link.push_hash == payload_hash(body(world, 0))


async def test_an_update_with_the_hash_already_pushed_sends_nothing(world):
    linked(world)
    world.put("account", account())
    world.remote.script("updateCompany", Answer(200, {"id": "co-1"}))
    await world.run("account", ACCOUNT, "m-1")
    pushed = world.link("account", ACCOUNT)

    outcome = await world.run("account", ACCOUNT, "m-2")  # the same record again

    assert world.remote.sent == ["PATCH /companies/co-1"]  # the first push only
    assert (outcome.outcome, outcome.external_id) == ("unchanged", "co-1")
    link = world.link("account", ACCOUNT)
    assert link.claim is None and link.push_hash == pushed.push_hash
    assert link.last_pushed_at == pushed.last_pushed_at  # not a push


async def test_a_body_breaking_the_request_schema_is_not_sent(world):
    linked(world)
    world.put("account", account(email="not an e-mail address"))

    with pytest.raises(SchemaViolation, match=r"request schema of PATCH /companies/\{id\}"):
        await world.run("account", ACCOUNT)

    assert world.remote.requests == []
    link = world.link("account", ACCOUNT)
    assert link.claim is None and link.last_error.startswith("SchemaViolation: ")
    assert link.push_hash == "old"


# -- delete ----------------------------------------------------------------------------------


async def test_delete_of_a_record_gone_from_the_bss(world):
    linked(world)
    world.remote.script("deleteCompany", Answer(204))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["DELETE /companies/co-1"]
    assert (outcome.outcome, outcome.external_id, outcome.http_status) == ("deleted", "co-1", 204)
    link = world.link("account", ACCOUNT)
    assert (link.state, link.push_hash, link.claim) == ("deleted", None, None)


async def test_delete_without_the_permission_is_skipped_and_the_link_kept(world):
    linked(world)
    world.permit(("account", "create"), ("account", "update"))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.requests == []
    assert outcome.outcome == "skipped"
    assert outcome.details["reason"] == ("the instance is not permitted to delete account "
                                         "records (push)")
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.claim) == ("linked", "co-1", None)


@pytest.mark.parametrize("status", [404, 410])
async def test_delete_answered_gone_counts_as_deleted(world, status):
    linked(world)
    world.remote.script("deleteCompany", Answer(status, {"message": "no such company"}))

    outcome = await world.run("account", ACCOUNT)

    assert (outcome.outcome, outcome.http_status) == ("deleted", status)
    assert outcome.details["note"] == "already gone remotely"
    assert world.link("account", ACCOUNT).state == "deleted"


async def test_delete_that_fails_keeps_the_link_and_remembers_the_error(world):
    linked(world)
    world.remote.script("deleteCompany", Answer(503, {"message": "maintenance"}))

    with pytest.raises(RemoteUnavailable, match="DELETE /companies/co-1 answered 503"):
        await world.run("account", ACCOUNT)

    link = world.link("account", ACCOUNT)
    assert (link.state, link.claim) == ("linked", None)
    assert link.last_error.startswith("RemoteUnavailable: DELETE /companies/co-1 answered 503")


# -- the remote record is gone: re-create -----------------------------------------------------


async def test_update_answered_404_creates_the_record_again(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []), Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}), Answer(201, {"id": "co-2"}))
    await world.run("account", ACCOUNT, "m-1")
    first_key = header(world, 1, "Idempotency-Key")
    world.put("account", account(name="Northwind Renamed"))
    world.remote.script("updateCompany", Answer(404, {"message": "no company co-1"}))

    outcome = await world.run("account", ACCOUNT, "m-2")

    assert world.remote.sent[2:] == ["PATCH /companies/co-1",
                                     "GET /companies?accountNumber=C-000412", "POST /companies"]
    assert body(world, 4)["name"] == "Northwind Renamed"
    assert (outcome.outcome, outcome.external_id, outcome.http_status) == ("created", "co-2", 201)
    assert outcome.details["recreated"] == "the remote record co-1 no longer existed"
    assert header(world, 4, "Idempotency-Key") != first_key  # a new record: a new key
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.claim) == ("linked", "co-2", None)


async def test_update_answered_404_without_the_create_permission_is_skipped(world):
    linked(world)
    world.put("account", account(name="Northwind Renamed"))
    world.permit(("account", "update"), ("account", "delete"))
    world.remote.script("updateCompany", Answer(404, {"message": "no company co-1"}))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["PATCH /companies/co-1"]
    assert outcome.outcome == "skipped"
    assert outcome.details["reason"] == ("the remote record was deleted and the instance may "
                                         "not create it again")
    link = world.link("account", ACCOUNT)
    assert (link.state, link.push_hash, link.claim) == ("deleted", None, None)


async def test_a_recreate_whose_record_another_delivery_claimed_meanwhile_is_busy(world):
    """Between the link marked deleted (404 on update) and the new claim, another delivery
    may claim the record to create it: this one must not create it too."""
    linked(world)
    world.put("account", account(name="Northwind Renamed"))
    world.remote.script("updateCompany", Answer(404, {"message": "no company co-1"}))
    mark_deleted = world.links.mark_deleted

    async def deleted_then_claimed_elsewhere(*args, **kwargs):
        done = await mark_deleted(*args, **kwargs)
        await world.links.claim_for_create(INSTANCE, "account", ACCOUNT, "m-other",
                                           CLAIM_STALE_SECONDS)
        return done

    world.links.mark_deleted = deleted_then_claimed_elsewhere

    with pytest.raises(RecordBusy):
        await world.run("account", ACCOUNT, "m-2")

    assert world.remote.sent == ["PATCH /companies/co-1"]  # nothing created by this one
    link = world.link("account", ACCOUNT)
    assert (link.state, link.claim) == ("deleted", "m-other")  # the other delivery's claim


async def test_update_answered_422_is_not_a_recreate(world):
    linked(world)
    world.put("account", account(name="Northwind Renamed"))
    world.remote.script("updateCompany", Answer(422, {"message": "bad vatId"}))

    with pytest.raises(RemoteRejected, match="PATCH /companies/co-1 answered 422") as caught:
        await world.run("account", ACCOUNT)

    assert caught.value.http_status == 422
    assert world.remote.sent == ["PATCH /companies/co-1"]
    assert world.link("account", ACCOUNT).state == "linked"


# -- match -------------------------------------------------------------------------------------


async def test_a_match_holding_other_values_is_linked_then_updated(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, [{"id": "co-9", "name": "Northwind"}]))
    world.remote.script("updateCompany", Answer(200, {"id": "co-9"}))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies?accountNumber=C-000412",
                                 "PATCH /companies/co-9"]
    assert (outcome.outcome, outcome.external_id, outcome.http_status) == ("updated", "co-9", 200)
    assert outcome.details["matched"] == "co-9"
    assert outcome.details["replayed"] == "GET /companies found co-9"
    assert outcome.details["differed"] == ["/name"]
    assert outcome.details["request"] == "PATCH /companies/co-9"  # the line sent
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.claim) == ("linked", "co-9", None)
    assert link.push_hash == payload_hash(body(world, 1))
    assert link.push_mark == PushMark("m-1", 0, "updated")


async def test_a_match_holding_what_would_be_sent_is_linked_without_a_call(world):
    world.put("account", account())
    sent = await planned_body(world)
    world.remote.script("listCompanies", Answer(200, [{**sent, "id": "co-9", "createdAt": "t"}]))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies?accountNumber=C-000412"]
    assert (outcome.outcome, outcome.external_id) == ("created", "co-9")
    assert outcome.details["replayed"] == "GET /companies found co-9"
    link = world.link("account", ACCOUNT)
    assert (link.external_id, link.push_hash) == ("co-9", payload_hash(sent))
    assert link.push_mark == PushMark("m-1", 0, "created")


async def test_a_match_without_the_update_permission_is_linked_only(world):
    world.put("account", account())
    world.permit(("account", "create"))
    world.remote.script("listCompanies", Answer(200, [{"id": "co-9"}]))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies?accountNumber=C-000412"]
    assert (outcome.outcome, outcome.external_id) == ("created", "co-9")
    assert outcome.details["differed"] == "unknown: the answer shows none of the values sent"
    assert "may not update" in outcome.details["notUpdated"]
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id) == ("linked", "co-9")
    assert link.push_hash is None  # what the third party holds is not known


async def test_several_matches_create_nothing(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, [{"id": "co-8"}, {"id": "co-9"}]))

    with pytest.raises(AmbiguousMatch, match=r"2 records .* \(co-8, co-9\)"):
        await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies?accountNumber=C-000412"]
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.claim) == ("creating", None, None)
    assert link.last_error.startswith("AmbiguousMatch: ")


async def test_a_match_answer_without_a_list_is_a_protocol_error(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, {"items": []}))

    with pytest.raises(RemoteProtocolError, match="has no array at /"):
        await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies?accountNumber=C-000412"]


# -- create answered without an id --------------------------------------------------------------


async def test_a_create_answer_without_an_id_releases_the_claim_with_the_error(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"name": "Northwind"}))

    with pytest.raises(RemoteProtocolError, match="answered 201 without an id at /id"):
        await world.run("account", ACCOUNT)

    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.claim) == ("creating", None, None)
    assert link.last_error.startswith("RemoteProtocolError: POST /companies answered 201")


# -- idempotency keys ---------------------------------------------------------------------------


async def test_the_create_key_is_the_same_for_every_attempt_until_it_succeeds(world):
    world.put("account", account())
    world.remote.script("listCompanies", *[Answer(200, [])] * 3)
    world.remote.script("createCompany",
                        Answer(error=RemoteUnavailable("POST /companies failed: ReadTimeout")),
                        Answer(429, {}, {"Retry-After": "30"}),
                        Answer(201, {"id": "co-1"}))

    with pytest.raises(RemoteUnavailable):
        await world.run("account", ACCOUNT, "m-1")
    with pytest.raises(RateLimited) as limited:
        await world.run("account", ACCOUNT, "m-1")  # the same message, redelivered
    assert limited.value.retry_after == 30
    outcome = await world.run("account", ACCOUNT, "m-2")  # another message for the record

    keys = [header(world, i, "Idempotency-Key") for i in (1, 3, 5)]
    assert world.remote.sent[1::2] == ["POST /companies"] * 3
    assert keys[0] is not None and keys == [keys[0]] * 3
    assert outcome.outcome == "created"


async def test_creating_again_after_a_delete_is_a_new_key(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []), Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}), Answer(201, {"id": "co-2"}))
    world.remote.script("deleteCompany", Answer(204))
    await world.run("account", ACCOUNT, "m-1")
    world.bss.remove(ORG, "account", ACCOUNT)
    await world.run("account", ACCOUNT, "m-2")
    world.put("account", account())  # restored in the BSS

    outcome = await world.run("account", ACCOUNT, "m-3")

    assert world.remote.sent[2] == "DELETE /companies/co-1"
    assert world.remote.sent[4] == "POST /companies"
    assert header(world, 4, "Idempotency-Key") != header(world, 1, "Idempotency-Key")
    assert (outcome.outcome, outcome.external_id) == ("created", "co-2")


# -- claims -------------------------------------------------------------------------------------


async def test_a_record_claimed_by_another_delivery_is_busy(world):
    held = world.links.seed(INSTANCE, "account", ACCOUNT, external_id="co-1",
                            claim="m-other")
    world.put("account", account(name="Northwind Renamed"))

    with pytest.raises(RecordBusy, match="being pushed by another delivery"):
        await world.run("account", ACCOUNT, "m-1")

    assert world.bss.reads == [] and world.remote.requests == []
    assert world.link("account", ACCOUNT) == held  # the other delivery's claim untouched


async def test_a_stale_claim_is_taken_over(world):
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="co-1", claim="m-dead")
    world.clock.now += CLAIM_STALE_SECONDS + 1
    world.put("account", account(name="Northwind Renamed"))
    world.remote.script("updateCompany", Answer(200, {"id": "co-1"}))

    outcome = await world.run("account", ACCOUNT, "m-1")

    assert outcome.outcome == "updated"
    assert world.link("account", ACCOUNT).claim is None


async def test_a_redelivery_resumes_its_own_claim(world):
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="co-1", claim="m-1")
    world.put("account", account(name="Northwind Renamed"))
    world.remote.script("updateCompany", Answer(200, {"id": "co-1"}))

    assert (await world.run("account", ACCOUNT, "m-1")).outcome == "updated"


# -- skipped ------------------------------------------------------------------------------------


async def test_a_record_gone_and_never_linked_is_skipped_and_leaves_no_link(world):
    outcome = await world.run("account", ACCOUNT)

    assert outcome.outcome == "skipped"
    assert outcome.details["reason"] == ("the account is gone from the BSS and was never "
                                         "synchronized to this instance")
    assert world.remote.requests == []
    assert world.link("account", ACCOUNT) is None  # the claim's new row is removed


async def test_a_create_not_permitted_is_skipped_and_leaves_no_link(world):
    world.put("account", account())
    world.permit(("account", "update"), ("account", "delete"))

    outcome = await world.run("account", ACCOUNT)

    assert outcome.outcome == "skipped"
    assert outcome.details["reason"] == ("the instance is not permitted to create account "
                                         "records (push)")
    assert world.remote.requests == []
    assert world.link("account", ACCOUNT) is None


async def test_an_earlier_failed_create_keeps_its_row_when_skipped(world):
    failed = world.links.seed(INSTANCE, "account", ACCOUNT, external_id=None, state="creating")
    world.put("account", account())
    world.permit(("account", "update"))

    assert (await world.run("account", ACCOUNT)).outcome == "skipped"

    link = world.link("account", ACCOUNT)
    assert link.id == failed.id and link.claim is None  # released, not removed


# -- parents ------------------------------------------------------------------------------------


CONTACT = "ct_7c1d2e9a-4b5f-4c1e-9a0d-1f2e3d4c5b6a"


async def test_a_parent_already_linked_is_not_pushed_again(world):
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="co-1")
    world.put("contact", sample("contact"))
    world.remote.script("createPerson", Answer(201, {"id": "pe-1"}))

    outcome = await world.run("contact", CONTACT)

    assert world.remote.sent == ["POST /people"]
    assert body(world, 0)["companyId"] == "co-1"
    assert outcome.outcome == "created" and "parents" not in outcome.details
    assert world.audit.rows == []


async def test_parents_nested_too_deep_are_not_pushed_inline(world):
    world.put("account", account())
    world.put("contact", sample("contact"))

    with pytest.raises(DependencyPending, match="parents nested too deep") as caught:
        await world.run("contact", CONTACT, depth=MAX_PARENT_DEPTH)

    assert (caught.value.entity, caught.value.record_id) == ("account", ACCOUNT)
    assert world.remote.requests == [] and world.audit.rows == []
    assert world.link("account", ACCOUNT) is None
    assert world.link("contact", CONTACT).last_error.startswith("DependencyPending: ")


async def test_a_parent_pushed_by_another_delivery_is_waited_for(world):
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id=None, state="creating",
                     claim="m-account")
    world.put("account", account())
    world.put("contact", sample("contact"))
    world.remote.script("createPerson", Answer(201, {"id": "pe-1"}))

    async def account_delivery_finishes() -> None:
        if len(world.clock.sleeps) == 3:
            await world.links.mark_linked(INSTANCE, "account", bss_id=ACCOUNT,
                                          external_id="co-7", direction="push", push_hash="h")
    world.clock.on_sleep = account_delivery_finishes

    outcome = await world.run("contact", CONTACT)

    assert world.clock.sleeps == [0.1, 0.1, 0.1]
    assert world.remote.sent == ["POST /people"]  # the account was not pushed twice
    assert body(world, 0)["companyId"] == "co-7"
    assert outcome.outcome == "created"
    assert world.audit.rows == []  # nothing happened to the parent on this delivery


async def test_waiting_for_a_parent_gives_up_after_a_while(world):
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id=None, state="creating",
                     claim="m-account")
    world.put("account", account())
    world.put("contact", sample("contact"))

    with pytest.raises(DependencyPending, match="being pushed by another delivery"):
        await world.run("contact", CONTACT)

    assert sum(world.clock.sleeps) == pytest.approx(5.0, abs=0.11)
    assert world.remote.requests == []
    link = world.link("contact", CONTACT)
    assert link.claim is None and link.last_error.startswith("DependencyPending: ")
    assert world.link("account", ACCOUNT).claim == "m-account"


# -- before -------------------------------------------------------------------------------------


async def test_before_captures_the_etag_and_sends_it_as_if_match(world):
    for entity, bss_id, external_id in (("account", ACCOUNT, "co-1"),
                                        ("contact", CONTACT, "pe-1"),
                                        ("case", "case_5521", "tk-1")):
        world.links.seed(INSTANCE, entity, bss_id, external_id=external_id, push_hash="old")
    world.put("case", sample("case"))
    world.remote.script("getTicket", Answer(200, {"id": "tk-1"}, {"ETag": 'W/"v7"'}))
    world.remote.script("PATCH /tickets/{id}", Answer(200, {"id": "tk-1"}))

    outcome = await world.run("case", "case_5521")

    assert world.remote.sent == ["GET /tickets/tk-1", "PATCH /tickets/tk-1"]
    assert header(world, 1, "If-Match") == 'W/"v7"'
    assert body(world, 1)["companyId"] == "co-1" and body(world, 1)["personId"] == "pe-1"
    assert (outcome.outcome, outcome.external_id) == ("updated", "tk-1")


async def test_a_before_call_that_fails_sends_nothing_more(world):
    for entity, bss_id, external_id in (("account", ACCOUNT, "co-1"),
                                        ("contact", CONTACT, "pe-1"),
                                        ("case", "case_5521", "tk-1")):
        world.links.seed(INSTANCE, entity, bss_id, external_id=external_id, push_hash="old")
    world.put("case", sample("case"))
    world.remote.script("getTicket", Answer(500, {"message": "oops"}))

    with pytest.raises(RemoteUnavailable, match="GET /tickets/tk-1 answered 500"):
        await world.run("case", "case_5521")

    assert world.remote.sent == ["GET /tickets/tk-1"]
    assert world.link("case", "case_5521").push_hash == "old"


# -- links a transform asks for ------------------------------------------------------------------


async def test_an_undeclared_reference_not_linked_is_pending(world):
    world.put("account", account(parentAccountId="acc_parent"))
    world.remote.script("listCompanies", Answer(200, []))

    with pytest.raises(DependencyPending):
        await world.run("account", ACCOUNT)

    assert world.remote.requests == []  # the body is planned before the match is sent


async def test_an_undeclared_reference_linked_is_used(world):
    world.links.seed(INSTANCE, "account", "acc_parent", external_id="co-parent")
    world.put("account", account(parentAccountId="acc_parent"))
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))

    await world.run("account", ACCOUNT)

    assert body(world, 1)["parentCompanyId"] == "co-parent"


def test_payload_hash_ignores_key_order_and_spacing():
    assert payload_hash({"a": 1, "b": [1, 2]}) == payload_hash(json.loads('{"b":[1,2],"a":1}'))
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})


async def test_a_link_the_transform_asks_for_beyond_the_references_is_loaded_then_used(world):
    # The schema's references are loaded before the transform runs; a link asked for
    # by a computed id is not, so the planner stops (LinksNotLoaded), the push loads
    # it and plans again.
    bundle = copy.deepcopy(world.target.connector.document)
    mapping = bundle["x-synchronization"]["transforms"]["AccountToCompany"]["map"]
    mapping["parentCompanyId"] = "$externalId('account', 'acc_' & vatNumber)"
    world.target = dataclasses.replace(world.target, connector=document_from_bundle(bundle))
    world.links.seed(INSTANCE, "account", "acc_FR40303265045", external_id="co-group")
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))

    outcome = await world.run("account", ACCOUNT)

    assert body(world, 1)["parentCompanyId"] == "co-group"
    assert outcome.outcome == "created"


# -- a create answered with the record that was already there (docs/architecture.md §5) ---------


REPLAYED = {"Idempotent-Replayed": "true"}


async def test_a_timed_out_create_then_a_change_ends_with_the_new_values_remote(world):
    """The issue's sequence: the create times out but the third party made the record;
    the BSS record changes; the next push re-POSTs with the same key and is answered the
    original record: the pusher follows with an update, stores the hash of what the
    third party then holds, and a later push is unchanged only when it is."""
    world.put("account", account())
    first_body = await planned_body(world)
    world.remote.script("listCompanies", Answer(200, []), Answer(200, []))
    world.remote.script("createCompany",
                        Answer(error=RemoteUnavailable("POST /companies failed: ReadTimeout")),
                        Answer(201, {**first_body, "id": "co-1"}, REPLAYED))
    world.remote.script("updateCompany", Answer(200, {"id": "co-1"}))
    with pytest.raises(RemoteUnavailable):
        await world.run("account", ACCOUNT, "m-1")
    world.put("account", account(name="Northwind Renamed", phone="+33 1 00 00 00 00"))

    outcome = await world.run("account", ACCOUNT, "m-2")

    assert world.remote.sent[2:] == ["GET /companies?accountNumber=C-000412", "POST /companies",
                                     "PATCH /companies/co-1"]
    assert header(world, 3, "Idempotency-Key") == header(world, 1, "Idempotency-Key")
    assert body(world, 4)["name"] == "Northwind Renamed"
    assert (outcome.outcome, outcome.external_id, outcome.http_status) == ("updated", "co-1", 200)
    assert "answered with the record its idempotency key made" in outcome.details["replayed"]
    assert outcome.details["differed"] == ["/name", "/phone"]
    link = world.link("account", ACCOUNT)
    assert link.push_hash == payload_hash(body(world, 4))  # what the third party now holds

    same = await world.run("account", ACCOUNT, "m-3")
    world.put("account", account(name="Northwind Renamed Again"))
    world.remote.script("updateCompany", Answer(200, {"id": "co-1"}))
    changed = await world.run("account", ACCOUNT, "m-4")

    assert same.outcome == "unchanged" and changed.outcome == "updated"
    assert world.remote.sent[5:] == ["PATCH /companies/co-1"]


async def test_a_replayed_create_holding_what_was_sent_is_created_replayed(world):
    world.put("contact", sample("contact"))
    world.links.seed(INSTANCE, "account", sample("contact")["accountId"], external_id="co-1")
    sent = await planned_body(world, "contact", CONTACT)
    world.remote.script("createPerson", Answer(201, {**sent, "id": "pe-1"}, REPLAYED))

    outcome = await world.run("contact", CONTACT)

    assert world.remote.sent == ["POST /people"]
    assert (outcome.outcome, outcome.external_id, outcome.http_status) == ("created", "pe-1", 201)
    assert "idempotency key" in outcome.details["replayed"]
    assert "differed" not in outcome.details
    assert world.link("contact", CONTACT).push_hash == payload_hash(sent)


async def test_a_replayed_create_without_the_update_permission_keeps_no_hash(world):
    world.put("contact", sample("contact"))
    world.links.seed(INSTANCE, "account", sample("contact")["accountId"], external_id="co-1")
    world.permit(("contact", "create"))
    world.remote.script("createPerson", Answer(201, {"id": "pe-1", "lastName": "Older"},
                                               REPLAYED))

    outcome = await world.run("contact", CONTACT)

    assert world.remote.sent == ["POST /people"]
    assert (outcome.outcome, outcome.details["differed"]) == ("created", ["/lastName"])
    assert world.link("contact", CONTACT).push_hash is None


async def test_a_create_answered_409_with_the_existing_id_is_linked_and_updated(world):
    world.put("contact", sample("contact"))
    world.links.seed(INSTANCE, "account", sample("contact")["accountId"], external_id="co-1")
    world.remote.script("createPerson", Answer(409, {"id": "pe-7", "message": "exists"}))
    world.remote.script("updatePerson", Answer(200, {"id": "pe-7"}))

    outcome = await world.run("contact", CONTACT)

    assert world.remote.sent == ["POST /people", "PATCH /people/pe-7"]
    assert (outcome.outcome, outcome.external_id) == ("updated", "pe-7")
    assert outcome.details["replayed"] == "POST /people answered 409: pe-7 exists"
    assert outcome.details["differed"] == "unknown: the answer shows none of the values sent"
    assert world.link("contact", CONTACT).push_hash == payload_hash(body(world, 1))


async def test_a_create_answered_409_without_an_id_is_a_conflict_retried_later(world):
    world.put("contact", sample("contact"))
    world.links.seed(INSTANCE, "account", sample("contact")["accountId"], external_id="co-1")
    world.remote.script("createPerson", Answer(409, {"message": "try again"}))

    with pytest.raises(RemoteConflict, match=r"POST /people answered 409: .*try again"):
        await world.run("contact", CONTACT)

    link = world.link("contact", CONTACT)
    assert (link.state, link.claim) == ("creating", None)
    assert link.last_error.startswith("RemoteConflict: ")


# -- a push whose audit row was lost with its process -------------------------------------------


async def test_a_redelivery_finding_its_own_mark_reports_what_it_did_without_pushing(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))
    first = await world.run("account", ACCOUNT, "m-1")
    # the process died here: the link is stored, the audit row is not; the broker
    # redelivers the same message (same id, same attempt), which claims the record again
    await world.links.claim_for_create(INSTANCE, "account", ACCOUNT, "m-1", 300)

    again = await world.run("account", ACCOUNT, "m-1")

    assert first.outcome == "created"
    assert (again.outcome, again.external_id, again.http_status) == ("created", "co-1", None)
    assert "ended before the audit row was written" in again.details["recovered"]
    assert world.remote.sent == ["GET /companies?accountNumber=C-000412", "POST /companies"]
    assert world.bss.reads == [(ORG, "account", ACCOUNT)]  # not read again
    assert world.link("account", ACCOUNT).claim is None


async def test_another_message_or_attempt_pushes_as_usual(world):
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))
    await world.run("account", ACCOUNT, "m-1")

    retried = await world.push("account", ACCOUNT, "m-1").run()  # attempt 0 again: its own
    other = world.push("account", ACCOUNT, "m-1")
    other.attempt = 1
    next_attempt = await other.run()
    another = await world.run("account", ACCOUNT, "m-2")

    assert retried.outcome == "created"
    assert next_attempt.outcome == another.outcome == "unchanged"
    assert world.link("account", ACCOUNT).push_mark == PushMark("m-1", 0, "created")


async def test_a_delete_finding_its_own_mark_is_reported_deleted(world):
    linked(world)
    world.remote.script("deleteCompany", Answer(204))
    await world.run("account", ACCOUNT, "m-1")  # gone from the BSS: deleted remotely
    await world.links.claim_for_create(INSTANCE, "account", ACCOUNT, "m-1", 300)

    again = await world.run("account", ACCOUNT, "m-1")

    assert (again.outcome, again.external_id) == ("deleted", "co-1")
    assert world.remote.sent == ["DELETE /companies/co-1"]


# -- a pull's own write, seen as a BSS event before the puller linked it -------------------


def pulls_creates(world: World) -> None:
    """The instance also pulls account creates (it pushes everything already)."""
    instance = world.target.instance
    world.target = dataclasses.replace(world.target, instance=dataclasses.replace(
        instance, permissions=instance.permissions | {("account", "pull", "create")}))
    world.handler.registry = type(world.handler.registry)(world.target)


async def test_a_created_record_waits_while_a_pull_is_creating_one(world):
    pulls_creates(world)
    world.put("account", account())
    await world.links.claim_external_for_create(INSTANCE, "account", "co-9", "pull-1",
                                                CLAIM_STALE_SECONDS)

    with pytest.raises(RecordBusy, match="a pull is creating in the BSS"):
        await world.handle("account", ACCOUNT, action="create")

    assert world.remote.sent == []
    assert world.link("account", ACCOUNT) is None  # nothing in the puller's way

    await world.links.mark_linked(INSTANCE, "account", bss_id=ACCOUNT, external_id="co-9",
                                  direction="pull", pull_hash="p",
                                  push_hash=payload_hash(await planned_body(world)))
    result = await world.handle("account", ACCOUNT, action="create")  # the retry
    assert (result.outcome.value, world.remote.sent) == ("unchanged", [])


@pytest.mark.parametrize("case", ["update event", "instance pulls no creates", "no pull"])
async def test_only_a_create_event_of_an_entity_pulled_in_waits_for_pulls(world, case):
    if case != "instance pulls no creates":
        pulls_creates(world)
    world.put("account", account())
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, {"id": "co-1"}))
    if case != "no pull":
        await world.links.claim_external_for_create(INSTANCE, "account", "co-9", "pull-1",
                                                    CLAIM_STALE_SECONDS)

    result = await world.handle("account", ACCOUNT,
                                action="update" if case == "update event" else "create")

    assert result.outcome.value == "created"
    assert world.remote.sent[-1] == "POST /companies"
