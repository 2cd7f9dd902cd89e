"""``apply``: declarative, idempotent, deactivating; every problem located; CLI output."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from shared.cli.main import main
from shared.installation import InstallationInvalid, apply
from shared.schemas import ENTITIES
from shared.storage.db import Database
from shared.storage.instances import InstanceStore
from shared.storage.schedules import ScheduleStore

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "installation"
VALID = DATA / "valid.json"
CONNECTOR = Path(__file__).resolve().parents[2] / "connectors" / "acme-crm.json"
SECRET = "sk_live_DO_NOT_PRINT_ME"


def write_variant(tmp_path: Path, change: Any = None, name: str = "installation.json") -> Path:
    """valid.json with absolute connector paths, changed by ``change(data)``, in ``tmp_path``."""
    data = json.loads(VALID.read_text())
    for connector in data["connectors"]:
        connector["spec"] = str(CONNECTOR)
    if change is not None:
        change(data)
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


async def snapshot(db: Database) -> dict[str, Any]:
    """Every configuration row's identity and updated_at, plus the permissions."""
    state: dict[str, Any] = {}
    for table, key in (("organizations", "id"), ("connectors", "id"), ("instances", "id"),
                       ("schedules", "scope || '/' || scope_id")):
        rows = await db.fetch(f"SELECT {key} AS k, updated_at FROM {table} ORDER BY 1")
        state[table] = [(r["k"], r["updated_at"]) for r in rows]
    rows = await db.fetch("SELECT * FROM permissions ORDER BY 1, 2, 3, 4")
    state["permissions"] = [(r["instance_id"], r["entity"], r["direction"], r["action"],
                             r["created_at"]) for r in rows]
    rows = await db.fetch("SELECT connector_id, sha256 FROM connector_versions ORDER BY 1, 2")
    state["connector_versions"] = [tuple(r.values()) for r in rows]
    return state


async def test_apply_creates_everything_the_file_declares(db: Database) -> None:
    report = await apply(db, VALID)
    created = {(c.kind, c.id) for c in report.changes if c.action == "created"}
    assert {("connector", "acme-crm"), ("organization", "globex"), ("organization", "initech"),
            ("instance", "globex-acme-prod"), ("instance", "globex-acme-staging"),
            ("instance", "initech-acme"), ("schedule", "installation"),
            ("schedule", "organization/initech"),
            ("schedule", "instance/globex-acme-staging")} == created
    prod = await InstanceStore(db).require("globex-acme-prod")
    assert prod.server_url == "https://crm.acme.example/api"
    assert prod.credentials == {"apiKey": "env:GLOBEX_ACME_API_KEY"}
    assert prod.variables == {"region": "eu"}
    assert prod.settings == {"lookups": {"industry": {"Software": "SOFTWARE"}},
                             "rateLimit": {"requests": 5, "per": "1s"},
                             "timeouts": {"read": 10}}
    assert prod.permissions == {("account", "push", "create"), ("account", "push", "update"),
                                ("account", "pull", "create"), ("account", "pull", "update"),
                                ("contact", "push", "create"), ("contact", "push", "update"),
                                ("contact", "push", "delete")}
    orgs = {r["id"]: r for r in await db.fetch("SELECT * FROM organizations")}
    assert orgs["globex"]["timezone"] == "Europe/Paris"  # the installation's
    assert orgs["initech"]["timezone"] == "America/New_York"
    connector = await db.fetchrow("SELECT * FROM connectors")
    assert connector is not None and connector["title"] == "Acme CRM"
    assert connector["document"]["x-synchronization"]["objects"]
    schedules = {s.instance_id: s for s in await ScheduleStore(db).effective_all()}
    assert (schedules["globex-acme-prod"].cron, schedules["globex-acme-prod"].timezone) == (
        "0 23 * * *", "Europe/Paris")
    assert (schedules["globex-acme-staging"].cron, schedules["globex-acme-staging"].timezone) == (
        "*/30 * * * *", "UTC")
    assert (schedules["initech-acme"].cron, schedules["initech-acme"].timezone) == (
        "30 22 * * mon-fri", "America/New_York")


async def test_applying_the_same_file_twice_changes_nothing(db: Database) -> None:
    await apply(db, VALID)
    before = await snapshot(db)
    report = await apply(db, VALID)
    assert report.changes == [] and report.lines() == ["no changes"]
    assert await snapshot(db) == before


async def test_a_yaml_file_applies_too(db: Database) -> None:
    report = await apply(db, DATA / "valid.yaml")
    assert ("instance", "hooli-acme") in {(c.kind, c.id) for c in report.changes}


