"""The command line a newcomer meets: the real console script and service entry points
(as processes), against the real RabbitMQ and PostgreSQL where they connect.

What is proved: ``--version``; a bad option shows the subcommand's usage; a service's
``--help`` lists its environment and exits without connecting; a malformed URL is one
line naming the variable and never the password (CLI exit 78, services exit 78 with
one log line); broker errors name host and vhost; a missing queue points at
``bss-sync topology declare``; ``--json`` is JSON Lines; an empty result leaves
stdout empty and says the count on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from shared.cli.main import main
from shared.errors import InfrastructureError
from shared.messaging.amqp_url import AmqpUrl
from shared.messaging.connection import open_connection
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.tooling import publish_blocking
from shared.messaging.topology import DEAD_EXCHANGE, PUSHER, WorkQueue
from shared.settings import get_settings
from tests.fixtures.amqp import RabbitServer

REPO = Path(__file__).resolve().parents[2]
BSS_SYNC = Path(sys.executable).parent / "bss-sync"
SECRET = "pw-n0t-to-be-seen"
#: Nothing listens on port 1: a process that tried to connect there would retry forever
#: (the services wait for their infrastructure), so the timeout below would fire.
NOWHERE_AMQP = "amqp://guest:guest@127.0.0.1:1/%2F"
NOWHERE_DATABASE = "postgresql://postgres@127.0.0.1:1/postgres"
TIMEOUT = 60


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``command`` as a process in the repository, with ``env`` over the test's environment."""
    return subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """``monkeypatch`` for AMQP_URL & co., with the settings read afresh around the test."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


# ------------------------------------------------------------------ the console script

def test_version_is_the_installed_packages() -> None:
    result = run([str(BSS_SYNC), "--version"])
    assert result.returncode == 0
    assert result.stdout == f"bss-sync {version('bss-sync')}\n"


def test_a_bad_option_prints_the_subcommands_usage() -> None:
    result = run([str(BSS_SYNC), "audit", "search", "--colour"])
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: bss-sync audit search [-h] ")
    assert "bss-sync audit search: error: unrecognized arguments: --colour" in result.stderr
    assert "usage: bss-sync [-h]" not in result.stderr


@pytest.mark.parametrize(("variable", "command", "value", "expected"), [
    ("DATABASE_URL", ["orgs", "list"], f"postgresql://bss:{SECRET}@[db/bss",
     "bss-sync: DATABASE_URL is not a PostgreSQL URL: postgresql://bss:***@[db/bss: "),
    ("DATABASE_URL", ["db", "upgrade"], f"host=db password={SECRET}",
     "bss-sync: DATABASE_URL is not a PostgreSQL URL: host=db password=***: "),
    ("AMQP_URL", ["dead", "list"], f"http://guest:{SECRET}@rabbit/",
     "bss-sync: AMQP_URL is not a RabbitMQ URL: http://guest:***@rabbit/: "),
    ("AMQP_URL", ["topology", "declare"], f"amqp://guest:{SECRET}@rabbit:56x2/%2F",
     "bss-sync: AMQP_URL is not a RabbitMQ URL: amqp://guest:***@rabbit:56x2/%2F: "),
], ids=["orgs-list", "db-upgrade", "dead-list", "topology-declare"])
def test_a_malformed_url_is_one_line_naming_the_variable(
        variable: str, command: list[str], value: str, expected: str) -> None:
    result = run([str(BSS_SYNC), *command], **{variable: value})
    assert result.returncode == 78
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(expected)
    assert SECRET not in result.stderr and "internal error" not in line


# ------------------------------------------------------------------ the services

@pytest.mark.parametrize("service", ["dispatcher", "pusher", "puller"])
def test_a_services_help_lists_its_environment_without_connecting(service: str) -> None:
    result = run([sys.executable, "-m", f"services.{service}", "--help"],
                 AMQP_URL=NOWHERE_AMQP, DATABASE_URL=NOWHERE_DATABASE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m services.{service} [-h] [--version]")
    assert "AMQP_URL  (default: amqp://guest:guest@127.0.0.1:5672/%2F)" in result.stdout
    assert "DATABASE_URL  (default: postgresql://postgres@127.0.0.1:5432/postgres)" \
        in result.stdout
    assert ("BSS_API_URL" in result.stdout) == (service in ("pusher", "puller"))
    assert result.stderr == ""


def test_a_service_refuses_an_unknown_argument() -> None:
    result = run([sys.executable, "-m", "services.pusher", "--workers", "4"],
                 AMQP_URL=NOWHERE_AMQP, DATABASE_URL=NOWHERE_DATABASE)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m services.pusher [-h] [--version]")
    assert "unrecognized arguments: --workers 4" in result.stderr


@pytest.mark.parametrize(("service", "variable", "value"), [
    ("pusher", "DATABASE_URL", f"postgresql://bss:{SECRET}@[db/bss"),
    ("dispatcher", "AMQP_URL", f"amqp:guest:{SECRET}@rabbit"),
])
def test_a_service_with_a_malformed_url_exits_78_with_one_log_line(
        service: str, variable: str, value: str) -> None:
    result = run([sys.executable, "-m", f"services.{service}"], LOG_FORMAT="json",
                 **{"AMQP_URL": NOWHERE_AMQP, "DATABASE_URL": NOWHERE_DATABASE,
                    variable: value})
    assert result.returncode == 78
    [line] = result.stdout.splitlines()
    logged = json.loads(line)
    assert logged["event"] == "cannot start" and logged["level"] == "error"
    assert logged["service"] == service
    assert logged["error"].startswith(f"{variable} is not a ")
    assert SECRET not in result.stdout + result.stderr


# ------------------------------------------------------------------ RabbitMQ

def test_broker_errors_name_host_and_vhost(
        rabbitmq: RabbitServer, settings_env: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    broker = AmqpUrl.parse(rabbitmq.amqp_url)
    settings_env.setenv("AMQP_URL", rabbitmq.url_for("bss-sync-t-no-such-vhost"))
    assert main(["topology", "declare"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"bss-sync: cannot declare the topology on RabbitMQ at "
                           f'{broker.host}:{broker.port} (vhost "bss-sync-t-no-such-vhost", '
                           f"user {broker.user}): ")
    assert "not found" in line

    get_settings.cache_clear()
    settings_env.setenv("AMQP_URL", NOWHERE_AMQP)
    assert main(["dead", "list"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith('bss-sync: cannot connect to RabbitMQ at 127.0.0.1:1 (vhost "/", '
                           'user guest): ')


async def test_the_services_connection_errors_name_host_and_vhost(
        rabbitmq: RabbitServer) -> None:
    broker = AmqpUrl.parse(rabbitmq.amqp_url)
    with pytest.raises(InfrastructureError) as caught:
        await open_connection(rabbitmq.url_for("bss-sync-t-no-such-vhost"), "bss-sync test")
    assert str(caught.value).startswith(
        f'cannot connect to RabbitMQ at {broker.host}:{broker.port} '
        f'(vhost "bss-sync-t-no-such-vhost", user {broker.user}): ')
    with pytest.raises(InfrastructureError) as caught:
        await open_connection(NOWHERE_AMQP, "bss-sync test")
    assert str(caught.value) == ('cannot connect to RabbitMQ at 127.0.0.1:1 (vhost "/", '
                                 'user guest): [Errno 111] Connection refused')


def test_dead_list_missing_queue_then_empty_then_json_lines(
        empty_vhost: str, rabbitmq: RabbitServer, settings_env: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    vhost = AmqpUrl.parse(empty_vhost).vhost
    settings_env.setenv("AMQP_URL", empty_vhost)

    dead = WorkQueue(PUSHER)  # what `dead list` reads by default
    # before the topology exists: one line pointing at `topology declare`, nothing created
    assert main(["dead", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"bss-sync: queue '{dead.dead_queue}' does not exist on RabbitMQ at ")
    assert f'(vhost "{vhost}", ' in line
    assert line.endswith("; declare the topology with `bss-sync topology declare`")
    management = rabbitmq.management(vhost)
    assert management.queues() == []

    # declared, no dead letters: nothing on stdout, the count on stderr (text and JSON)
    assert main(["topology", "declare"]) == 0
    capsys.readouterr()
    for flags in ([], ["--json"]):
        assert main(["dead", "list", *flags]) == 0
        assert capsys.readouterr() == ("", f"no dead letters in {dead.dead_queue}\n")

    # two dead letters: --json is JSON Lines, one object per message
    publish_blocking(empty_vhost, [
        OutgoingMessage(DEAD_EXCHANGE, dead.dead_routing_key(f"account.update.o.i{n}"),
                        json.dumps({"n": n}).encode(), f"m-{n}",
                        {"x-error-class": "RemoteRejected", "x-error": f"422: no {n}"})
        for n in (1, 2)])
    assert main(["dead", "list", "--json"]) == 0
    captured = capsys.readouterr()
    listed = [json.loads(line) for line in captured.out.splitlines()]
    assert [m["message_id"] for m in listed] == ["m-1", "m-2"]
    assert all(isinstance(m, dict) for m in listed)
    assert listed[1]["headers"]["x-error"] == "422: no 2"
    assert captured.err == f"2 dead letters shown from {dead.dead_queue}\n"

    assert main(["dead", "list", "--limit", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(
        f"message m-1  routing key {dead.dead_routing_key('account.update.o.i1')}\n")
    assert "m-2" not in captured.out
    assert captured.err == (f"1 dead letter shown from {dead.dead_queue} "
                            "(the --limit; there may be more)\n")
    management.close()


# ------------------------------------------------------------------ PostgreSQL listings

@pytest.mark.parametrize(("command", "count"), [
    (["audit", "search"], "0 rows"),
    (["audit", "search", "--json"], "0 rows"),
    (["orgs", "list"], "0 organizations"),
    (["instances", "list"], "0 instances"),
    (["orgs", "list", "--json"], "0 organizations"),
    (["instances", "list", "--json"], "0 instances"),
])
def test_an_empty_listing_prints_nothing_on_stdout(database_env: str, command: list[str],
                                                   count: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(command) == 0
    assert capsys.readouterr() == ("", f"{count}\n")


def test_orgs_and_instances_list_as_json_lines(database_env: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` of a listing: one object per line, the count on stderr."""
    installation = json.loads((REPO / "demo" / "installation.json").read_text())
    installation["connectors"][0]["spec"] = str(REPO / "connectors" / "acme-crm.json")
    installation.pop("$schema", None)
    path = tmp_path / "installation.json"
    path.write_text(json.dumps(installation))
    assert main(["apply", str(path)]) == 0
    capsys.readouterr()

    assert main(["orgs", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [
        {"id": "acme-telecom", "name": "Acme Telecom", "timezone": "UTC", "active": True,
         "instances": 1, "active_instances": 1}]
    assert err == "1 organization\n"

    assert main(["instances", "list", "--json", "--org", "acme-telecom"]) == 0
    out, err = capsys.readouterr()
    [instance] = [json.loads(line) for line in out.splitlines()]
    assert instance == {"id": "acme-crm-prod", "org_id": "acme-telecom",
                        "connector_id": "acme-crm", "name": instance["name"], "active": True,
                        "server_url": "http://127.0.0.1:3000"}
    assert err == "1 instance\n"


@pytest.mark.parametrize("args", [["runs", "list"],
                                  ["runs", "show", "9a6f6b1e-0000-4000-8000-000000000000"],
                                  ["sync", "--instance", "inst-1", "--wait"],
                                  ["pull", "--instance", "inst-1", "--wait"]],
                         ids=" ".join)
def test_a_database_without_tables_is_one_line_saying_what_to_run(
        args: list[str], database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DB_SCHEMA", "t_never_migrated")
    get_settings.cache_clear()
    try:
        assert main(args) == 1
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "bss-sync: the database has no bss-sync tables yet; run `bss-sync db upgrade`")
