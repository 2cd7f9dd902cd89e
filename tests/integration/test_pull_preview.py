"""``bss-sync preview --direction pull --instance ID`` against the real PostgreSQL, after a
real discovery (``bss-sync pull --wait``: the local third party, RabbitMQ): the preview
shows the request the next discovery sends — the instance's server, the stored cursor
minus the overlap — and, for a listing that stopped mid-way, the page it resumes at.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from shared.cli.main import main
from shared.connector.paging import OVERLAP
from shared.settings import get_settings
from tests.fixtures.amqp import TestTopology
from tests.integration.listing_server import ListingServer, listing_connector

COUNT = 15


@pytest.fixture
def server() -> Iterator[ListingServer]:
    with ListingServer(COUNT, size=10) as running:
        yield running


@pytest.fixture
def connector(database_env: str, topology: TestTopology, server: ListingServer,
              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An instance ``inst-1`` of the listing stand-in (``Items_page`` with a deleted list)."""
    monkeypatch.setenv("AMQP_URL", topology.url)
    get_settings.cache_clear()
    spec = listing_connector(tmp_path, deletes=True, kinds=("page",))
    installation = {
        "timezone": "UTC", "connectors": [{"id": "listing", "spec": str(spec)}],
        "organizations": [{"id": "org-1", "name": "Org", "instances": [{
            "id": "inst-1", "name": "Listing", "connector": "listing", "server": server.url,
            "permissions": {"account": {"pull": ["create", "update", "delete"]}}}]}]}
    path = tmp_path / "installation.json"
    path.write_text(json.dumps(installation))
    assert main(["apply", str(path)]) == 0
    return spec


def preview(connector: Path, *options: str) -> list[str]:
    return ["preview", str(connector), "--object", "Items_page", "--direction", "pull",
            *options]


def z(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z").replace(":", "%3A")


def test_the_preview_shows_what_the_next_discovery_sends(connector, server, capsys) -> None:
    for index in range(12):
        server.remove(f"c{index:05d}")  # 12 deleted ids: two pages of 10
    server.fail[("/items/deleted", 2)] = [400]  # the deleted list stops at its page 2
    assert main(["pull", "--instance", "inst-1", "--wait"]) == 1
    capsys.readouterr()
    last = datetime.fromisoformat(server.records[-1]["updatedAt"].replace("Z", "+00:00"))

    assert main(preview(connector, "--instance", "inst-1")) == 0
    out = capsys.readouterr().out
    first_deleted = datetime.fromisoformat(server.deleted[0]["deletedAt"].replace("Z", "+00:00"))
    assert first_deleted > last  # what the listing's cursor is made of is the records'
    assert f"GET {server.url}/items/page?_page=1&_limit=10&updated_gte={z(last - OVERLAP)}" in out
    assert f"GET {server.url}/items/deleted?_page=2&_limit=10\n" in out  # resumes, from the start
    assert "pull.deletedList (Items_page): page 2, where the stopped listing resumes" in out
    assert "note: instance inst-1: the cursors stored in PostgreSQL" in out

    # what the preview said is what the next discovery asks
    server.requests.clear()
    assert main(["pull", "--instance", "inst-1", "--wait"]) == 0
    sent = [(path, query) for _, path, query, _ in server.requests]
    assert sent[0] == ("/items/page", {"_page": "1", "_limit": "10",
                                       "updated_gte": z(last - OVERLAP).replace("%3A", ":")})
    assert ("/items/deleted", {"_page": "2", "_limit": "10"}) in sent

    assert main(preview(connector, "--instance", "inst-1", "--full")) == 0
    out = capsys.readouterr().out
    assert f"GET {server.url}/items/page?_page=1&_limit=10\n" in out
    assert f"GET {server.url}/items/deleted?_page=1&_limit=10\n" in out


def test_an_unknown_instance_is_one_line(connector, capsys) -> None:
    assert main(preview(connector, "--instance", "nope")) == 1
    err = capsys.readouterr().err
    assert err == "bss-sync: no instance 'nope' (see `bss-sync instances list`)\n"