async def test_a_removed_instance_is_deactivated_then_reactivated(
        db: Database, tmp_path: Path) -> None:
    full = write_variant(tmp_path)
    await apply(db, full)

    def drop_staging(data: dict[str, Any]) -> None:
        data["organizations"][0]["instances"].pop(1)

    report = await apply(db, write_variant(tmp_path, drop_staging, "smaller.json"))
    assert [(c.action, c.kind, c.id) for c in report.changes] == [
        ("deactivated", "instance", "globex-acme-staging"),
        ("removed", "schedule", "instance/globex-acme-staging")]
    staging = await InstanceStore(db).require("globex-acme-staging")
    assert not staging.active and staging.deactivated_at is not None
    assert (await InstanceStore(db).require("globex-acme-prod")).active
    again = await apply(db, full)
    assert ("reactivated", "instance", "globex-acme-staging") in [
        (c.action, c.kind, c.id) for c in again.changes]
    staging = await InstanceStore(db).require("globex-acme-staging")
    assert staging.active and staging.deactivated_at is None


async def test_a_removed_organization_is_deactivated_with_its_instances(
        db: Database, tmp_path: Path) -> None:
    await apply(db, write_variant(tmp_path))
    report = await apply(db, write_variant(tmp_path, lambda d: d["organizations"].pop(1), "b.json"))
    changes = {(c.action, c.kind, c.id) for c in report.changes}
    assert {("deactivated", "organization", "initech"),
            ("deactivated", "instance", "initech-acme"),
            ("removed", "schedule", "organization/initech")} == changes
    org = await db.fetchrow("SELECT active, deactivated_at FROM organizations WHERE id='initech'")
    assert org is not None and not org["active"] and org["deactivated_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM instances") == 3  # nothing deleted


async def test_only_the_changed_instance_moves(db: Database, tmp_path: Path) -> None:
    await apply(db, write_variant(tmp_path))
    before = await snapshot(db)

    def grant_delete(data: dict[str, Any]) -> None:
        data["organizations"][1]["instances"][0]["permissions"]["case"]["pull"].append("delete")

    report = await apply(db, write_variant(tmp_path, grant_delete, "c.json"))
    assert [str(c) for c in report.changes] == [
        "updated instance initech-acme: permissions +case.pull.delete"]
    after = await snapshot(db)
    moved = {k for k, v in after["instances"] if (k, v) not in before["instances"]}
    assert moved == {"initech-acme"}
    assert after["organizations"] == before["organizations"]
    inst = await InstanceStore(db).require("initech-acme")
    assert inst.is_permitted("case", "pull", "delete")


async def test_a_new_connector_version_is_kept(db: Database, tmp_path: Path) -> None:
    await apply(db, write_variant(tmp_path))
    document = json.loads(CONNECTOR.read_text())
    changed = copy.deepcopy(document)
    changed["info"]["version"] = "9.9.9"
    (tmp_path / "acme-v9.json").write_text(json.dumps(changed))

    def use_v9(data: dict[str, Any]) -> None:
        data["connectors"][0]["spec"] = "acme-v9.json"

    report = await apply(db, write_variant(tmp_path, use_v9, "d.json"))
    assert [(c.action, c.kind, c.id) for c in report.changes] == [
        ("updated", "connector", "acme-crm")]
    assert "version '1.2.0' -> '9.9.9'" in report.changes[0].detail
    assert await db.fetchval("SELECT count(*) FROM connector_versions") == 2
    assert await db.fetchval("SELECT version FROM connectors") == "9.9.9"


async def test_dry_run_writes_nothing(db: Database) -> None:
    report = await apply(db, VALID, dry_run=True)
    assert report.changed and report.dry_run
    assert await db.fetchval("SELECT count(*) FROM organizations") == 0


EXPECTED_PROBLEMS = [
    ("/timezone", 2, "unknown timezone 'Mars/Olympus'"),
    ("/schedule", 3,
     "invalid cron expression: the hour field '25' is invalid: is not acceptable, out of range"),
    ("/colour", 4, "unknown key 'colour'"),
    ("/connectors/1/id", 7, "connector id 'acme-crm' is used more than once"),
    ("/organizations/0/instances/0/connector", 17,
     "unknown connector 'sap-erp'; declare it under /connectors"),
    ("/organizations/0/instances/0/credentials/apiKey", 18,
     "a credential must be a reference like env:NAME or file:PATH"),
    ("/organizations/0/instances/0/permissions/acount", 19, "unknown entity 'acount'"),
    ("/organizations/0/instances/0/permissions/contact/push/0", 19, "unknown action 'upsert'"),
    ("/organizations/0/instances/1/id", 22, "instance id 'globex-one' is used more than once"),
    ("/organizations/0/instances/1/schedule/cron", 25,
     "invalid cron expression: a cron expression has 5 fields"),
    ("/organizations/1", 29, "the required property 'id' is missing"),
]


