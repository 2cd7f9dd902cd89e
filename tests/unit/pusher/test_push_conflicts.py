"""The pusher's side of the loop guard and of conflicts, through ``RecordPush`` with fakes.

* A push stores, with its push hash, the *pull* hash of what the third party holds
  afterwards, so the listing that shows the record next is ``unchanged`` for the puller.
* Before an update, when the policy could let the third party win (external-wins,
  newest-wins), the pusher reads the remote record (``pull.read``); changed since the
  last sync too → the policy decides: the third party wins → the push is skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from services.pusher.plan import payload_hash
from shared.transform import PreloadedLinks
from tests.unit.pusher.conftest import INSTANCE, World
from tests.unit.pusher.fakes import Answer
from tests.unit.pusher.test_push import ACCOUNT, account, body, linked

#: The sample account's updatedAt (2025-03-02T16:45:03.512+01:00), in UTC.
BSS_TIME = "2025-03-02T15:45:03.512Z"


def remote(**changes: Any) -> dict[str, Any]:
    """The Acme company as the third party holds it."""
    return {"id": "co-1", "name": "Northwind Logistics", "accountNumber": "C-000412",
            "email": "accounts@northwind-logistics.fr", "updatedAt": "2025-03-01T08:00:00.000Z",
            **changes}


def pull_hash_of(world: World, record: dict[str, Any]) -> str:
    """The hash the puller keeps for ``record`` (its canonical entity's)."""
    obj = world.target.connector.objects_for("account")[0]
    assert obj.pull_body is not None
    return payload_hash(obj.pull_body.apply(record, world.target.transform_context(
        PreloadedLinks())))


def with_policy(world: World, conflict: Any, *, pull_update: bool = True) -> None:
    """The instance overrides the conflict policy; it may push everything and pull updates."""
    perms = {("account", "push", a) for a in ("create", "update", "delete")}
    if pull_update:
        perms.add(("account", "pull", "update"))
    world.target = dataclasses.replace(world.target, instance=dataclasses.replace(
        world.target.instance, permissions=frozenset(perms), settings={"conflict": conflict}))
    world.handler.registry.targets[INSTANCE] = world.target


def synced(world: World, last_pulled: dict[str, Any]) -> None:
    """The account was last synced with the remote record ``last_pulled``; the BSS
    changed it since (the push hash is another's)."""
    linked(world)
    world.links._put(dataclasses.replace(world.link("account", ACCOUNT),
                                         pull_hash=pull_hash_of(world, last_pulled)))
    world.put("account", account(name="Renamed in the BSS"))


# -- the pull hash stored with a push ---------------------------------------------------------

async def test_a_create_stores_the_pull_hash_of_the_record_it_answers(world: World):
    with_policy(world, "bss-wins")  # and pull updates
    world.put("account", account())
    answered = remote(name="NORTHWIND LOGISTICS", updatedAt="2025-06-01T10:00:00.000Z")
    world.remote.script("listCompanies", Answer(200, []))
    world.remote.script("createCompany", Answer(201, answered))

    await world.run("account", ACCOUNT)

    sent = body(world, 1)
    stored = world.link("account", ACCOUNT).pull_hash
    assert stored == pull_hash_of(world, {**sent, **answered})  # the answer's word first
    assert stored != pull_hash_of(world, sent)


async def test_an_update_answered_with_part_of_the_record_fills_in_what_it_sent(world: World):
    with_policy(world, "bss-wins")
    linked(world)
    world.put("account", account(name="Renamed"))
    world.remote.script("updateCompany", Answer(200, {"id": "co-1"}))

    await world.run("account", ACCOUNT)

    sent = body(world, 0)
    assert world.link("account", ACCOUNT).pull_hash == pull_hash_of(world,
                                                                    {**sent, "id": "co-1"})


async def test_an_answer_that_is_not_the_record_leaves_the_pull_hash_to_what_was_sent(
        world: World):
    with_policy(world, "bss-wins")
    linked(world)
    world.put("account", account(name="Renamed"))
    world.remote.script("updateCompany", Answer(200, {"id": "someone-else", "name": "X"}))

    await world.run("account", ACCOUNT)

    assert world.link("account", ACCOUNT).pull_hash == pull_hash_of(world, body(world, 0))


async def test_an_instance_that_does_not_pull_the_entity_keeps_no_pull_hash(world: World):
    linked(world)  # the world's instance pushes only
    world.put("account", account(name="Renamed"))
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed")))

    await world.run("account", ACCOUNT)

    assert world.link("account", ACCOUNT).pull_hash is None  # no transform spent on it


# -- conflicts --------------------------------------------------------------------------------

async def test_bss_wins_pushes_without_reading_the_remote_record(world: World):
    with_policy(world, "bss-wins")
    synced(world, remote())
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed in the BSS")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["PATCH /companies/co-1"]
    assert outcome.outcome == "updated" and "conflict" not in outcome.details


async def test_external_wins_skips_the_push_of_a_record_changed_remotely_too(world: World):
    with_policy(world, "external-wins")
    synced(world, remote())
    world.remote.script("getCompany", Answer(200, remote(name="Renamed in the CRM")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies/co-1"]  # read, not written
    assert outcome.outcome == "skipped"
    assert outcome.details["conflict"] == {"policy": "external-wins", "winner": "external",
                                           "why": "the policy is external-wins"}
    assert outcome.details["reason"] == (
        "changed on both sides since the last sync; the policy is external-wins: the third "
        "party's version is pulled next")
    link = world.link("account", ACCOUNT)
    assert (link.push_hash, link.claim) == ("old", None)  # the pull finds the conflict too


async def test_external_wins_pushes_a_record_unchanged_remotely(world: World):
    with_policy(world, {"account": "external-wins"})
    synced(world, remote())
    world.remote.script("getCompany", Answer(200, remote(updatedAt="2025-06-01T00:00:00Z")))
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed in the BSS")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies/co-1", "PATCH /companies/co-1"]
    assert outcome.outcome == "updated" and "conflict" not in outcome.details


async def test_newest_wins_pushes_a_bss_record_changed_last_and_says_so(world: World):
    with_policy(world, "newest-wins")
    synced(world, remote())
    world.remote.script("getCompany", Answer(200, remote(name="Renamed in the CRM",
                                                         updatedAt="2025-03-02T15:45:03.000Z")))
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed in the BSS")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies/co-1", "PATCH /companies/co-1"]
    assert outcome.outcome == "updated"
    assert outcome.details["conflict"]["winner"] == "bss"
    assert "the BSS record is newer" in outcome.details["conflict"]["why"]


async def test_newest_wins_skips_the_push_when_the_remote_record_changed_last(world: World):
    with_policy(world, "newest-wins")
    synced(world, remote())
    world.remote.script("getCompany", Answer(200, remote(name="Renamed in the CRM",
                                                         updatedAt="2025-03-02T15:45:04.000Z")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies/co-1"]
    assert outcome.outcome == "skipped" and outcome.details["conflict"]["winner"] == "external"


async def test_newest_wins_gives_a_tie_to_the_bss(world: World):
    with_policy(world, "newest-wins")
    synced(world, remote())
    world.remote.script("getCompany", Answer(200, remote(name="Renamed in the CRM",
                                                         updatedAt=BSS_TIME)))
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed in the BSS")))

    outcome = await world.run("account", ACCOUNT)

    assert outcome.outcome == "updated"
    assert "a tie goes to the BSS" in outcome.details["conflict"]["why"]


async def test_a_third_party_that_may_not_pull_updates_cannot_win(world: World):
    with_policy(world, "external-wins", pull_update=False)
    synced(world, remote())
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed in the BSS")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["PATCH /companies/co-1"]
    assert outcome.outcome == "updated"


async def test_a_remote_record_gone_on_read_is_left_to_the_update(world: World):
    with_policy(world, "external-wins")
    synced(world, remote())
    world.remote.script("getCompany", Answer(404, {"error": "not found"}))
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed in the BSS")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies/co-1", "PATCH /companies/co-1"]
    assert outcome.outcome == "updated"


async def test_a_link_that_never_knew_what_was_pulled_pushes_without_reading(world: World):
    with_policy(world, "external-wins")
    linked(world)  # pushed before pull hashes were kept
    world.put("account", account(name="Renamed in the BSS"))
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed in the BSS")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["PATCH /companies/co-1"]
    assert outcome.outcome == "updated"


async def test_a_remote_record_read_otherwise_but_not_modified_since_the_sync_is_pushed(
        world: World):
    """A read showing the record in another shape than the listing (HubSpot's read
    returns other properties than its search), modified before the last sync: no
    conflict, the push goes out."""
    with_policy(world, "external-wins")
    synced(world, remote())
    world.remote.script("getCompany", Answer(200, remote(name="Shown otherwise",
                                                         updatedAt="2024-12-31T23:59:59Z")))
    world.remote.script("updateCompany", Answer(200, remote(name="Renamed in the BSS")))

    outcome = await world.run("account", ACCOUNT)

    assert world.remote.sent == ["GET /companies/co-1", "PATCH /companies/co-1"]
    assert outcome.outcome == "updated" and "conflict" not in outcome.details
