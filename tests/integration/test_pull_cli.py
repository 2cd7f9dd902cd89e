"""``bss-sync pull`` against the real RabbitMQ and PostgreSQL and a real local third party.

What is proved: ``--wait`` prints one line per object and a total, the messages are in
the ``puller`` queue, the run row is completed with its counts; ``--entity`` limits
the objects; an unknown instance is one line, exit 1; without ``--wait`` the discovery
runs detached and its run completes; a failed object makes the exit code 1 with its
error on its line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli.main import main
from shared.messaging.topology import PULLER
from shared.settings import get_settings
from shared.storage.db import Database
from tests.fixtures.amqp import TestTopology
from tests.fixtures.database import run_sync
from tests.fixtures.waiting import wait_until
from tests.integration.listing_server import ListingServer, listing_connector

REPO = Path(__file__).resolve().parents[2]
COUNT = 25


@pytest.fixture
def server() -> Iterator[ListingServer]:
    with ListingServer(COUNT, size=10) as running:
        yield running


@pytest.fixture
def installed(database_env: str, topology: TestTopology, server: ListingServer,
              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestTopology:
    """An instance pulling the listing server's accounts (only Items_page and Items_all
    kept: one object per entity would need more entities than the stand-in has)."""
    monkeypatch.setenv("AMQP_URL", topology.url)
    get_settings.cache_clear()
    connector = json.loads(listing_connector(tmp_path).read_text())
    objects = connector["x-synchronization"]["objects"]
    kept = {"Items_page": objects["Items_page"], "Items_all": objects["Items_all"]}
    kept["Items_all"]["entity"] = "contact"
    kept["Items_all"]["pull"]["body"] = "ItemToContact"
    connector["x-synchronization"]["objects"] = kept
    connector["x-synchronization"]["transforms"]["ItemToContact"] = {
        "map": {"lastName": "name"}}
    spec = tmp_path / "connector.json"
    spec.write_text(json.dumps(connector))
    installation = {
        "timezone": "UTC", "connectors": [{"id": "listing", "spec": str(spec)}],
        "organizations": [{"id": "org-1", "name": "Org", "instances": [{
            "id": "inst-1", "name": "Listing", "connector": "listing", "server": server.url,
            "permissions": {"account": {"pull": ["create", "update"]},
                            "contact": {"pull": ["create"]}}}]}]}
    path = tmp_path / "installation.json"
    path.write_text(json.dumps(installation))
    assert main(["apply", str(path)]) == 0
    return topology


def runs(database_url: str) -> list[dict]:
    async def fetch() -> list[dict]:
        async with Database(database_url) as db:
            return await db.fetch("SELECT id, status, phase, trigger, counts FROM runs")
    return run_sync(fetch())


def test_pull_wait_prints_a_summary(installed, database_env, capsys) -> None:
    assert main(["pull", "--instance", "inst-1", "--wait"]) == 0
    out, _err = capsys.readouterr()
    lines = out.splitlines()
    objects = sorted(lines[:2])
    assert objects == [
        "Items_all (contact): 25 published of 25 listed, 1 pages, 1 requests, since the "
        "beginning — ok",
        "Items_page (account): 25 published of 25 listed, 4 pages, 4 requests, since the "
        "beginning — ok"]
    [run] = runs(database_env)
    assert lines[2] == (f"run {run['id']}: 50 messages published, 50 records listed, "
                        "0 of 2 objects failed")
    assert (run["status"], run["phase"], run["trigger"], run["counts"]["pull.published"]) == (
        "completed", "done", "manual", 50)
    installed.wait_ready(PULLER, 50)


def test_pull_entity_limits_the_objects(installed, database_env, capsys) -> None:
    assert main(["pull", "--instance", "inst-1", "--entity", "contact", "--wait"]) == 0
    out, _ = capsys.readouterr()
    assert [line.split(" ")[0] for line in out.splitlines()] == ["Items_all", "run"]
    installed.wait_ready(PULLER, COUNT)


def test_a_failed_object_exits_1_with_its_error(installed, server, capsys) -> None:
    server.fail[("/items/all", 1)] = [404]
    assert main(["pull", "--instance", "inst-1", "--wait"]) == 1
    out, _ = capsys.readouterr()
    assert "Items_all (contact): 0 published" in out and "— failed:" in out and "404" in out
    assert "1 of 2 objects failed" in out


def test_an_unknown_instance_is_one_line(installed, capsys) -> None:
    assert main(["pull", "--instance", "nope", "--wait"]) == 1
    assert capsys.readouterr().err == (
        "bss-sync: no instance 'nope' (see `bss-sync instances list`)\n")


def test_without_wait_the_discovery_runs_detached(installed, database_env) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "bss-sync"), "pull", "--instance", "inst-1"],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=60,
        check=False)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("run ")[1].split(" ")[0]
    wait_until(lambda: [r["status"] for r in runs(database_env)] == ["completed"], timeout=30,
               what="the detached discovery's run completed")
    assert str(runs(database_env)[0]["id"]) == run_id
    installed.wait_ready(PULLER, 2 * COUNT)
