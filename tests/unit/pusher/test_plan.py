"""``PushPlanner``: the push's choices as values, with nothing sent and nothing stored."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import httpx
import pytest

from services.pusher.plan import MATCH, UNCHANGED, PushPlanner, payload_hash
from shared.connector.payloads import PayloadChecker
from shared.errors import AmbiguousMatch, RemoteProtocolError
from shared.http import Response
from shared.storage.links import Link
from shared.transform import UNDEFINED, PreloadedLinks, TransformContext
from tests.unit.pusher.conftest import acme, sample
from tests.unit.pusher.fakes import instance

AT = datetime(2025, 1, 1, tzinfo=UTC)
ALL = [(entity, "push", action) for entity in ("account", "contact", "case")
       for action in ("create", "update", "delete")]


def planner(entity: str = "account", message_id: str = "m-1", permissions=ALL) -> PushPlanner:
    connector = acme()
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


def answer(body, headers=None) -> Response:
    return Response(200, httpx.Headers(headers or {}), body, 0.0, "http://acme.test:3000/x", b"")


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

    assert p.matched_id(match, answer([])) is None
    assert p.matched_id(match, answer([{"id": 9}])) == "9"
    with pytest.raises(AmbiguousMatch):
        p.matched_id(match, answer([{"id": 8}, {"id": 9}]))
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
