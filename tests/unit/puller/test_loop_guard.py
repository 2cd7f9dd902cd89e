"""The puller's loop guard and conflicts, through ``RecordPull`` with fakes: a record
the BSS holds already is not written again; a record changed on both sides since its
last sync is decided by the conflict policy (the object's, or the instance's override)."""

from __future__ import annotations

import dataclasses
from typing import Any

from services.puller.decide import BSS_ONLY_REASON, IN_STEP_REASON
from services.puller.plan import canonical_hash
from tests.unit.puller.conftest import INSTANCE, ORG, World, company

FIRST = "00000000-0000-4000-8000-0000000000a1"
SECOND = "00000000-0000-4000-8000-0000000000a2"
BSS_TIME = "2025-06-01T10:30:00.000Z"


def with_rights(world: World, *, conflict: Any = None, push: bool = True) -> None:
    """Pull (and push, with ``push``) every action on accounts; the instance's conflict
    override ``conflict``."""
    directions = ("pull", "push") if push else ("pull",)
    perms = frozenset(("account", d, a) for d in directions
                      for a in ("create", "update", "delete"))
    settings = {"conflict": conflict} if conflict is not None else {}
    world.use(dataclasses.replace(world.target.instance, permissions=perms, settings=settings))


async def pulled_once(world: World) -> dict[str, Any]:
    """The company pulled into the BSS (created and linked); the BSS record."""
    result = await world.handle("account", company(), message_id=FIRST)
    assert result.outcome.value == "created"
    [record] = world.bss.of(ORG, "account")
    return record


def changed_in_bss(world: World, record: dict[str, Any], **changes: Any) -> None:
    """Someone changes the record in the BSS (not a sync)."""
    world.bss.put(ORG, "account", {**record, **changes})


async def test_a_record_the_bss_holds_already_is_not_written_and_its_pull_hash_is_updated(
        world: World):
    """What the link says after a push: the pull hash of another time (here none)."""
    with_rights(world)
    record = await pulled_once(world)
    link = world.link("account", "17")
    world.links._put(dataclasses.replace(link, pull_hash=None))
    writes = len(world.bss.writes)

    # The listing shows the record again, its updatedAt moved by the push.
    result = await world.handle("account", company(updatedAt="2025-06-02T08:00:00.000Z"),
                                message_id=SECOND)

    assert (result.outcome.value, result.record_id) == ("unchanged", record["id"])
    assert result.details["reason"] == IN_STEP_REASON
    assert len(world.bss.writes) == writes  # nothing written
    after = world.link("account", "17")
    assert after.pull_hash == canonical_hash(world.bss.writes[0].body)  # brought up to date
    assert (after.push_hash, after.claim) == (link.push_hash, None)  # the push hash kept


async def test_an_external_change_of_a_record_unchanged_in_the_bss_is_written(world: World):
    with_rights(world)
    record = await pulled_once(world)

    result = await world.handle("account", company(name="Globex renamed"), message_id=SECOND)

    assert result.outcome.value == "updated" and "conflict" not in result.details
    assert world.bss.records[(ORG, "account", record["id"])]["name"] == "Globex renamed"


async def test_a_change_on_both_sides_is_skipped_when_the_bss_wins(world: World):
    with_rights(world)  # the connector's policy: bss-wins
    record = await pulled_once(world)
    changed_in_bss(world, record, name="Renamed in the BSS")
    link = world.link("account", "17")

    result = await world.handle("account", company(name="Renamed in the CRM"),
                                message_id=SECOND)

    assert (result.outcome.value, result.record_id) == ("skipped", record["id"])
    assert result.details["conflict"] == {"policy": "bss-wins", "winner": "bss",
                                          "why": "the policy is bss-wins"}
    assert result.details["reason"] == ("changed on both sides since the last sync; the "
                                        "policy is bss-wins: the BSS's version is pushed next")
    assert [w.method for w in world.bss.writes] == ["POST"]  # the first pull only
    assert world.bss.records[(ORG, "account", record["id"])]["name"] == "Renamed in the BSS"
    after = world.link("account", "17")
    assert (after.pull_hash, after.push_hash, after.claim) == (link.pull_hash, link.push_hash,
                                                               None)


