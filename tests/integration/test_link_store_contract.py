"""The in-memory link store of the unit tests behaves as ``LinkStore`` does.

The pusher's unit tests (tests/unit/pusher) run against ``FakeLinkStore``; they
prove something about the real pusher only as far as the fake keeps the real
store's semantics. Each scenario here runs against PostgreSQL (``LinkStore``, one
statement per call and batched as the pusher uses it) and against the fake, and
checks the same observable results: claims (free, own, held, stale), forget versus
release, hashes kept or cleared, link conflicts, what counts as linked.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from shared.storage.db import Database
from shared.storage.links import LinkConflict, LinkStore, PushMark
from tests.fixtures.database import truncate_all
from tests.unit.pusher.fakes import FakeLinkStore

pytestmark = pytest.mark.integration

INSTANCE = "inst-1"
HELD = 300.0  # a claim younger than this is held
STALE = 0.0  # any earlier claim is stale


@pytest.fixture(params=["postgres", "postgres-batched", "postgres-async", "pusher", "fake"])
async def store(request: pytest.FixtureRequest, database_url: str):
    """Each way a store is built: on one synchronous pool (plain, batched), on an
    asynchronous-commit pool alone, and as the pusher builds it (links on the
    asynchronous pool, pending creates noted on the synchronous one)."""
    if request.param == "fake":
        yield FakeLinkStore()
        return
    db = Database(database_url, min_size=1, max_size=4)
    lazy = Database(database_url, min_size=1, max_size=4, synchronous_commit=False)
    await db.open()
    await lazy.open()
    try:
        await truncate_all(db)
        await db.execute("INSERT INTO organizations (id, name) VALUES ('org-1', 'Org')")
        await db.execute("INSERT INTO connectors (id, title, version, sha256, document)"
                         " VALUES ('acme', 'Acme', '1.0', %s, '{}')", ("a" * 64,))
        await db.execute("INSERT INTO instances (id, org_id, connector_id, name)"
                         " VALUES (%s, 'org-1', 'acme', 'Acme')", (INSTANCE,))
        if request.param == "postgres-async":
            yield LinkStore(lazy, batched=True)
        elif request.param == "pusher":
            yield LinkStore(lazy, batched=True, durable=db)
        else:
            yield LinkStore(db, batched=request.param == "postgres-batched")
    finally:
        await lazy.close()
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


async def test_pull_side_claims_by_external_id_and_links_the_claimed_row(store) -> None:
    first = await store.claim_external_for_create(INSTANCE, "account", "x1", "m-1", HELD)
    held = await store.claim_external_for_create(INSTANCE, "account", "x1", "m-2", HELD)
    assert (first.owned, first.new, first.link.state, first.link.bss_id) == (
        True, True, "creating", None)
    assert (held.owned, held.link.claim) == (False, "m-1")

    linked = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                     direction="pull", pull_hash="p", push_hash="h")
    assert (linked.id, linked.state, linked.claim, linked.pull_hash, linked.push_hash) == (
        first.link.id, "linked", None, "p", "h")
    assert linked.last_pulled_at is not None and linked.last_pushed_at is None
    assert await store.bss_ids(INSTANCE, "account", ["x1", "x9"]) == {"x1": "a1"}


async def test_forget_removes_a_row_a_pull_claim_created(store) -> None:
    new = await store.claim_external_for_create(INSTANCE, "account", "x1", "m-1", HELD)
    await store.forget_claim(new, "m-1")
    assert await store.by_external_id(INSTANCE, "account", "x1") is None

    await store.mark_linked(INSTANCE, "account", bss_id="a2", external_id="x2",
                            direction="pull", pull_hash="p")
    old = await store.claim_external_for_create(INSTANCE, "account", "x2", "m-2", HELD)
    await store.forget_claim(old, "m-2")
    kept = await store.by_external_id(INSTANCE, "account", "x2")
    assert (kept.state, kept.bss_id, kept.claim, kept.pull_hash) == ("linked", "a2", None, "p")


async def test_a_pull_create_is_in_flight_from_its_claim_until_its_link(store) -> None:
    assert not await store.pulls_creating(INSTANCE, "account", HELD)
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)  # a push's claim
    assert not await store.pulls_creating(INSTANCE, "account", HELD)

    await store.claim_external_for_create(INSTANCE, "account", "x1", "m-2", HELD)
    assert await store.pulls_creating(INSTANCE, "account", HELD)
    assert not await store.pulls_creating(INSTANCE, "contact", HELD)
    assert not await store.pulls_creating(INSTANCE, "account", STALE)  # abandoned

    await store.mark_linked(INSTANCE, "account", bss_id="a2", external_id="x1",
                            direction="pull", pull_hash="p")
    assert not await store.pulls_creating(INSTANCE, "account", HELD)
    await store.mark_linked(INSTANCE, "account", bss_id="a3", external_id="x3",
                            direction="pull", pull_hash="p")
    await store.claim_external_for_create(INSTANCE, "account", "x3", "m-3", HELD)
    assert not await store.pulls_creating(INSTANCE, "account", HELD)  # an update's claim


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


async def test_a_push_stores_the_pull_hash_it_is_given_and_keeps_it_when_given_none(
        store) -> None:
    first = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                    direction="push", push_hash="h1", pull_hash="p1")
    second = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                     direction="push", push_hash="h2")
    third = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                    direction="push", push_hash="h3", pull_hash="p3")

    assert (first.push_hash, first.pull_hash) == ("h1", "p1")
    assert (second.push_hash, second.pull_hash) == ("h2", "p1")
    assert (third.push_hash, third.pull_hash) == ("h3", "p3")


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


async def test_a_create_is_noted_only_by_the_claim_holder_and_ends_with_the_link(store) -> None:
    sent = {"key": "k-1", "record": {"id": "a1", "name": "Nul\u0000 é \ud800"},
            "body": {"name": "Nul\u0000 é"}}  # a NUL and a lone surrogate survive
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)

    assert not await store.note_create_sent(INSTANCE, "account", "a1", "m-2", sent)
    assert await store.note_create_sent(INSTANCE, "account", "a9", "m-1", sent)  # row gone
    remade = await store.by_bss_id(INSTANCE, "account", "a9")
    assert (remade.state, remade.claim, remade.create_trace) == ("creating", "m-1", sent)
    assert await store.note_create_sent(INSTANCE, "account", "a1", "m-1", sent)
    noted = await store.by_bss_id(INSTANCE, "account", "a1")
    assert noted.create_sent_at is not None and noted.create_pending
    assert noted.create_trace == sent
    assert not await store.clear_create_sent(INSTANCE, "account", "a1", "m-2")
    released = await store.release_claim(INSTANCE, "account", "m-1", bss_id="a1", error="lost")
    assert released and (await store.by_bss_id(INSTANCE, "account", "a1")).create_pending
    again = await store.claim_for_create(INSTANCE, "account", "a1", "m-2", HELD)
    assert again.link.create_trace == sent  # the claim reads it

    linked = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                     direction="push", push_hash="h")
    assert (linked.create_sent_at, linked.create_sent, linked.create_pending) == (
        None, None, False)


async def test_a_noted_create_is_cleared_by_its_holder_or_a_delete(store) -> None:
    for bss_id in ("a1", "a2"):
        await store.claim_for_create(INSTANCE, "account", bss_id, "m-1", HELD)
        assert await store.note_create_sent(INSTANCE, "account", bss_id, "m-1", {"key": "k"})

    assert await store.clear_create_sent(INSTANCE, "account", "a1", "m-1")
    assert await store.mark_deleted(INSTANCE, "account", direction="push", bss_id="a2")

    for bss_id in ("a1", "a2"):
        link = await store.by_bss_id(INSTANCE, "account", bss_id)
        assert (link.create_sent_at, link.create_sent) == (None, None)


async def test_a_creates_steps_link_the_record_keep_the_claim_and_end_with_a_push(
        store) -> None:
    done = {"customer": {"ref": "R-1"}}
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)
    await store.note_create_sent(INSTANCE, "account", "a1", "m-1", {"key": "k"})
    await store.mark_linked(INSTANCE, "account", bss_id="a2", external_id="x2",
                            direction="push")

    assert not await store.note_steps_done(INSTANCE, "account", "a1", "m-2",
                                           external_id="x1", done=done)
    with pytest.raises(LinkConflict):
        await store.note_steps_done(INSTANCE, "account", "a1", "m-1", external_id="x2",
                                    done=done)
    assert await store.note_steps_done(INSTANCE, "account", "a1", "m-1", external_id="x1",
                                       done=done)
    noted = await store.by_bss_id(INSTANCE, "account", "a1")
    assert (noted.state, noted.external_id, noted.claim, noted.steps_done) == (
        "linked", "x1", "m-1", done)
    assert not noted.create_pending and noted.last_pushed_at is None
    assert (await store.external_ids(INSTANCE, "account", ["a1"])) == {"a1": "x1"}

    pulled = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                     direction="pull")
    assert pulled.steps_done == done  # a pull does not finish a push's steps
    pushed = await store.mark_linked(INSTANCE, "account", bss_id="a1", external_id="x1",
                                     direction="push", push_hash="h")
    assert pushed.steps_done is None and pushed.push_steps is None

    await store.claim_for_create(INSTANCE, "account", "a3", "m-1", HELD)
    await store.note_steps_done(INSTANCE, "account", "a3", "m-1", external_id="x3", done=done)
    await store.mark_deleted(INSTANCE, "account", direction="push", bss_id="a3")
    assert (await store.by_bss_id(INSTANCE, "account", "a3")).steps_done is None


async def test_two_messages_noting_one_record_at_once_write_the_holders_note(store) -> None:
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)

    holder, other = await asyncio.gather(  # one batch for the batched store
        store.note_create_sent(INSTANCE, "account", "a1", "m-1", {"key": "k-1"}),
        store.note_create_sent(INSTANCE, "account", "a1", "m-2", {"key": "k-2"}))

    assert (holder, other) == (True, False)
    assert (await store.by_bss_id(INSTANCE, "account", "a1")).create_trace == {"key": "k-1"}


async def test_an_error_holding_a_nul_is_refused_and_the_claim_kept(store) -> None:
    await store.claim_for_create(INSTANCE, "account", "a1", "m-1", HELD)

    with pytest.raises(psycopg.DataError):
        await store.release_claim(INSTANCE, "account", "m-1", bss_id="a1", error="nul\x00")

    assert (await store.by_bss_id(INSTANCE, "account", "a1")).claim == "m-1"
