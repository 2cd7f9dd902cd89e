"""One pull message through the puller with fakes: every branch of the pipeline
(services.puller.pull), observed in the BSS's records and writes and the link rows."""

from __future__ import annotations

import dataclasses

import pytest

from services.puller.plan import canonical_hash
from shared.errors import (
    BssConflict,
    BssUnavailable,
    DependencyPending,
    InfrastructureError,
    InvalidMessage,
    RecordBusy,
    SchemaViolation,
)
from shared.transform import PreloadedLinks
from tests.unit.puller.conftest import INSTANCE, ORG, World, acme_with, company, person
from tests.unit.puller.fakes import FakeBssWrites
from tests.unit.pusher.fakes import Answer

OTHER = "00000000-0000-4000-8000-000000000002"


# -- create --------------------------------------------------------------------------------

async def test_a_new_external_record_is_created_in_the_bss_and_linked(world: World):
    result = await world.handle("account", company())

    [created] = world.bss.of(ORG, "account")
    assert created["name"] == "Globex Telecom" and created["code"] == "C-000977"
    [write] = world.bss.writes
    assert (write.method, write.origin) == ("POST", INSTANCE)
    assert write.idempotency_key
    link = world.link("account", "17")
    assert link is not None
    assert (link.state, link.bss_id, link.claim) == ("linked", created["id"], None)
    assert link.pull_hash == canonical_hash(write.body)
    assert link.last_pulled_at is not None
    assert (result.outcome, result.record_id, result.external_id) == (
        "created", created["id"], "17")
    assert result.details["idempotencyKey"] == write.idempotency_key


async def test_a_create_redelivered_after_its_link_was_lost_makes_no_second_record(
        world: World, monkeypatch: pytest.MonkeyPatch):
    real = world.links.mark_linked

    async def lost(*args, **kwargs):
        raise InfrastructureError("PostgreSQL went away")

    monkeypatch.setattr(world.links, "mark_linked", lost)
    with pytest.raises(InfrastructureError):
        await world.handle("account", company())
    monkeypatch.setattr(world.links, "mark_linked", real)

    result = await world.handle("account", company())

    [created] = world.bss.of(ORG, "account")
    first, again = world.bss.writes
    assert first.idempotency_key == again.idempotency_key
    assert result.outcome == "created" and result.record_id == created["id"]
    assert world.link("account", "17").bss_id == created["id"]


async def test_the_same_message_after_success_is_unchanged_and_writes_nothing(world: World):
    await world.handle("account", company())
    writes = len(world.bss.writes)

    result = await world.handle("account", company())

    assert result.outcome == "unchanged"
    assert len(world.bss.writes) == writes
    assert world.link("account", "17").claim is None


async def test_a_transient_bss_failure_on_create_releases_the_claim_then_creates_once(
        world: World):
    world.bss.fail_next(BssUnavailable("the BSS answered 503", http_status=503))
    with pytest.raises(BssUnavailable):
        await world.handle("account", company())
    link = world.link("account", "17")
    assert (link.state, link.claim) == ("creating", None)
    assert link.last_error.startswith("BssUnavailable: the BSS answered 503")

    assert (await world.handle("account", company())).outcome == "created"
    assert len(world.bss.of(ORG, "account")) == 1


async def test_a_create_answer_without_an_id_is_retried(world: World,
                                                        monkeypatch: pytest.MonkeyPatch):
    async def no_id(*args, **kwargs):
        return {"name": "x"}

    monkeypatch.setattr(world.bss, "create", no_id)
    with pytest.raises(BssUnavailable, match="without its id"):
        await world.handle("account", company())
    assert world.link("account", "17").state == "creating"


# -- update --------------------------------------------------------------------------------

async def test_a_changed_external_record_patches_the_bss_record_with_if_match(world: World):
    world.linked("account", 17, "bss-7", {"name": "Old name"}, pull_hash="stale")

    result = await world.handle("account", company(name="New name"))

    [write] = world.bss.writes
    assert (write.method, write.record_id, write.origin, write.if_match) == (
        "PATCH", "bss-7", INSTANCE, '"1"')
    assert world.bss.records[(ORG, "account", "bss-7")]["name"] == "New name"
    assert world.link("account", "17").pull_hash == canonical_hash(write.body)
    assert (result.outcome, result.record_id, result.http_status) == ("updated", "bss-7", 200)