async def test_a_bad_file_lists_every_problem_and_writes_nothing(db: Database) -> None:
    with pytest.raises(InstallationInvalid) as caught:
        await apply(db, DATA / "invalid.json")
    problems = caught.value.problems
    assert [(p.pointer, p.line) for p in problems] == [(p, n) for p, n, _ in EXPECTED_PROBLEMS]
    for problem, (_, _, sentence) in zip(problems, EXPECTED_PROBLEMS, strict=True):
        assert sentence in problem.message
        assert problem.file is not None and problem.file.endswith("invalid.json")
    assert SECRET not in str(caught.value)
    assert all(SECRET not in p.format() for p in problems)
    assert await db.fetchval("SELECT count(*) FROM organizations") == 0


async def test_connector_level_problems_are_located_too(db: Database) -> None:
    with pytest.raises(InstallationInvalid) as caught:
        await apply(db, DATA / "invalid.yaml")
    assert [(p.pointer, p.line) for p in caught.value.problems] == [
        ("/organizations/0/instances/0/id", 8),
        ("/organizations/0/instances/0/permissions/invoice", 12)]
    assert "does not synchronize invoice records" in caught.value.problems[1].message


async def test_a_broken_connector_file_is_reported_with_its_own_location(
        db: Database, tmp_path: Path) -> None:
    broken = json.loads(CONNECTOR.read_text())
    broken["x-synchronization"]["objects"]["Account"]["entity"] = "acount"
    (tmp_path / "broken.json").write_text(json.dumps(broken, indent=2))

    def use_broken(data: dict[str, Any]) -> None:
        data["connectors"][0]["spec"] = "broken.json"

    with pytest.raises(InstallationInvalid) as caught:
        await apply(db, write_variant(tmp_path, use_broken))
    located = [p for p in caught.value.problems if p.file and p.file.endswith("broken.json")]
    assert located and all(p.message.startswith("connector 'acme-crm': ") for p in located)
    assert any(p.pointer.startswith("/x-synchronization/objects/Account") for p in located)


def test_cli_apply_then_list_and_show(database_env: str, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLOBEX_ACME_API_KEY", "real-secret-value-123")
    assert main(["apply", str(VALID)]) == 0
    out = capsys.readouterr().out
    assert "created instance globex-acme-prod" in out
    assert main(["apply", str(VALID)]) == 0
    assert capsys.readouterr().out.strip() == "no changes"

    assert main(["orgs", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "TIMEZONE", "ACTIVE"]
    assert [line.split()[0] for line in lines[1:]] == ["globex", "initech"]

    assert main(["instances", "list", "--org", "globex"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["globex-acme-prod", "globex-acme-staging"]

    assert main(["instances", "show", "globex-acme-prod"]) == 0
    shown = capsys.readouterr().out
    assert "env:GLOBEX_ACME_API_KEY" in shown
    assert "real-secret-value-123" not in shown
    assert "push: create, update, delete" in shown  # contact
    assert "schedule     0 23 * * * (Europe/Paris), from the installation level" in shown


def test_cli_apply_invalid_file_prints_every_problem(
        database_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", str(DATA / "invalid.json")]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == len(EXPECTED_PROBLEMS) + 1
    assert lines[0].endswith("invalid.json:2: /timezone: unknown timezone 'Mars/Olympus' "
                             "(use an IANA name such as Europe/Paris)")
    assert lines[-1] == f"bss-sync: {len(EXPECTED_PROBLEMS)} problems; nothing was applied"
    assert SECRET not in captured.err + captured.out
    assert "Traceback" not in captured.err


def test_cli_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from shared.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://bss:pw-should-not-show@127.0.0.1:1/x")
    get_settings.cache_clear()
    try:
        assert main(["orgs", "list"]) == 1
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bss-sync: cannot connect to PostgreSQL at ")
    assert "pw-should-not-show" not in err[0]


def test_cli_db_upgrade_is_idempotent(database_env: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "database is up to date"
    assert out[1].startswith("audit partitions: audit_log_")


def test_cli_show_unknown_instance(database_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["instances", "show", "nope"]) == 1
    assert capsys.readouterr().err.strip() == (
        "bss-sync: no instance 'nope' (see `bss-sync instances list`)")


def test_entities_vocabulary_matches_the_schema() -> None:
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas"
                         / "installation.schema.json").read_text())
    names = schema["$defs"]["instance"]["properties"]["permissions"]["propertyNames"]["enum"]
    assert tuple(names) == ENTITIES