async def test_a_change_on_both_sides_is_written_when_the_instance_lets_the_crm_win(
        world: World):
    with_rights(world, conflict={"account": "external-wins"})
    record = await pulled_once(world)
    changed_in_bss(world, record, name="Renamed in the BSS")

    result = await world.handle("account", company(name="Renamed in the CRM"),
                                message_id=SECOND)

    assert result.outcome.value == "updated"
    assert result.details["conflict"] == {"policy": "external-wins", "winner": "external",
                                          "why": "the policy is external-wins"}
    assert world.bss.records[(ORG, "account", record["id"])]["name"] == "Renamed in the CRM"


async def test_newest_wins_writes_an_external_record_changed_after_the_bss_one(world: World):
    with_rights(world, conflict="newest-wins")
    record = await pulled_once(world)
    changed_in_bss(world, record, name="Renamed in the BSS", updatedAt=BSS_TIME)

    result = await world.handle("account", company(name="Renamed in the CRM",
                                                   updatedAt="2025-06-01T10:31:00.000Z"),
                                message_id=SECOND)

    assert result.outcome.value == "updated"
    assert result.details["conflict"]["winner"] == "external"
    assert world.bss.records[(ORG, "account", record["id"])]["name"] == "Renamed in the CRM"


async def test_newest_wins_skips_an_external_record_changed_before_the_bss_one(world: World):
    with_rights(world, conflict="newest-wins")
    record = await pulled_once(world)
    changed_in_bss(world, record, name="Renamed in the BSS", updatedAt=BSS_TIME)

    result = await world.handle("account", company(name="Renamed in the CRM",
                                                   updatedAt="2025-06-01T10:29:59.999Z"),
                                message_id=SECOND)

    assert result.outcome.value == "skipped"
    assert result.details["conflict"]["winner"] == "bss"
    assert "the BSS record is newer" in result.details["reason"]
    assert world.bss.records[(ORG, "account", record["id"])]["name"] == "Renamed in the BSS"


async def test_newest_wins_gives_a_tie_to_the_bss(world: World):
    with_rights(world, conflict="newest-wins")
    record = await pulled_once(world)
    changed_in_bss(world, record, name="Renamed in the BSS", updatedAt=BSS_TIME)

    result = await world.handle("account", company(name="Renamed in the CRM",
                                                   updatedAt=BSS_TIME), message_id=SECOND)

    assert result.outcome.value == "skipped"
    assert "a tie goes to the BSS" in result.details["conflict"]["why"]


async def test_without_the_right_to_push_updates_the_bss_cannot_win_and_the_pull_writes(
        world: World):
    with_rights(world, push=False)
    record = await pulled_once(world)
    changed_in_bss(world, record, name="Renamed in the BSS")

    result = await world.handle("account", company(name="Renamed in the CRM"),
                                message_id=SECOND)

    assert result.outcome.value == "updated" and "conflict" not in result.details
    assert world.bss.records[(ORG, "account", record["id"])]["name"] == "Renamed in the CRM"


async def test_a_link_without_a_push_hash_cannot_tell_a_bss_change_and_the_pull_writes(
        world: World):
    with_rights(world)
    record = await pulled_once(world)
    world.links._put(dataclasses.replace(world.link("account", "17"), push_hash=None))
    changed_in_bss(world, record, name="Renamed in the BSS")

    result = await world.handle("account", company(name="Renamed in the CRM"),
                                message_id=SECOND)

    assert result.outcome.value == "updated"
    assert world.links._find(INSTANCE, "account", "external_id", "17").push_hash is not None


async def test_a_record_shown_otherwise_but_not_modified_since_the_sync_is_left_to_the_push(
        world: World):
    """A third party listing a record in another shape than it was synced in (a field
    the last sync did not see), not modified since: no conflict, even under
    external-wins — the BSS changed it, and its push follows."""
    with_rights(world, conflict="external-wins")
    record = await pulled_once(world)  # the link's stamps: later than 2025-01-01
    changed_in_bss(world, record, name="Renamed in the BSS")
    link = world.link("account", "17")

    result = await world.handle("account", company(name="Shown otherwise",
                                                   updatedAt="2024-12-31T23:59:59.000Z"),
                                message_id=SECOND)

    assert result.outcome.value == "unchanged"
    assert result.details["reason"] == BSS_ONLY_REASON
    assert [w.method for w in world.bss.writes] == ["POST"]
    after = world.link("account", "17")
    assert (after.pull_hash, after.push_hash, after.claim) == (link.pull_hash, link.push_hash,
                                                               None)
