"""``PushPlanner``: the push's choices as values, with nothing sent and nothing stored."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import httpx
import pytest

from services.pusher.plan import MATCH, UNCHANGED, Existing, PushPlanner, differences, payload_hash
from shared.connector.payloads import PayloadChecker
from shared.errors import AmbiguousMatch, RemoteConflict, RemoteProtocolError
from shared.http import Response
from shared.storage.links import Link
from shared.transform import UNDEFINED, PreloadedLinks, TransformContext
from tests.unit.pusher.conftest import acme, sample
from tests.unit.pusher.fakes import instance

AT = datetime(2025, 1, 1, tzinfo=UTC)
ALL = [(entity, "push", action) for entity in ("account", "contact", "case")
       for action in ("create", "update", "delete")]


def planner(entity: str = "account", message_id: str = "m-1", permissions=ALL,
            idempotency: dict | None = None) -> PushPlanner:
    connector = acme()
    if idempotency is not None:
        settings = {**connector.settings, "idempotency": {**connector.settings["idempotency"],
                                                          **idempotency}}
        connector = dataclasses.replace(connector, settings=settings)
    return PushPlanner(obj=connector.objects_for(entity)[0],
                       instance=instance(permissions=permissions), connector=connector,
                       checker=PayloadChecker(connector), base_url="http://acme.test:3000",
                       record_id="acc-1", message_id=message_id)


def link(**changes) -> Link:
    fields = dict(id=7, instance_id="acme-1", entity="account", bss_id="acc-1",
                  external_id=None, state="creating", claim="m-1", claimed_at=AT,
                  push_hash=None, pull_hash=None, last_pushed_at=None, last_pulled_at=None,
                  last_error=None, created_at=AT, updated_at=AT)
    return Link(**{**fields, **changes})


def context() -> TransformContext:
    connector = acme()
    return TransformContext(lookups=connector.lookups, links=PreloadedLinks(),
                            variables=connector.variables())


def account() -> dict:
    return sample("account", parentAccountId=None)


def answer(body, headers=None, status=200) -> Response:
    return Response(status, httpx.Headers(headers or {}), body, 0.0, "http://acme.test:3000/x",
                    b"" if body is None else json.dumps(body).encode(), "POST /companies")


def test_a_create_is_planned_with_its_match_body_hash_and_key():
    plan = planner().create(account(), link(), context())

    assert plan.action == "create" and plan.call.operation.key == "POST /companies"
    assert plan.body["accountNumber"] == "C-000412"
    assert plan.digest == payload_hash(plan.body)
    assert plan.match is not None and plan.match.action == MATCH
    assert plan.match.body is UNDEFINED  # the match sends parameters only


def test_the_create_key_depends_on_the_link_not_on_the_message():
    row = link()
    keys = {planner(message_id=m).create(account(), row, context()).idempotency_key
            for m in ("m-1", "m-2")}
    after_delete = planner().create(account(), link(last_pushed_at=AT, state="deleted"),
                                    context()).idempotency_key

    assert len(keys) == 1 and after_delete not in keys


def test_an_update_with_the_pushed_hash_is_unchanged():
    first = planner().update(account(), link(state="linked", external_id="co-1"), context())
    again = planner().update(account(), link(state="linked", external_id="co-1",
                                             push_hash=first.digest), context())

    assert first.action == "update" and first.external_id == "co-1"
    assert again.action == UNCHANGED


def test_the_request_carries_the_idempotency_header_for_creates_only():
    p = planner()
    create = p.create(account(), link(), context())
    update = p.update(account(), link(state="linked", external_id="co-1"), context())
    data = {"record": account(), "externalId": None}

    create_request = p.request(create, data, context())
    update_request = p.request(update, {**data, "externalId": "co-1"}, context())

    assert create_request.headers["Idempotency-Key"] == create.idempotency_key
    assert "Idempotency-Key" not in update_request.headers
    assert update_request.url == "http://acme.test:3000/companies/co-1"


def test_decisions_follow_record_link_and_permissions():
    assert planner().decide(account(), link()).action == "create"
    assert planner().decide(None, link(state="linked", external_id="co-1")).action == "delete"
    assert planner().decide(account(), link(state="deleted", external_id="co-1")).action == (
        "create")
    refused = planner(permissions=[("account", "push", "update")]).decide(account(), None)
    assert refused.skipped and "not permitted to create" in refused.reason


def test_answers_are_read_purely():
    p = planner()
    match = p.obj.push["match"]

    assert p.matched(match, answer([])) is None
    found = p.matched(match, answer([{"id": 9, "name": "Northwind"}]))
    assert (found.external_id, found.held) == ("9", {"id": 9, "name": "Northwind"})
    with pytest.raises(AmbiguousMatch):
        p.matched(match, answer([{"id": 8}, {"id": 9}]))
    create = p.obj.push["create"]
    assert p.created_id(create, answer({"id": "co-1"})) == "co-1"
    with pytest.raises(RemoteProtocolError, match="without an id at /id"):
        p.created_id(create, answer({"id": ""}))


def test_a_before_call_captures_headers_and_body_values():
    case = planner("case")
    before = dataclasses.replace(case.obj.push["update"].before,
                                 options={"capture": {"etag": "header:ETag",
                                                      "version": "body:/version",
                                                      "missing": "header:X-None"}})

    captured = case.captured(before, answer({"version": 3}, {"ETag": '"v3"'}))

    assert captured == {"etag": '"v3"', "version": 3, "missing": None}


# -- a create that found the record already there ----------------------------------------


def test_a_forced_update_is_sent_even_with_the_pushed_hash():
    first = planner().update(account(), link(state="linked", external_id="co-1"), context())
    pushed = link(state="linked", external_id="co-1", push_hash=first.digest)

    assert planner().update(account(), pushed, context()).action == UNCHANGED
    assert planner().update(account(), pushed, context(), force=True).action == "update"


def test_a_create_answered_with_the_replay_header_found_an_existing_record():
    p = planner()
    create = p.create(account(), link(), context())
    held = {**create.body, "id": 5, "name": "Northwind (as first sent)"}

    fresh = p.existing(create, answer({**create.body, "id": 6}, status=201))
    replayed = p.existing(create, answer(held, {"Idempotent-Replayed": "true"}, 201))

    assert fresh is None
    assert (replayed.external_id, replayed.held) == ("5", held)
    assert "POST /companies answered with the record its idempotency key made" in replayed.how
    assert p.existing(create, answer(held, {"Idempotent-Replayed": "false"}, 201)) is None


def test_the_replay_header_is_the_connectors_when_it_names_one():
    p = planner(idempotency={"replayedHeader": "X-Replayed"})
    create = p.create(account(), link(), context())

    assert p.existing(create, answer({"id": 5}, {"Idempotent-Replayed": "true"}, 201)) is None
    assert p.existing(create, answer({"id": 5}, {"X-Replayed": "1"}, 201)).external_id == "5"


def test_a_409_naming_the_record_found_it_and_one_naming_none_is_a_conflict():
    p = planner()
    create = p.create(account(), link(), context())

    conflict = p.existing(create, answer({"id": 5, "message": "exists"}, status=409))
    assert (conflict.external_id, conflict.how) == ("5", "POST /companies answered 409: 5 exists")
    with pytest.raises(RemoteConflict, match="POST /companies answered 409") as caught:
        p.existing(create, answer({"message": "exists"}, status=409))
    assert caught.value.http_status == 409


def test_with_compare_answer_other_values_in_the_answer_are_a_replay():
    p = planner(idempotency={"compareAnswer": True})
    create = p.create(account(), link(), context())

    assert p.existing(create, answer({**create.body, "id": 6}, status=201)) is None
    assert p.existing(create, answer({"id": 6}, status=201)) is None  # shows nothing: new
    older = p.existing(create, answer({**create.body, "id": 5, "phone": "+1"}, status=201))
    assert isinstance(older, Existing) and older.external_id == "5"
    assert planner().existing(create, answer({**create.body, "id": 5, "phone": "+1"},
                                             status=201)) is None  # off by default


def test_differences_compare_what_the_answer_shows():
    sent = {"name": "N", "employees": 12, "vip": True, "tags": ["a"],
            "billingAddress": {"city": "Lyon", "street2": None}, "parentCompanyId": None}

    assert differences(sent, {**sent, "id": 5, "createdAt": "t"}) == []
    assert differences(sent, {"id": 5}) is None  # shows none of it: unknown
    assert differences(sent, None) is None
    assert differences(sent, {"name": "N", "employees": 12.0}) == []  # the rest not shown
    assert differences(sent, {"vip": 1, "tags": ["a", "b"],
                              "billingAddress": {"city": "Paris"}}) == [
        "/vip", "/tags", "/billingAddress/city"]
    assert differences(sent, {"billingAddress": None, "parentCompanyId": 7}) == [
        "/billingAddress", "/parentCompanyId"]
    assert differences({"items": [{"x": 1}]}, {"items": [{"x": 1, "id": 9}]}) == []
    assert differences({"a/b": 1}, {"a/b": 2}) == ["/a~1b"]


# -- a create whose answer was lost (docs/architecture.md §5 step 4) ----------------------------


def sent_link(sent: dict, **changes) -> Link:
    """A link whose create was sent (``sent``: what ``create_sent`` made of it) and never
    answered."""
    return link(create_sent_at=AT, create_sent=json.dumps(sent), **changes)


def contact() -> dict:
    return sample("contact")


def contact_context() -> TransformContext:
    ctx = context()
    ctx.links.external[("account", contact()["accountId"])] = "co-1"
    return ctx


def test_what_a_create_leaves_before_it_goes_out_is_its_key_record_and_body():
    plan = planner().create(account(), link(), context())

    sent = planner().create_sent(plan, account())

    assert sent == {"key": plan.idempotency_key, "record": account(), "body": plan.body}
    assert json.loads(json.dumps(sent)) == sent  # stored as JSON text


def test_a_gone_record_whose_create_is_pending_is_a_delete_not_a_skip():
    pending = sent_link({"key": "k", "record": account()})
    deleted_then_pending = sent_link({"key": "k", "record": account()}, state="deleted",
                                     external_id="co-old")

    assert planner().decide(None, pending).action == "delete"
    assert planner().decide(None, deleted_then_pending).action == "delete"
    assert planner().decide(None, link()).skipped  # nothing was ever sent
    assert planner().decide(account(), pending).action == "create"  # still there: create
    refused = planner(permissions=[("account", "push", "create")]).decide(None, pending)
    assert refused.skipped and "not permitted to delete" in refused.reason
    assert pending.create_pending and not sent_link({}, state="linked",
                                                    external_id="co-1").create_pending


def test_a_lost_create_is_looked_for_by_its_match_with_the_record_it_sent():
    sent = {"key": "k-1", "record": {**account(), "code": "C-OLD"}, "body": {"name": "x"}}

    lookup = planner().find_lost_create(sent, context())

    assert lookup is not None and lookup.action == MATCH
    request = planner().request(lookup, {"record": sent["record"], "externalId": None},
                                context())
    assert request.method == "GET" and request.url.endswith("/companies?accountNumber=C-OLD")


def test_without_a_match_a_lost_create_is_replayed_with_its_key_and_body():
    p = planner("contact")
    plan = p.create(contact(), link(entity="contact"), contact_context())
    sent = p.create_sent(plan, contact())

    lookup = p.find_lost_create(sent, contact_context())

    assert lookup is not None and lookup.action == "create"
    assert (lookup.body, lookup.idempotency_key) == (plan.body, plan.idempotency_key)
    request = p.request(lookup, {"record": contact(), "externalId": None}, contact_context())
    assert request.headers["Idempotency-Key"] == plan.idempotency_key
    assert request.body == plan.body


def test_a_lost_create_nothing_can_find_has_no_lookup():
    sent = {"key": "k-1", "record": contact(), "body": {"lastName": "x"}}
    no_keys = planner("contact", idempotency={"header": None})
    may_not_create = planner("contact", permissions=[("contact", "push", "delete")])

    assert no_keys.keys_creates() is False
    assert no_keys.find_lost_create(sent, context()) is None
    assert may_not_create.find_lost_create(sent, context()) is None  # a replay may create
    assert planner("contact").find_lost_create({"record": contact()}, context()) is None
    assert planner().find_lost_create({"key": "k"}, context()) is None  # no record to match
