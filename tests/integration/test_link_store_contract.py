"""The in-memory link store of the unit tests behaves as ``LinkStore`` does.

The pusher's unit tests (tests/unit/pusher) run against ``FakeLinkStore``; they
prove something about the real pusher only as far as the fake keeps the real
store's semantics. Each scenario here runs against PostgreSQL (``LinkStore``, one
statement per call and batched as the pusher uses it) and against the fake, and
checks the same observable results: claims (free, own, held, stale), forget versus
release, hashes kept or cleared, link conflicts, what counts as linked.
"""

from __future__ import annotations

import pytest

from shared.storage.db import Database
from shared.storage.links import LinkConflict, LinkStore, PushMark
from tests.fixtures.database import truncate_all
from tests.unit.pusher.fakes import FakeLinkStore

pytestmark = pytest.mark.integration

INSTANCE = "inst-1"
HELD = 300.0  # a claim younger than this is held
STALE = 0.0  # any earlier claim is stale


@pytest.fixture(params=["postgres", "postgres-batched", "fake"])
async def store(request: pytest.FixtureRequest, database_url: str):
    if request.param == "fake":
        yield FakeLinkStore()
        return
    db = Database(database_url, min_size=1, max_size=4)
    await db.open()
    try:
        await truncate_all(db)
        await db.execute("INSERT INTO organizations (id, name) VALUES ('org-1', 'Org')")
        await db.execute("INSERT INTO connectors (id, title, version, sha256, document)"
                         " VALUES ('acme', 'Acme', '1.0', %s, '{}')", ("a" * 64,))
        await db.execute("INSERT INTO instances (id, org_id, connector_id, name)"
                         " VALUES (%s, 'org-1', 'acme', 'Acme')", (INSTANCE,))
        yield LinkStore(db, batched=request.param == "postgres-batched")
    finally:
        await db.close()


async def test_claims_free_own_held_and_stale(store) -> None:
    first = await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)
    again = await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)
    held = await store.claim_for_create(INSTANCE, "account", "a1", "m-2", HELD)
    stale = await store.claim_for_create(INSTANCE, "account", "a1", "m-2", STALE)

    assert (first.owned, first.new, first.link.state, first.link.claim) == (
        True, True, "creating", "m-1")
    assert first.link.external_id is None and first.link.last_pushed_at is None
    assert (again.owned, again.new, again.link.id) == (True, False, first.link.id)
    assert (held.owned, held.link.claim) == (False, "m-1")
    assert (stale.owned, stale.new, stale.link.claim) == (True, False, "m-2")


async def test_forget_removes_a_row_the_claim_created_and_releases_an_older_one(store) -> None:
    new = await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)
    await store.forget_claim(new, "m-1")
    assert await store.by_bss_id(INSTANCE, "account", "a1") is None

    await store.mark_linked(INSTANCE, "account", bss_id="a2", external_id="x2",
                            direction="push", push_hash="h")
    old = await store.claim_for_create(INSTANCE, "account", "a2", "m-2", HELD)
    await store.forget_claim(old, "m-2")
    kept = await store.by_bss_id(INSTANCE, "account", "a2")
    assert (kept.state, kept.external_id, kept.claim, kept.push_hash) == (
        "linked", "x2", None, "h")


async def test_release_remembers_the_error_and_only_for_the_holder(store) -> None:
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)

    assert await store.release_claim(INSTANCE, "account", "m-2", bss_id="a1",
                                     error="not mine") is False
    assert (await store.by_bss_id(INSTANCE, "account", "a1")).claim == "m-1"
    assert await store.release_claim(INSTANCE, "account", "m-1", bss_id="a1",
                                     error="RemoteUnavailable: boom") is True
    link = await store.by_bss_id(INSTANCE, "account", "a1")
    assert (link.claim, link.claimed_at, link.state, link.last_error) == (
        None, None, "creating", "RemoteUnavailable: boom")


async def test_linking_keeps_the_hash_when_given_none_and_clears_claim_and_error(store) -> None:
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)
    await store.release_claim(INSTANCE, "account", "m-1", bss_id="a1", error="earlier")
    await store.claim_for_create(INSTANCE, "account", "a1", "m-2", HELD)

    linked = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                     direction="push", push_hash="h1")
    relinked = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                       direction="push", push_hash=None)

    assert (linked.state, linked.claim, linked.last_error, linked.push_hash) == (
        "linked", None, None, "h1")
    assert relinked.push_hash == "h1" and relinked.last_pushed_at > linked.last_pushed_at
    assert await store.external_ids(INSTANCE, "account", ["a1", "a9"]) == {"a1": "x1"}
    assert await store.bss_ids(INSTANCE, "account", ["x1", "x9"]) == {"x1": "a1"}
    assert await store.external_ids(INSTANCE, "contact", ["a1"]) == {}


async def test_an_external_id_linked_to_another_record_is_a_conflict(store) -> None:
    await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                            direction="push", push_hash="h")

    with pytest.raises(LinkConflict):
        await store.mark_linked(INSTANCE, "account", bss_id="a2", external_id="x1",
                                direction="push", push_hash="h")
    assert await store.external_ids(INSTANCE, "account", ["a1", "a2"]) == {"a1": "x1"}


async def test_deleted_clears_hashes_moves_the_push_time_and_is_not_linked(store) -> None:
    linked = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                     direction="push", push_hash="h1")
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)

    assert await store.mark_deleted(INSTANCE, "account", direction="push", bss_id="a1")
    assert not await store.mark_deleted(INSTANCE, "account", direction="push", bss_id="a9")
    deleted = await store.by_bss_id(INSTANCE, "account", "a1")
    assert (deleted.state, deleted.push_hash, deleted.claim, deleted.external_id) == (
        "deleted", None, None, "x1")
    assert deleted.last_pushed_at > linked.last_pushed_at
    assert await store.external_ids(INSTANCE, "account", ["a1"]) == {}
    again = await store.claim_for_create(INSTANCE, "account", "a1", "m-2", HELD)
    assert (again.owned, again.new, again.link.id, again.link.state) == (
        True, False, linked.id, "deleted")


async def test_a_marked_write_replaces_the_push_mark_and_an_unmarked_one_keeps_it(store) -> None:
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)
    created = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                      direction="push", push_hash="h1",
                                      pushed=PushMark("m-1", 0, "created"))
    relinked = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                       direction="push", push_hash=None)
    claimed = await store.claim_for_create(INSTANCE, "account", "a1", "m-2", HELD)
    updated = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                      direction="push", push_hash="h2",
                                      pushed=PushMark("m-2", 3, "updated"))

    assert created.push_mark == PushMark("m-1", 0, "created")
    assert relinked.push_mark == PushMark("m-1", 0, "created")
    assert claimed.link.push_mark == PushMark("m-1", 0, "created")  # the claim reads it
    assert updated.push_mark == PushMark("m-2", 3, "updated")
    assert (await store.linked(INSTANCE, "account", ["a1", "a9"]))["a1"] == updated
    assert await store.linked(INSTANCE, "contact", ["a1"]) == {}

    assert await store.mark_deleted(INSTANCE, "account", direction="push", bss_id="a1",
                                    pushed=PushMark("m-3", 1, "deleted"))
    deleted = await store.by_bss_id(INSTANCE, "account", "a1")
    assert deleted.push_mark == PushMark("m-3", 1, "deleted")
    assert await store.linked(INSTANCE, "account", ["a1"]) == {}
    assert await store.mark_deleted(INSTANCE, "account", direction="push", bss_id="a1")
    assert (await store.by_bss_id(INSTANCE, "account", "a1")).push_mark == deleted.push_mark
