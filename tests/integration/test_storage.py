"""PostgreSQL storage: migrations, partitions, stores, error translation."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared.errors import ConfigurationError, InfrastructureError
from shared.schemas import ENTITIES
from shared.storage.cursors import CursorStore
from shared.storage.db import Database
from shared.storage.instances import InstanceStore
from shared.storage.links import Link, LinkConflict, LinkStore
from shared.storage.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, upgrade
from shared.storage.partitions import ensure_audit_partitions, existing_partitions, partition_name
from shared.storage.runs import RunStore
from shared.storage.schedules import ScheduleStore

pytestmark = pytest.mark.integration

ALL_VERSIONS = [m.version for m in load_migrations()]


async def seed(db: Database, *, instance_id: str = "inst-1", org_id: str = "org-1") -> None:
    """One organization, connector and instance with a few permissions."""
    await db.execute(
        "INSERT INTO organizations (id, name, timezone) VALUES (%s, 'Org', 'Europe/Paris')"
        " ON CONFLICT DO NOTHING", (org_id,))
    await db.execute(
        "INSERT INTO connectors (id, title, version, sha256, document)"
        " VALUES ('acme', 'Acme', '1.0', %s, '{}') ON CONFLICT DO NOTHING", ("a" * 64,))
    await db.execute(
        "INSERT INTO instances (id, org_id, connector_id, name, credentials, settings)"
        " VALUES (%s, %s, 'acme', 'Acme prod', %s, %s)",
        (instance_id, org_id, Jsonb({"apiKey": "env:ACME_KEY"}),
         Jsonb({"lookups": {"industry": {"Software": "SW"}}})))
    await db.execute(
        "INSERT INTO permissions (instance_id, entity, direction, action) VALUES"
        " (%s, 'account', 'push', 'create'), (%s, 'account', 'push', 'update'),"
        " (%s, 'contact', 'pull', 'create')", (instance_id, instance_id, instance_id))


# --- migrations ------------------------------------------------------------------------------


async def test_upgrade_applies_every_migration_once(empty_db: Database) -> None:
    assert await upgrade(empty_db) == ALL_VERSIONS
    assert await upgrade(empty_db) == []
    tables = {r["tablename"] for r in await empty_db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (empty_db.schema,))}
    assert {"organizations", "connectors", "connector_versions", "instances", "permissions",
            "schedules", "links", "cursors", "runs", "audit_log_default",
            "schema_migrations"} <= tables
    recorded = await empty_db.fetch("SELECT version, checksum FROM schema_migrations")
    assert {r["version"]: r["checksum"] for r in recorded} == {
        m.version: m.checksum for m in load_migrations()}


async def test_concurrent_upgrades_apply_each_version_exactly_once(empty_db: Database) -> None:
    others = [Database(empty_db.url, empty_db.schema) for _ in range(3)]
    for other in others:
        await other.open()
    try:
        results = await asyncio.gather(upgrade(empty_db), *(upgrade(o) for o in others))
    finally:
        for other in others:
            await other.close()
    applied = [v for result in results for v in result]
    assert sorted(applied) == ALL_VERSIONS  # each version applied by exactly one process
    assert await empty_db.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL_VERSIONS)


async def test_a_changed_applied_migration_is_an_error(empty_db: Database, tmp_path: Path) -> None:
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    await upgrade(empty_db, load_migrations(tmp_path))
    first = sorted(tmp_path.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after the fact\n")
    with pytest.raises(MigrationError, match=r"changed after it was applied"):
        await upgrade(empty_db, load_migrations(tmp_path))


async def test_partitions_exist_ahead_and_catch_stranded_rows(db: Database) -> None:
    names = await existing_partitions(db)
    this_month = datetime.now(UTC).date().replace(day=1)
    for offset in range(4):
        index = this_month.year * 12 + this_month.month - 1 + offset
        assert partition_name(date(index // 12, index % 12 + 1, 1)) in names
    assert "audit_log_default" in names

    far = datetime(2031, 5, 17, 12, tzinfo=UTC)
    await db.execute("INSERT INTO audit_log (at, service, outcome) VALUES (%s, 'x', 'dead')",
                     (far,))
    assert await db.fetchval("SELECT count(*) FROM audit_log_default") == 1
    created = await ensure_audit_partitions(db, months_ahead=0, today=far.date())
    assert created == ["audit_log_2031_05"]
    assert await db.fetchval("SELECT count(*) FROM audit_log_default") == 0
    assert await db.fetchval("SELECT count(*) FROM audit_log_2031_05") == 1
    assert await ensure_audit_partitions(db, months_ahead=0, today=far.date()) == []


async def test_audit_log_is_append_only(db: Database) -> None:
    await db.execute("INSERT INTO audit_log (at, service, outcome) VALUES (now(), 'x', 'dead')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        await db.execute("UPDATE audit_log SET outcome = 'created'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        await db.execute("DELETE FROM audit_log")


# --- the edge ----------------------------------------------------------------------------------


async def test_unreachable_database_is_an_infrastructure_error_without_password() -> None:
    database = Database("postgresql://bss:hunter2-pw@127.0.0.1:1/nowhere", timeout=2)
    with pytest.raises(InfrastructureError) as caught:
        await database.open()
    assert "hunter2-pw" not in str(caught.value)
    assert "postgresql://bss:***@127.0.0.1:1/nowhere" in str(caught.value)


async def test_a_closed_pool_is_an_infrastructure_error(database_url: str) -> None:
    database = Database(database_url)
    await database.open()
    await database.close()
    with pytest.raises(InfrastructureError):
        await database.fetchval("SELECT 1")


async def test_search_path_isolates_schemas(db: Database, empty_db: Database) -> None:
    await seed(db)
    assert await db.fetchval("SELECT count(*) FROM organizations") == 1
    await upgrade(empty_db)
    assert await empty_db.fetchval("SELECT count(*) FROM organizations") == 0


async def test_the_database_refuses_a_credential_that_is_not_a_reference(db: Database) -> None:
    await seed(db)
    with pytest.raises(psycopg.errors.CheckViolation):
        await db.execute("UPDATE instances SET credentials = %s",
                         (Jsonb({"apiKey": "sk_live_plain_secret"}),))


@pytest.mark.parametrize("table", ["permissions", "links"])
async def test_the_tables_accept_exactly_the_entities_of_the_code(db: Database,
                                                                  table: str) -> None:
    """The migrations spell the entities in CHECK constraints; the code has one list."""
    clause = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
        " AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%%(entity %%'", (table,))
    assert clause is not None
    assert tuple(re.findall(r"'(\w+)'::text", clause)) == ENTITIES


# --- stores ------------------------------------------------------------------------------------


async def test_instance_store_loads_permissions_and_settings(db: Database) -> None:
    await seed(db)
    store = InstanceStore(db)
    instance = await store.require("inst-1")
    assert instance.org_id == "org-1" and instance.connector_id == "acme"
    assert instance.connector_sha256 == "a" * 64
    assert instance.credentials == {"apiKey": "env:ACME_KEY"}
    assert instance.lookups == {"industry": {"Software": "SW"}}
    assert instance.is_permitted("account", "push", "create")
    assert not instance.is_permitted("account", "push", "delete")
    assert not instance.is_permitted("contact", "push", "create")
    assert instance.permitted_actions("account", "push") == ["create", "update"]
    assert instance.enabled
    assert [i.id for i in await store.list("org-1")] == ["inst-1"]
    assert await store.list("other") == []
    assert [i.id for i in await store.permitted("org-1", "contact", "pull", "create")] == ["inst-1"]
    assert await store.permitted("org-1", "contact", "push", "create") == []
    with pytest.raises(ConfigurationError, match="unknown instance 'nope'"):
        await store.require("nope")


async def test_inactive_organization_disables_its_instances(db: Database) -> None:
    await seed(db)
    await db.execute("UPDATE organizations SET active = false, deactivated_at = now()")
    instance = await InstanceStore(db).require("inst-1")
    assert instance.active and not instance.enabled
    assert await InstanceStore(db).permitted("org-1", "account", "push", "create") == []


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
async def test_exactly_one_of_concurrent_claims_wins(db: Database, batched: bool) -> None:
    await seed(db)
    links = LinkStore(db, batched=batched)
    claims = await asyncio.gather(*(
        links.claim_for_create("inst-1", "account", "A-1", f"msg-{n}", stale_after=300)
        for n in range(20)))
    winners = [c for c in claims if c.owned]
    assert len(winners) == 1
    assert sum(c.new for c in claims) == 1
    holder = winners[0].link.claim
    assert all(c.link.claim == holder for c in claims)
    assert await db.fetchval("SELECT count(*) FROM links") == 1


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
async def test_claim_redelivery_stale_takeover_and_release(db: Database, batched: bool) -> None:
    await seed(db)
    links = LinkStore(db, batched=batched)
    first = await links.claim_for_create("inst-1", "account", "A-1", "m1", stale_after=300)
    assert first.owned and first.new and first.link.state == "creating"
    again = await links.claim_for_create("inst-1", "account", "A-1", "m1", stale_after=300)
    assert again.owned and not again.new  # the same message redelivered
    busy = await links.claim_for_create("inst-1", "account", "A-1", "m2", stale_after=300)
    assert not busy.owned and busy.link.claim == "m1"
    await db.execute("UPDATE links SET claimed_at = now() - interval '10 minutes'")
    stale = await links.claim_for_create("inst-1", "account", "A-1", "m2",
                                         stale_after=timedelta(minutes=5))
    assert stale.owned and stale.link.claim == "m2"
    assert not await links.release_claim("inst-1", "account", "m1", bss_id="A-1")
    assert await links.release_claim("inst-1", "account", "m2", bss_id="A-1", error="HTTP 503")
    released = await links.by_bss_id("inst-1", "account", "A-1")
    assert released is not None and released.claim is None and released.last_error == "HTTP 503"
    assert [link.bss_id for link in await links.failed("inst-1")] == ["A-1"]


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
async def test_mark_linked_lookups_and_delete(db: Database, batched: bool) -> None:
    await seed(db)
    links = LinkStore(db, batched=batched)
    await links.claim_for_create("inst-1", "account", "A-1", "m1", stale_after=300)
    linked = await links.mark_linked("inst-1", "account", bss_id="A-1", external_id="X-1",
                                     direction="push", push_hash="h1")
    assert (linked.state, linked.claim, linked.push_hash) == ("linked", None, "h1")
    assert linked.last_pushed_at is not None and linked.last_pulled_at is None
    pulled = await links.mark_linked("inst-1", "account", bss_id="A-1", external_id="X-1",
                                     direction="pull", pull_hash="p1")
    assert (pulled.id, pulled.push_hash, pulled.pull_hash) == (linked.id, "h1", "p1")
    await links.mark_linked("inst-1", "account", bss_id="A-2", external_id="X-2",
                            direction="pull", pull_hash="p2")
    assert await links.external_ids("inst-1", "account", ["A-1", "A-2", "A-3"]) == {
        "A-1": "X-1", "A-2": "X-2"}
    assert await links.bss_ids("inst-1", "account", ["X-2", "X-9"]) == {"X-2": "A-2"}
    assert await links.external_ids("inst-1", "contact", ["A-1"]) == {}
    with pytest.raises(LinkConflict):
        await links.mark_linked("inst-1", "account", bss_id="A-3", external_id="X-1",
                                direction="push")
    assert await links.mark_deleted("inst-1", "account", bss_id="A-2", direction="push")
    deleted = await links.by_external_id("inst-1", "account", "X-2")
    assert deleted is not None and deleted.state == "deleted" and deleted.pull_hash is None
    assert await links.external_ids("inst-1", "account", ["A-2"]) == {}


async def test_batched_claims_and_links_take_few_statements_and_fail_alone(db: Database) -> None:
    await seed(db)
    links = LinkStore(db, batched=True)
    await links.claim_for_create("inst-1", "account", "A-held", "other", stale_after=300)
    ids = [f"A-{n}" for n in range(60)]
    claims = await asyncio.gather(*(
        links.claim_for_create("inst-1", "account", bss_id, f"m-{bss_id}", stale_after=300)
        for bss_id in [*ids, "A-held", "A-0"]))
    assert all(c.owned and c.link.claim == f"m-{c.link.bss_id}" for c in claims[:60])
    assert not claims[60].owned and claims[60].link.claim == "other"  # held by another
    assert claims[61].owned and not claims[61].new  # A-0 again, same message: a redelivery
    assert links._claims.batches <= 4, "concurrent claims share statements"
    await links.mark_linked("inst-1", "account", bss_id="A-other", external_id="X-taken",
                            direction="push")
    stored = await asyncio.gather(*(
        links.mark_linked("inst-1", "account", bss_id=bss_id, external_id=f"X-{bss_id}",
                          direction="push", push_hash=f"h-{bss_id}")
        for bss_id in ids[:-1]),
        links.mark_linked("inst-1", "account", bss_id=ids[-1], external_id="X-taken",
                          direction="push", push_hash="h"),
        return_exceptions=True)
    assert isinstance(stored[-1], LinkConflict)  # its external id belongs to another record
    assert all(link.state == "linked" and link.claim is None and
               link.push_hash == f"h-{link.bss_id}" for link in stored[:-1])
    assert await links.external_ids("inst-1", "account", ids) == {
        bss_id: f"X-{bss_id}" for bss_id in ids[:-1]}


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
async def test_pull_side_claim_is_keyed_by_external_id(db: Database, batched: bool) -> None:
    await seed(db)
    links = LinkStore(db, batched=batched)
    claims = await asyncio.gather(*(
        links.claim_external_for_create("inst-1", "contact", "X-7", f"m{n}", stale_after=60)
        for n in range(5)))
    assert sum(c.owned for c in claims) == 1
    link = await links.mark_linked("inst-1", "contact", bss_id="C-7", external_id="X-7",
                                   direction="pull", pull_hash="p")
    assert link.bss_id == "C-7" and link.claim is None


async def test_batched_pull_claims_and_links_share_statements_and_fail_alone(
        db: Database) -> None:
    await seed(db)
    links = LinkStore(db, batched=True)
    await links.claim_external_for_create("inst-1", "account", "X-held", "other", 300)
    ids = [f"X-{n}" for n in range(60)]
    claims = await asyncio.gather(*(
        links.claim_external_for_create("inst-1", "account", external_id, f"m-{external_id}",
                                        stale_after=300)
        for external_id in [*ids, "X-held", "X-0"]),
        links.claim_for_create("inst-1", "account", "X-0", "m-push", stale_after=300))
    assert all(c.owned and c.link.claim == f"m-{c.link.external_id}" for c in claims[:60])
    assert all(c.link.bss_id is None for c in claims[:60])
    assert not claims[60].owned and claims[60].link.claim == "other"  # held by another
    assert claims[61].owned and not claims[61].new  # X-0 again, same message: a redelivery
    # a push-side claim of a BSS id spelled like an external id is another row
    assert claims[62].owned and claims[62].new and claims[62].link.external_id is None
    assert links._claims.batches <= 4, "concurrent claims share statements"
    await links.mark_linked("inst-1", "account", bss_id="A-taken", external_id="X-other",
                            direction="pull")
    before = links._linked.batches
    stored = await asyncio.gather(*(
        links.mark_linked("inst-1", "account", bss_id=f"A-{external_id}",
                          external_id=external_id, direction="pull",
                          pull_hash=f"p-{external_id}", push_hash=f"h-{external_id}")
        for external_id in ids[:-1]),
        links.mark_linked("inst-1", "account", bss_id="A-taken", external_id=ids[-1],
                          direction="pull", pull_hash="p"),
        return_exceptions=True)
    assert isinstance(stored[-1], LinkConflict)  # its BSS id belongs to another record
    assert all(isinstance(link, Link) and link.state == "linked" and link.claim is None
               and link.bss_id == f"A-{link.external_id}"
               and (link.pull_hash, link.push_hash) == (f"p-{link.external_id}",
                                                        f"h-{link.external_id}")
               and link.last_pulled_at is not None and link.last_pushed_at is None
               for link in stored[:-1])
    assert links._linked.batches - before <= 3, "concurrent link writes share statements"
    assert await links.bss_ids("inst-1", "account", ids) == {
        external_id: f"A-{external_id}" for external_id in ids[:-1]}
    # a pull that finds no hash keeps the stored ones
    kept = await links.mark_linked("inst-1", "account", bss_id="A-X-1", external_id="X-1",
                                   direction="pull")
    assert (kept.pull_hash, kept.push_hash) == ("p-X-1", "h-X-1")


async def test_cursor_store(db: Database) -> None:
    await seed(db)
    cursors = CursorStore(db)
    assert await cursors.get("inst-1", "Account", "pull") is None
    await cursors.set("inst-1", "Account", "pull", "2024-05-01T00:00:00Z")
    await cursors.set("inst-1", "Account", "pull", "2024-05-02T00:00:00Z")
    assert await cursors.get("inst-1", "Account", "pull") == "2024-05-02T00:00:00Z"
    assert await cursors.reset("inst-1") == 1
    assert await cursors.get("inst-1", "Account", "pull") is None


async def test_run_store(db: Database) -> None:
    await seed(db)
    runs = RunStore(db)
    slot = datetime(2024, 5, 1, 21, tzinfo=UTC)
    created = await asyncio.gather(*(runs.create("org-1", "inst-1", "schedule", scheduled_for=slot)
                                     for _ in range(5)))
    winners = [r for r in created if r is not None]
    assert len(winners) == 1  # one run per cron slot, whoever races
    run = winners[0]
    assert (run.status, run.phase, run.finished_at) == ("running", "push", None)
    await asyncio.gather(*(runs.add_counts(run.id, {"created": 1, "failed": n % 2})
                           for n in range(10)))
    updated = await runs.update(run.id, phase="pull", push_settled=True)
    assert updated is not None and updated.push_settled_at is not None
    assert updated.counts == {"created": 10, "failed": 5}
    done = await runs.update(str(run.id), status="completed", phase="done")
    assert done is not None and done.finished_at is not None
    manual = await runs.create("org-1", "inst-1", "manual")
    assert manual is not None
    assert [r.id for r in await runs.list("inst-1")] == [manual.id, run.id]
    assert await runs.get("not-a-uuid") is None
    assert await runs.get(uuid.uuid4()) is None
    assert [r.id for r in await runs.running("inst-1")] == [manual.id]


async def test_most_specific_schedule_wins(db: Database) -> None:
    await seed(db, instance_id="inst-1")
    await seed(db, instance_id="inst-2")
    schedules = ScheduleStore(db)
    default = await schedules.effective("inst-1")
    assert default is not None
    assert (default.cron, default.timezone, default.scope) == ("0 23 * * *", "Europe/Paris",
                                                               "default")
    await db.execute("INSERT INTO schedules (scope, scope_id, cron, timezone)"
                     " VALUES ('installation', '', '0 22 * * *', 'UTC')")
    await db.execute("INSERT INTO schedules (scope, scope_id, cron)"
                     " VALUES ('organization', 'org-1', '0 1 * * *')")
    await db.execute("INSERT INTO schedules (scope, scope_id, cron, timezone, enabled)"
                     " VALUES ('instance', 'inst-2', '*/5 * * * *', 'Asia/Tokyo', false)")
    by_id = {s.instance_id: s for s in await schedules.effective_all()}
    assert (by_id["inst-1"].cron, by_id["inst-1"].timezone, by_id["inst-1"].scope) == (
        "0 1 * * *", "Europe/Paris", "organization")
    assert (by_id["inst-2"].cron, by_id["inst-2"].timezone, by_id["inst-2"].enabled) == (
        "*/5 * * * *", "Asia/Tokyo", False)
    assert await schedules.effective("missing") is None


async def test_the_coordination_pool_commits_asynchronously_and_the_main_one_does_not(
        database_url: str) -> None:
    """Link writes ride on the audit row's synchronous commit (shared.storage.db); the
    audit writer's pool must stay synchronous, or an acked message could lose its row."""
    async with Database(database_url) as main, \
            Database(database_url, synchronous_commit=False) as coordination:
        assert await main.fetchval("SHOW synchronous_commit") == "on"
        assert await coordination.fetchval("SHOW synchronous_commit") == "off"


async def test_a_claim_that_leads_nowhere_is_forgotten(db: Database) -> None:
    await seed(db)
    links = LinkStore(db)
    claim = await links.claim_for_create("inst-1", "account", "acc-9", "m-1", 300)
    assert claim.owned and claim.new
    await links.forget_claim(claim, "m-1")
    assert await links.by_bss_id("inst-1", "account", "acc-9") is None
    await links.mark_linked("inst-1", "account", bss_id="acc-9", external_id="E9",
                            direction="push")
    claim = await links.claim_for_create("inst-1", "account", "acc-9", "m-2", 300)
    assert claim.owned and not claim.new
    await links.forget_claim(claim, "m-2")
    kept = await links.by_bss_id("inst-1", "account", "acc-9")
    assert kept is not None and kept.external_id == "E9" and kept.claim is None