async def test_an_update_whose_bss_record_changed_meanwhile_is_retried(world: World):
    world.linked("account", 17, "bss-7", pull_hash="stale")

    class Racing(FakeBssWrites):
        async def read(self, org_id, entity, record_id):
            found = await super().read(org_id, entity, record_id)
            self.bump(org_id, entity, record_id)  # a BSS user saves it right after
            return found

    racing = Racing()
    racing.records, racing.versions = world.bss.records, world.bss.versions
    world.handler.bss = racing

    with pytest.raises(BssConflict) as caught:
        await world.handle("account", company(name="New name"))
    assert caught.value.retryable and caught.value.http_status == 412
    assert racing.records[(ORG, "account", "bss-7")]["name"] == "Old"
    link = world.link("account", "17")
    assert (link.pull_hash, link.claim) == ("stale", None)
    assert link.last_error.startswith("BssConflict")


async def test_a_bss_record_deleted_between_read_and_patch_is_retried(
        world: World, monkeypatch: pytest.MonkeyPatch):
    world.linked("account", 17, "bss-7", pull_hash="stale")

    async def gone(*args, **kwargs):
        return None

    monkeypatch.setattr(world.bss, "patch", gone)
    with pytest.raises(BssConflict, match="deleted while it was being updated"):
        await world.handle("account", company())


async def test_a_linked_record_deleted_in_the_bss_is_not_brought_back(world: World):
    world.linked("account", 17, "bss-7", in_bss=False)

    result = await world.handle("account", company())

    assert result.outcome == "skipped"
    assert "deleted in the BSS" in result.details["reason"]
    assert world.bss.writes == []
    assert world.link("account", "17").claim is None


# -- references ----------------------------------------------------------------------------

async def test_a_contact_whose_company_is_not_linked_waits_for_it(world: World, tmp_path):
    """The connector cannot read one company (no pull.read): nothing to pull first
    (tests/unit/puller/test_parents.py has the companies it can)."""
    world.use(world.target.instance, acme_with(tmp_path, "Account", read=None))
    with pytest.raises(DependencyPending) as caught:
        await world.handle("contact", person(companyId=17))
    assert caught.value.retryable and caught.value.entity == "account"
    assert world.bss.writes == []

    await world.handle("account", company(id=17))
    account_id = world.link("account", "17").bss_id
    result = await world.handle("contact", person(companyId=17))

    assert result.outcome == "created"
    [contact] = world.bss.of(ORG, "contact")
    assert contact["accountId"] == account_id


# -- validation ----------------------------------------------------------------------------

async def test_a_record_breaking_the_canonical_schema_is_permanent_and_writes_nothing(
        world: World):
    with pytest.raises(SchemaViolation) as caught:
        await world.handle("account", company(email="not an email"))
    assert not caught.value.retryable
    assert "/email: is not a valid email" in str(caught.value)
    assert world.bss.writes == []
    link = world.link("account", "17")
    assert link.claim is None and "SchemaViolation" in link.last_error


# -- reading the record --------------------------------------------------------------------

async def test_a_message_with_only_the_id_reads_the_record_with_pull_read(world: World):
    world.remote.script("getCompany", Answer(200, company(id=17)))

    result = await world.handle("account", external_id="17")

    assert world.remote.sent == ["GET /companies/17"]
    assert result.outcome == "created"
    assert world.bss.of(ORG, "account")[0]["name"] == "Globex Telecom"


async def test_a_record_the_read_finds_gone_deletes_its_linked_bss_record(world: World):
    world.linked("account", 17, "bss-7")
    world.remote.script("getCompany", Answer(404, {"error": "not found"}))

    result = await world.handle("account", external_id="17")

    assert result.outcome == "deleted"
    assert (ORG, "account", "bss-7") not in world.bss.records
    assert world.link("account", "17").state == "deleted"


async def test_a_record_the_read_finds_gone_and_never_synced_is_skipped(world: World):
    world.remote.script("getCompany", Answer(404, {"error": "not found"}))
    result = await world.handle("account", external_id="17")
    assert result.outcome == "skipped" and "never synchronized" in result.details["reason"]
    assert world.link("account", "17") is None  # the claim left no row behind


async def test_only_an_id_without_pull_read_is_an_invalid_message(world: World):
    with pytest.raises(InvalidMessage, match=r"pull\.read"):
        await world.handle("contact", external_id="41")


async def test_a_message_without_record_or_id_is_invalid(world: World):
    with pytest.raises(InvalidMessage):
        await world.handle("account", action="delete")


# -- deletes -------------------------------------------------------------------------------

async def test_a_delete_message_deletes_the_linked_bss_record_with_if_match(world: World):
    world.linked("account", 17, "bss-7")

    result = await world.handle("account", external_id="17", action="delete")

    [write] = world.bss.writes
    assert (write.method, write.record_id, write.origin, write.if_match) == (
        "DELETE", "bss-7", INSTANCE, '"1"')
    assert (result.outcome, result.record_id) == ("deleted", "bss-7")
    link = world.link("account", "17")
    assert (link.state, link.pull_hash) == ("deleted", None)


