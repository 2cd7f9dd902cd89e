"""Pure parts of storage: URLs, schema names, migrations files, partitions, instance value."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import PoolClosed, PoolTimeout

from shared.errors import InfrastructureError
from shared.storage.db import Database, check_schema_name, redact_url, url_with_database
from shared.storage.instances import Instance
from shared.storage.migrate import MigrationError, load_migrations
from shared.storage.partitions import add_months, months_to_cover, partition_name


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("host=h password=pw dbname=d") == "host=h password=*** dbname=d"


def test_url_with_database_keeps_the_rest() -> None:
    assert url_with_database("postgresql://u:p@h:5/a?sslmode=disable", "b") == (
        "postgresql://u:p@h:5/b?sslmode=disable")


@pytest.mark.parametrize("name", ["public", "bss_sync", "t_0a1b"])
def test_schema_names_accepted(name: str) -> None:
    assert check_schema_name(name) == name


@pytest.mark.parametrize("name", ["Public", "a-b", "x; drop", "", "1abc"])
def test_schema_names_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_schema_name(name)


def test_migrations_are_ordered_and_checksummed() -> None:
    migrations = load_migrations()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions) and versions[0] == "0001"
    assert all(len(m.checksum) == 64 for m in migrations)


def test_misnamed_or_duplicated_migrations_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("")
    with pytest.raises(MigrationError, match=r"named NNNN_name\.sql"):
        load_migrations(tmp_path)
    (tmp_path / "1_bad.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("")
    (tmp_path / "0001_b.sql").write_text("")
    with pytest.raises(MigrationError, match="version 0001 is used twice"):
        load_migrations(tmp_path)


def test_partition_months() -> None:
    assert partition_name(date(2024, 3, 9)) == "audit_log_2024_03"
    assert add_months(date(2024, 11, 1), 3) == date(2025, 2, 1)
    assert months_to_cover(date(2024, 11, 30), 3) == [
        date(2024, 11, 1), date(2024, 12, 1), date(2025, 1, 1), date(2025, 2, 1)]


def test_instance_permissions() -> None:
    now = datetime.now(UTC)
    instance = Instance(
        id="i", org_id="o", connector_id="c", name="n", server_url=None, variables={},
        credentials={}, settings={"lookups": {"t": {"a": "b"}}}, active=True, created_at=now,
        updated_at=now, deactivated_at=None, connector_sha256="0" * 64, org_active=False,
        permissions=frozenset({("account", "push", "update"), ("account", "push", "create")}))
    assert instance.is_permitted("account", "push", "create")
    assert not instance.is_permitted("account", "pull", "create")
    assert instance.permitted_actions("account", "push") == ["create", "update"]
    assert instance.lookups == {"t": {"a": "b"}}
    assert not instance.enabled  # its organization is inactive


@pytest.mark.parametrize("foreign", [
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.InterfaceError("the connection is closed"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    PoolTimeout("couldn't get a connection after 10.00 sec"),
    PoolClosed("the pool is closed"),
])
def test_every_foreign_database_failure_is_an_infrastructure_error(foreign: Exception) -> None:
    database = Database("postgresql://bss:s3cret-pw@db.example:5432/bss")
    with pytest.raises(InfrastructureError) as caught, database._translated():
        raise foreign
    assert caught.value.__cause__ is foreign
    assert "s3cret-pw" not in str(caught.value)
    assert "postgresql://bss:***@db.example:5432/bss" in str(caught.value)


def test_data_errors_are_not_translated() -> None:
    database = Database("postgresql://bss@db.example/bss")
    with pytest.raises(psycopg.errors.UniqueViolation), database._translated():
        raise psycopg.errors.UniqueViolation("duplicate key")
