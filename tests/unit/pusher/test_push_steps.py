"""The pusher sending actions made of several requests (``steps``,
tests/data/vendor/customers.yaml), against the in-memory fakes: the order, what each
step sees of the earlier ones, the step named in a failure, and the create that stops
after its id step resuming on the retry instead of creating a second customer.
(End to end, through RabbitMQ, PostgreSQL and a real HTTP server:
tests/e2e/test_push_steps.py.)"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from services.pusher.handler import PushHandler
from services.pusher.plan import payload_hash
from shared.connector import ConnectorDocument, load_connector
from shared.connector.payloads import PayloadChecker
from shared.errors import RemoteRejected, RemoteUnavailable, SchemaViolation
from tests.unit.pusher.conftest import INSTANCE, ORG, World, sample
from tests.unit.pusher.fakes import (
    Answer,
    FakeAudit,
    FakeBss,
    FakeClock,
    FakeInstances,
    FakeLinkStore,
    FakeTarget,
    FakeThirdParty,
    instance,
)

ROOT = Path(__file__).resolve().parents[3]
ACCOUNT = "acc_01HV3K8Q2Z7M4N5P6R7S8T9V0W"
CUSTOMER = {"id": "cu-1", "name": "Northwind Logistics"}
ADDRESS = {"id": "ad-1", "line1": "12 rue de la Paix", "city": "Paris", "country": "FR"}


@functools.cache
def customers() -> ConnectorDocument:
    return load_connector(ROOT / "tests" / "data" / "vendor" / "customers.yaml")


def world_of(connector: ConnectorDocument, base_url: str, actions: tuple[str, ...]) -> World:
    """The pusher in memory with ``connector``, its third party at ``base_url``, the
    instance pushing ``actions`` of accounts, and the sample account in the BSS."""
    clock = FakeClock()
    links = FakeLinkStore(clock)
    remote = FakeThirdParty(base_url)
    target = FakeTarget(
        instance=instance(INSTANCE, org_id=ORG, permissions=[
            ("account", "push", action) for action in actions]),
        connector=connector, client=remote, checker=PayloadChecker(connector))
    audit, bss = FakeAudit(), FakeBss()
    handler = PushHandler(FakeInstances(target), links, bss, audit, clock=clock)
    world = World(links, bss, remote, audit, clock, target, handler)
    world.put("account", sample("account", parentAccountId=None))
    return world


@pytest.fixture
def world() -> World:
    return world_of(customers(), "https://billing.example/api", ("create", "update", "delete"))


def bodies(world: World) -> list[object]:
    return [plan.body for plan in world.remote.requests]


async def test_a_create_sends_its_steps_in_order_the_later_one_using_the_id(world) -> None:
    world.remote.script("createCustomer", Answer(201, CUSTOMER))
    world.remote.script("createAddress", Answer(201, ADDRESS))

    outcome = await world.run("account", ACCOUNT)

    assert (outcome.outcome, outcome.external_id) == ("created", "cu-1")
    assert world.remote.sent == ["POST /api/customers", "POST /api/customers/cu-1/addresses"]
    assert bodies(world)[1] == {"line1": "12 rue de la Paix", "line2": "Bâtiment B, 3e étage",
                                "city": "Paris", "postalCode": "75002", "country": "FR"}
    assert outcome.details["steps"] == ["customer: POST /api/customers",
                                        "address: POST /api/customers/cu-1/addresses"]
    link = world.link("account", ACCOUNT)
    assert (link.state, link.external_id, link.steps_done) == ("linked", "cu-1", None)
    assert link.push_hash == payload_hash({"customer": bodies(world)[0],
                                           "address": bodies(world)[1]})


async def test_a_step_whose_when_is_false_is_not_sent(world) -> None:
    world.put("account", sample("account", parentAccountId=None, addresses=[]))
    world.remote.script("createCustomer", Answer(201, CUSTOMER))

    outcome = await world.run("account", ACCOUNT)

    assert outcome.outcome == "created"
    assert world.remote.sent == ["POST /api/customers"]


async def test_a_failing_later_step_leaves_the_record_linked_and_the_retry_resumes(
        world) -> None:
    world.remote.script("createCustomer", Answer(201, CUSTOMER))
    world.remote.script("createAddress", Answer(503, {"message": "try later"}),
                        Answer(201, ADDRESS))

    with pytest.raises(RemoteUnavailable) as caught:
        await world.run("account", ACCOUNT, "m-1")

    assert str(caught.value).startswith("step 'address' of the create: POST "
                                        "/api/customers/cu-1/addresses answered 503")
    assert caught.value.details["step"] == "address"
    stopped = world.link("account", ACCOUNT)
    assert (stopped.state, stopped.external_id, stopped.claim) == ("linked", "cu-1", None)
    assert stopped.steps_done == {"customer": {}} and stopped.push_hash is None

    outcome = await world.run("account", ACCOUNT, "m-1")  # the retry

    assert (outcome.outcome, outcome.external_id) == ("created", "cu-1")
    assert world.remote.sent == ["POST /api/customers", "POST /api/customers/cu-1/addresses",
                                 "POST /api/customers/cu-1/addresses"]
    assert "an earlier attempt stopped after the step(s) customer" in outcome.details["resumed"]
    done = world.link("account", ACCOUNT)
    assert (done.steps_done, done.push_hash is not None) == (None, True)
    assert world.remote.unanswered() == {}


async def test_a_record_deleted_after_its_create_stopped_is_deleted_remotely(world) -> None:
    world.remote.script("createCustomer", Answer(201, CUSTOMER))
    world.remote.script("createAddress", Answer(422, {"message": "bad postal code"}))
    with pytest.raises(RemoteRejected, match=r"^step 'address' of the create: "):
        await world.run("account", ACCOUNT)
    world.bss.remove(ORG, "account", ACCOUNT)
    world.remote.script("deleteCustomer", Answer(204, None))

    outcome = await world.run("account", ACCOUNT, "m-2")

    assert (outcome.outcome, outcome.external_id) == ("deleted", "cu-1")
    assert world.remote.sent[-1] == "DELETE /api/customers/cu-1"
    assert world.link("account", ACCOUNT).state == "deleted"


async def test_a_body_a_step_refuses_fails_the_create_before_anything_is_sent(world) -> None:
    world.put("account", sample("account", parentAccountId=None, name=""))

    with pytest.raises(SchemaViolation, match=r"^step 'customer': the account would break "
                                               r"the request schema of POST /customers"):
        await world.run("account", ACCOUNT)

    assert world.remote.sent == []


async def test_an_update_reads_then_writes_with_what_it_read(world) -> None:
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="cu-1", push_hash="old")
    world.remote.script("readCustomer", Answer(200, {**CUSTOMER, "billingAddressId": "ad-1"},
                                               headers={"ETag": '"v7"'}))
    world.remote.script("replaceCustomer", Answer(200, CUSTOMER))
    world.remote.script("replaceAddress", Answer(200, ADDRESS))

    outcome = await world.run("account", ACCOUNT)

    assert (outcome.outcome, outcome.external_id) == ("updated", "cu-1")
    assert world.remote.sent == ["GET /api/customers/cu-1", "PUT /api/customers/cu-1",
                                 "PUT /api/customers/cu-1/addresses/ad-1"]
    assert world.remote.requests[1].headers["If-Match"] == '"v7"'

    again = await world.run("account", ACCOUNT, "m-2")  # nothing changed: nothing sent
    assert again.outcome == "unchanged" and len(world.remote.sent) == 3


async def test_an_update_without_an_address_remotely_creates_it(world) -> None:
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="cu-1", push_hash="old")
    world.remote.script("readCustomer", Answer(200, CUSTOMER, headers={"ETag": '"v1"'}))
    world.remote.script("replaceCustomer", Answer(200, CUSTOMER))
    world.remote.script("createAddress", Answer(201, ADDRESS))

    await world.run("account", ACCOUNT)

    assert world.remote.sent[1:] == ["PUT /api/customers/cu-1",
                                     "POST /api/customers/cu-1/addresses"]


async def test_a_404_of_the_first_step_recreates_and_of_a_later_step_fails(world) -> None:
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="cu-1", push_hash="old")
    world.remote.script("readCustomer", Answer(200, {**CUSTOMER, "billingAddressId": "ad-9"},
                                               headers={"ETag": '"v1"'}))
    world.remote.script("replaceCustomer", Answer(200, CUSTOMER))
    world.remote.script("replaceAddress", Answer(404, {"message": "no address ad-9"}))

    with pytest.raises(RemoteRejected, match=r"^step 'address' of the update: "):
        await world.run("account", ACCOUNT)
    assert world.link("account", ACCOUNT).external_id == "cu-1"

    world.remote.script("readCustomer", Answer(404, {"message": "no customer cu-1"}))
    world.remote.script("createCustomer", Answer(201, {**CUSTOMER, "id": "cu-2"}))
    world.remote.script("createAddress", Answer(201, ADDRESS))
    outcome = await world.run("account", ACCOUNT, "m-2")
    assert (outcome.outcome, outcome.external_id) == ("created", "cu-2")


async def test_a_delete_step_answered_404_counts_as_done(world) -> None:
    world.links.seed(INSTANCE, "account", ACCOUNT, external_id="cu-1", push_hash="old")
    world.bss.remove(ORG, "account", ACCOUNT)
    world.remote.script("deleteCustomer", Answer(404, {"message": "gone"}))

    outcome = await world.run("account", ACCOUNT)

    assert (outcome.outcome, outcome.details["alreadyGone"]) == ("deleted", ["customer"])


async def test_steps_send_their_own_idempotency_keys_the_id_step_the_creates(
        world, tmp_path) -> None:
    document = json.loads(json.dumps(customers().document))
    document["x-synchronization"]["idempotency"] = {"header": "Idempotency-Key"}
    path = tmp_path / "customers.json"
    path.write_text(json.dumps(document))
    keyed = load_connector(path)
    world.target = FakeTarget(instance=world.target.instance, connector=keyed,
                              client=world.remote, checker=PayloadChecker(keyed))
    world.remote.script("createCustomer", Answer(201, CUSTOMER))
    world.remote.script("createAddress", Answer(500, {}), Answer(201, ADDRESS))

    with pytest.raises(RemoteUnavailable):
        await world.run("account", ACCOUNT)
    await world.run("account", ACCOUNT, "m-2")

    keys = [plan.headers["Idempotency-Key"] for plan in world.remote.requests]
    assert keys[1] == keys[2] != keys[0]  # the address retried with the same key
    assert len(set(keys)) == 2


async def test_an_id_step_finding_the_customer_there_goes_on_with_the_later_steps(
        world) -> None:
    world.remote.script("createCustomer", Answer(409, {"id": "cu-7", "message": "exists"}))
    world.remote.script("createAddress", Answer(201, ADDRESS))

    outcome = await world.run("account", ACCOUNT)

    assert (outcome.outcome, outcome.external_id) == ("created", "cu-7")
    assert world.remote.sent[1] == "POST /api/customers/cu-7/addresses"
    assert outcome.details["replayed"] == "POST /api/customers answered 409: cu-7 exists"


# -- a step's body reading an earlier step's answer ($steps) -----------------------------


@functools.cache
def addresses() -> ConnectorDocument:
    return load_connector(ROOT / "tests" / "data" / "vendor" / "addresses.yaml")


@pytest.fixture
def invoicing() -> World:
    """tests/data/vendor/addresses.yaml: the address names its customer in its body."""
    return world_of(addresses(), "https://invoicing.example/v2", ("create",))


async def test_a_later_body_carries_what_the_earlier_step_answered(invoicing) -> None:
    invoicing.remote.script("createCustomer", Answer(201, {"id": "cu-7", "name": "N"}))
    invoicing.remote.script("createAddress", Answer(201, {"id": "ad-1"}))

    outcome = await invoicing.run("account", ACCOUNT)

    assert invoicing.remote.sent == ["POST /v2/customers", "POST /v2/addresses"]
    assert bodies(invoicing)[1] == {"customerId": "cu-7", "kind": "billing",
                                    "line1": "12 rue de la Paix", "city": "Paris",
                                    "country": "FR"}
    # the hash follows the record, not the remote id: made without the earlier answers
    link = invoicing.link("account", ACCOUNT)
    assert link.push_hash == payload_hash({
        "customer": bodies(invoicing)[0],
        "address": {k: v for k, v in bodies(invoicing)[1].items() if k != "customerId"}})
    assert outcome.outcome == "created"


async def test_a_later_body_an_answer_makes_invalid_is_refused_at_its_step(invoicing) -> None:
    invoicing.remote.script("createCustomer", Answer(201, {"id": 17, "name": "N"}))

    with pytest.raises(SchemaViolation, match="step 'address'") as raised:
        await invoicing.run("account", ACCOUNT)

    # the number the customer's id came as breaks the address's customerId (a string):
    # refused as the step goes out, nothing sent; the customer is linked for the retry
    assert "/customerId" in str(raised.value) or "customerId" in str(raised.value)
    assert invoicing.remote.sent == ["POST /v2/customers"]
    link = invoicing.link("account", ACCOUNT)
    assert (link.external_id, list(link.steps_done or {})) == ("17", ["customer"])