async def test_a_tombstone_in_the_listing_deletes(world: World, tmp_path):
    doc = acme_with(tmp_path, "Account", deleted="archived = true")
    world.use(world.target.instance, doc)
    world.linked("account", 17, "bss-7")

    result = await world.handle("account", company(archived=True))

    assert result.outcome == "deleted"
    assert (ORG, "account", "bss-7") not in world.bss.records


async def test_a_delete_the_instance_may_not_do_is_skipped(world: World):
    world.permit(("account", "create"), ("account", "update"))
    world.linked("account", 17, "bss-7")

    result = await world.handle("account", external_id="17", action="delete")

    assert result.outcome == "skipped"
    assert result.details["reason"] == ("the instance is not permitted to delete account "
                                        "records (pull)")
    assert world.bss.writes == []
    assert world.link("account", "17").state == "linked"


async def test_a_create_the_instance_may_not_do_is_skipped_leaving_no_link(world: World):
    world.permit(("account", "update"))
    result = await world.handle("account", company())
    assert result.outcome == "skipped" and "create" in result.details["reason"]
    assert world.bss.writes == [] and world.link("account", "17") is None


# -- claims --------------------------------------------------------------------------------

async def test_a_record_another_delivery_is_pulling_is_busy(world: World):
    await world.links.claim_external_for_create(INSTANCE, "account", "17", OTHER, 300)

    with pytest.raises(RecordBusy):
        await world.handle("account", company())
    assert world.bss.writes == []
    assert world.link("account", "17").claim == OTHER


async def test_a_claim_older_than_the_stale_limit_is_taken_over(world: World):
    claim = await world.links.claim_external_for_create(INSTANCE, "account", "17", OTHER, 300)
    world.links._put(dataclasses.replace(
        claim.link, claimed_at=claim.link.claimed_at.replace(year=2000)))

    assert (await world.handle("account", company())).outcome == "created"


# -- both hashes ---------------------------------------------------------------------------

def pushed_body_hash(world: World, record: dict) -> str:
    """What the pusher would hash for ``record`` (its push.update body)."""
    update = world.target.connector.objects_for("account")[0].push["update"]
    return canonical_hash(update.body.apply(record, world.target.transform_context(
        PreloadedLinks())))


def may_push_updates(world: World) -> None:
    instance = world.target.instance
    world.use(dataclasses.replace(instance, permissions=instance.permissions
                                  | {("account", "push", "update")}))


async def test_a_pulled_write_stores_the_push_hash_of_the_record_as_written(world: World):
    may_push_updates(world)
    await world.handle("account", company())
    [created] = world.bss.of(ORG, "account")
    assert world.link("account", "17").push_hash == pushed_body_hash(world, created)

    await world.handle("account", company(name="Renamed"))
    [updated] = world.bss.of(ORG, "account")
    link = world.link("account", "17")
    assert link.push_hash == pushed_body_hash(world, updated)
    assert link.push_hash != pushed_body_hash(world, created)


async def test_a_push_hash_that_cannot_be_computed_keeps_the_stored_one(world: World):
    # The BSS record names a parent account this instance has no link for: the pusher's
    # transform of it ($externalId) cannot be computed — the pull is done all the same.
    world.linked("account", 17, "bss-7", {"name": "Old", "parentAccountId": "bss-nowhere"},
                 pull_hash="stale")
    world.links._put(dataclasses.replace(world.link("account", "17"), push_hash="kept"))
    may_push_updates(world)

    result = await world.handle("account", company(name="New"))

    assert result.outcome == "updated"
    assert result.details["pushHash"].startswith("not computed: DependencyPending")
    assert world.bss.records[(ORG, "account", "bss-7")]["name"] == "New"
    assert world.link("account", "17").push_hash == "kept"


async def test_an_instance_that_may_not_push_updates_stores_no_push_hash(world: World):
    # The pusher never sees this instance's echo of the write: the push transform is
    # not computed (a parent it would need to resolve is no reason to note anything).
    world.linked("account", 17, "bss-7", {"name": "Old", "parentAccountId": "bss-nowhere"},
                 pull_hash="stale")
    world.links._put(dataclasses.replace(world.link("account", "17"), push_hash="kept"))

    result = await world.handle("account", company(name="New"))

    assert result.outcome == "updated"
    assert "pushHash" not in result.details
    assert world.link("account", "17").push_hash == "kept"
    await world.handle("account", company(id=18, name="Created"))
    assert world.link("account", "18").push_hash is None

