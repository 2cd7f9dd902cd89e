"""An installation of an older topology is migrated by ``bss-sync topology declare`` without
losing a message, and the services refuse to start on it (docs/architecture.md §4).

The older topology is the one before at-least-once dead-lettering: classic retry
queues, work queues without ``x-dead-letter-strategy`` (spelled here, as the past
is). Every old queue holds messages; after the migration every queue has the
arguments this version declares, holds exactly the messages it held (body byte for
byte, properties and headers kept, where a message came from recorded as on retry
copies), and no holding queue is left. Nothing is migrated while a service
consumes; an interrupted migration blocks the services until the next run ends it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue, binding

from shared.cli.main import main
from shared.messaging.management import ManagementClient
from shared.messaging.topology import (
    DEAD_EXCHANGE,
    TopologyConflict,
    WorkQueue,
    declare_topology,
    exchanges,
    holding_queue,
    topology,
    work_queues,
)
from shared.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
#: Long delays: nothing expires from a retry queue while the test looks.
LADDER = (600.0, 3600.0)
LIMIT = 5
PER_QUEUE = 7
#: Not valid UTF-8, with a content encoding that says it is: must travel as bytes.
BODY = b'{"n": %d, "raw": "\xff\xfe"}'


def _old_queues(queue: WorkQueue) -> list[Queue]:
    """A service's queues as bss-sync declared them before at-least-once dead-lettering."""
    source = Exchange(queue.source_exchange, type="topic", durable=True)
    dead = Exchange(DEAD_EXCHANGE, type="topic", durable=True)
    old = [Queue(queue.name, bindings=[binding(source, routing_key="#")], durable=True,
                 queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": LIMIT,
                                  "x-dead-letter-exchange": DEAD_EXCHANGE,
                                  "x-dead-letter-routing-key": queue.service})]
    old += [Queue(r.name, durable=True, queue_arguments={
        "x-queue-type": "classic", "x-message-ttl": r.ttl_ms, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": r.work_queue}) for r in queue.retry_queues]
    old.append(Queue(queue.dead_queue, bindings=[binding(dead, routing_key=f"{queue.service}.#")],
                     durable=True, queue_arguments={"x-queue-type": "quorum"}))
    return old


def _declare_old(url: str) -> None:
    with Connection(url) as conn:
        channel = conn.channel()
        for entity in [*exchanges(), *(q for w in work_queues(LADDER) for q in _old_queues(w))]:
            entity(channel).declare()


def _fill(url: str) -> dict[str, list[dict[str, Any]]]:
    """PER_QUEUE messages in every old queue, published as bss-sync and a BSS would;
    returns what each queue must hold afterwards."""
    expected: dict[str, list[dict[str, Any]]] = {}
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.default_channel
        for queue in work_queues(LADDER):
            targets = [(queue.name, queue.source_exchange, "account.update.org-1.inst-{n}"),
                       (queue.dead_queue, DEAD_EXCHANGE, f"{queue.service}.account.x.{{n}}")]
            targets += [(r.name, "", r.name) for r in queue.retry_queues]
            for name, exchange, key in targets:
                expected[name] = []
                for n in range(PER_QUEUE):
                    headers = {"x-attempt": n, "x-org-id": "org-1"}
                    if exchange == "":  # a retry copy knows where it was first published
                        headers |= {"x-original-exchange": queue.source_exchange,
                                    "x-original-routing-key": f"orig.{n}"}
                    message = channel.prepare_message(
                        BODY % n, content_type="application/json", content_encoding="utf-8",
                        headers=dict(headers), properties={
                            "delivery_mode": 2, "message_id": f"{name}-{n}",
                            "correlation_id": f"c-{n}"})
                    channel.basic_publish(message, exchange=exchange,
                                          routing_key=key.format(n=n), mandatory=True)
                    if exchange not in ("", DEAD_EXCHANGE):
                        headers |= {"x-original-exchange": exchange,
                                    "x-original-routing-key": key.format(n=n)}
                    expected[name].append({"id": f"{name}-{n}", "body": BODY % n,
                                           "headers": headers, "properties": (
                                               2, "application/json", f"c-{n}")})
    return expected


def _contents(url: str, queue: str) -> list[dict[str, Any]]:
    """What ``queue`` holds, in order (read and left there)."""
    seen = []
    with Connection(url) as conn:
        channel = conn.channel()
        channel.auto_decode = False
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            props = message.properties
            seen.append({"id": props["message_id"], "body": bytes(message.body),
                         "headers": {k: v for k, v in (props.get("application_headers")
                                                       or {}).items()
                                     if k != "x-delivery-count"},  # the queue's, on each get
                         "properties": (props.get("delivery_mode"), props.get("content_type"),
                                        props.get("correlation_id"))})
        channel.close()
    return seen


@pytest.fixture
def old_installation(empty_vhost: str) -> str:
    _declare_old(empty_vhost)
    return empty_vhost


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, empty_vhost: str) -> Iterator[None]:
    """The CLI's environment: this test's vhost, the ladder and limit of the test."""
    get_settings.cache_clear()
    monkeypatch.setenv("AMQP_URL", empty_vhost)
    monkeypatch.setenv("RETRY_DELAYS", json.dumps(LADDER))
    monkeypatch.setenv("DELIVERY_LIMIT", str(LIMIT))
    yield
    get_settings.cache_clear()


def _management(url: str, management: ManagementClient) -> ManagementClient:
    from shared.messaging.amqp_url import AmqpUrl

    return management.for_vhost(AmqpUrl.parse(url).vhost)


def test_declare_migrates_an_old_installation_keeping_every_message(
        old_installation: str, cli_env: None, management: ManagementClient,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = old_installation
    expected = _fill(url)

    assert main(["topology", "declare"]) == 0
    out = capsys.readouterr().out.splitlines()
    migrated = {line.split()[2].rstrip(":"): line for line in out
                if line.startswith("migrated queue ")}
    changed = {q.name for w in work_queues(LADDER) for q in [w, *w.retry_queues]}
    assert set(migrated) == {f"{name}" for name in changed}
    assert all(f": {PER_QUEUE} messages moved (was queue " in line
               for line in migrated.values())

    _, declared = topology(LADDER, LIMIT)
    held = {q["name"]: q for q in _management(url, management).queues()}
    assert set(held) == {q.name for q in declared}  # no holding queue left
    for queue in declared:
        assert held[queue.name]["arguments"] == queue.queue_arguments, queue.name
    for name, messages in expected.items():
        assert _contents(url, name) == messages, name

    assert main(["topology", "declare"]) == 0  # done: nothing more to migrate
    assert not [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("migrated")]


@pytest.mark.parametrize("service", ["dispatcher", "pusher"])
def test_the_services_refuse_to_start_on_the_old_topology(
        old_installation: str, service: str) -> None:
    env = {**os.environ, "AMQP_URL": old_installation, "RETRY_DELAYS": json.dumps(LADDER),
           "DELIVERY_LIMIT": str(LIMIT), "LOG_FORMAT": "json"}
    result = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 78, result.stderr
    [line] = result.stdout.splitlines()
    logged = json.loads(line)
    assert (logged["event"], logged["level"]) == ("cannot start", "error")
    assert "is not the one this version declares" in logged["error"]
    assert logged["error"].endswith("run `bss-sync topology declare` to migrate the queues "
                                    "(it moves their messages into queues with the expected "
                                    "arguments; stop the services first)")


def test_nothing_is_migrated_while_a_service_consumes(
        old_installation: str, cli_env: None, management: ManagementClient,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = old_installation
    pusher = WorkQueue("pusher", LADDER)
    before = {q["name"]: q["arguments"] for q in _management(url, management).queues()}
    with Connection(url) as conn:
        channel = conn.channel()
        channel.basic_consume(pusher.name, callback=lambda message: None)
        assert main(["topology", "declare"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == ("bss-sync: queues must be migrated but the services still consume "
                    f"({pusher.name} has 1 consumers): stop every dispatcher, pusher and "
                    "puller (older versions included), then run `bss-sync topology declare` "
                    "again")
    after = {q["name"]: q["arguments"] for q in _management(url, management).queues()}
    # no queue replaced or changed; the queues new in this version (the parked ones,
    # which the old installation lacks) are declared, empty, as any missing queue is
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) <= {"pusher.parked", "puller.parked"}


def test_an_interrupted_migration_blocks_the_services_until_the_next_run_ends_it(
        empty_vhost: str, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Interrupted after the new queue was declared: its messages wait in the holding
    queue, which nothing consumes."""
    url = empty_vhost
    declare_topology(url, LADDER, LIMIT)
    pusher = WorkQueue("pusher", LADDER)
    holding = holding_queue(pusher.name)
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        Queue(holding, durable=True, queue_arguments={"x-queue-type": "quorum"})(
            conn.default_channel).declare()
        producer = conn.Producer()
        for n in range(PER_QUEUE):
            producer.publish({"n": n}, routing_key=holding, message_id=f"held-{n}",
                             delivery_mode=2)

    with pytest.raises(TopologyConflict) as refused:
        declare_topology(url, LADDER, LIMIT)
    assert str(refused.value).endswith(
        f"'{holding}' still hold messages moved out of their queues; run "
        "`bss-sync topology declare` to finish it")

    assert main(["topology", "declare"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"migrated queue {pusher.name}: {PER_QUEUE} messages moved (finished an interrupted "
        f"migration: from {holding})")
    assert [m["id"] for m in _contents(url, pusher.name)] == [
        f"held-{n}" for n in range(PER_QUEUE)]
    declare_topology(url, LADDER, LIMIT)  # the services may start again


def test_an_exchange_that_differs_is_refused_not_replaced(
        empty_vhost: str, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    with Connection(empty_vhost) as conn:
        Exchange("sync.push", type="direct", durable=True)(conn.channel()).declare()
    assert main(["topology", "declare"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("bss-sync: exchange 'sync.push': inequivalent arg 'type'")
    assert line.endswith("delete or rename that exchange, then run `bss-sync topology "
                         "declare` again")
