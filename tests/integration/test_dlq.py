"""Dead-letter tooling against a real RabbitMQ, the real audit table and the real consumer:
``bss-sync dlq list/show/replay/redeliver/purge`` run as processes, the consumer runtime
in the test's loop or as ``tests/integration/consumer_app.py``.

Dead letters are made two ways: by the runtime itself (a handler that refuses a record
for good), and — when a test needs many, or old ones — published into ``pusher.dead``
with the headers the runtime writes (``shared.messaging.settle.failure_headers``) and a
``dead`` audit row, as the runtime leaves them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from kombu import Connection

from shared.audit.record import Outcome
from shared.errors import RemoteRejected
from shared.messaging.codec import SYNC_CODEC, InboundMessage
from shared.messaging.consumer import Consumer, ConsumerConfig
from shared.messaging.dead_letters import (
    H_REDELIVERED_FROM,
    DeadLetter,
    moved_copy,
    redelivered_id,
)
from shared.messaging.envelope import SyncMessage, decode_sync_message, encode
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.redelivery import AUDIT_SERVICE, REDELIVERY_LOCK_CLASS
from shared.messaging.settle import ErrorInfo, MessageFacts, failure_headers
from shared.messaging.tooling import publish_blocking
from shared.messaging.topology import DEAD_EXCHANGE, PUSH_EXCHANGE, PUSHER, sync_routing_key
from shared.paths import project_root
from tests.fixtures.amqp import TEST_DELIVERY_LIMIT, TEST_RETRY_DELAYS, TestTopology
from tests.fixtures.waiting import eventually
from tests.integration.test_messaging import (
    PUSH,
    final_counts,
    outgoing,
    publish,
    running,
    sync_message,
)

pytestmark = pytest.mark.integration

DEAD, PARKED = PUSH.dead_queue, PUSH.parked_queue


# ---------------------------------------------------------------------------- helpers


def dead_letter(message: SyncMessage, *, error_class: str = "RemoteRejected",
                failed_at: datetime | None = None) -> OutgoingMessage:
    """``message`` as the runtime dead-letters it after a permanent failure of attempt 0."""
    key = sync_routing_key(message.entity, message.action, message.org_id, message.instance_id)
    facts = MessageFacts(message.context(), PUSH_EXCHANGE, key)
    error = ErrorInfo(error_class, "POST /people answered 422: email is not deliverable", 422,
                      transient=False, bug=False)
    headers = failure_headers(error, facts, PUSH, failed_at or datetime.now(UTC))
    return OutgoingMessage(DEAD_EXCHANGE, PUSH.dead_routing_key(key), encode(message),
                           message.id, headers, message.correlation_id)


async def audit_dead(db: Any, messages: list[SyncMessage]) -> None:
    """The ``dead`` rows the runtime writes with those dead letters."""
    async with db.transaction() as conn:
        for m in messages:
            await conn.execute(
                "INSERT INTO audit_log (at, service, org_id, instance_id, entity, direction,"
                " record_id, outcome, attempt, message_id) VALUES (now(), 'pusher', %s, %s, %s,"
                " 'push', %s, 'dead', %s, %s)",
                (m.org_id, m.instance_id, m.entity, m.record_id, m.attempt, m.id))


def cli_env(topology: TestTopology, database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AMQP_URL=topology.url, DATABASE_URL=database_url, DB_SCHEMA="public",
               RETRY_DELAYS=str(list(TEST_RETRY_DELAYS)),
               DELIVERY_LIMIT=str(TEST_DELIVERY_LIMIT), LOG_LEVEL="WARNING",
               PYTHONPATH=str(project_root()))
    env.update(extra)
    return env


def bss_sync(env: dict[str, str], *args: str, stdin: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """``bss-sync ARGS`` as a process (stdin a pipe: not a terminal)."""
    return subprocess.run([sys.executable, "-m", "shared.cli.main", *args], env=env,
                          cwd=project_root(), capture_output=True, text=True,
                          input=stdin or "", timeout=120)


async def bss_sync_async(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli.main", *args, env=env, cwd=project_root(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


def queue_ids(topology: TestTopology, queue: str, header: str | None = None) -> list[str]:
    """The message ids (or a header) of every message of ``queue``, left in it."""
    found = []
    for m in topology.peek(queue, limit=5000):
        found.append(str(m.headers.get(header)) if header else str(m.message_id))
    return found


async def dlq_rows(db: Any) -> list[dict[str, Any]]:
    return await db.fetch("SELECT message_id, outcome, record_id, details FROM audit_log"
                          " WHERE service = %s ORDER BY at, id", (AUDIT_SERVICE,))


# ---------------------------------------------------------------------------- replay


async def test_a_replayed_dead_letter_is_new_work_for_the_consumer_and_a_twin_is_absorbed(
        topology: TestTopology, db: Any, audit_writer: Any, database_url: str) -> None:
    """Two records die for good in the real runtime; `dlq replay ID` moves one back: the
    consumer handles it (the dead original's final row does not settle the copy, which
    has an id of its own), its row says trigger manual; the other stays dead. A second
    copy of the replayed one (a replay that died between the copy's confirm and the
    dead letter's ack) is acked as a duplicate, not handled again."""
    broken = {"r1", "r2"}
    handled: list[str] = []

    async def handler(message: InboundMessage[SyncMessage]) -> Outcome:
        record = message.payload.record_id or ""
        if record in broken:
            raise RemoteRejected("POST /people answered 422: email is not deliverable",
                                 http_status=422)
        handled.append(message.payload.id)
        return Outcome.UPDATED

    messages = [sync_message(r) for r in ("r1", "r2", "r3")]
    consumer = Consumer(PUSH, SYNC_CODEC, handler, audit_writer, ConsumerConfig(topology.url))
    async with running(consumer):
        await publish(topology.url, [outgoing(m) for m in messages])
        await eventually(lambda: topology.ready(DEAD) == 2, what="two dead letters")
        broken.clear()  # the data is fixed

        env = cli_env(topology, database_url)
        code, out, err = await bss_sync_async(env, "dlq", "replay", "--service", PUSHER,
                                              messages[0].id)
        assert code == 0, err
        assert "pusher.dead: 2 of 2 read, 1 moved, 1 kept" in out
        copy_id = redelivered_id(messages[0].id, 1)
        await eventually(lambda: copy_id in handled, what="the replayed copy handled")

        # the same copy again: the consumer must absorb it
        [letter_left] = topology.peek(DEAD)
        assert letter_left.message_id == messages[1].id
        twin = moved_copy(DeadLetter.read(PUSHER, SimpleNamespace(
            headers={}, message_id=messages[0].id, correlation_id=None, timestamp=None),
            encode(messages[0])), "manual")
        publish_blocking(topology.url, [twin])
        await eventually(lambda: consumer.processor.counts["duplicate"] >= 1,
                         what="the twin acked as a duplicate")
        await consumer.join()

    assert handled == [messages[2].id, copy_id]  # r3 first time; r1's copy once
    rows = await db.fetch("SELECT message_id, outcome, details FROM audit_log"
                          " WHERE service = 'pusher' AND record_id = 'r1' ORDER BY at, id")
    assert [(r["message_id"], r["outcome"]) for r in rows] == [
        (messages[0].id, "dead"), (copy_id, "updated")]
    assert rows[1]["details"] == {"trigger": "manual", "redeliveries": 1}
    [moved] = await dlq_rows(db)
    assert (moved["message_id"], moved["outcome"], moved["record_id"]) == (
        messages[0].id, "retrying", "r1")
    assert moved["details"]["operation"] == "replayed"
    assert moved["details"]["redelivered_as"] == copy_id
    assert topology.ready(DEAD) == 1 and topology.ready(PUSH.name) == 0


# ---------------------------------------------------------------------------- purge


async def test_purge_removes_only_what_matches_and_never_what_another_reader_holds(
        topology: TestTopology, db: Any, database_url: str) -> None:
    contacts = [sync_message(f"c{i}", entity="contact") for i in range(3)]
    accounts = [sync_message(f"a{i}") for i in range(3)]
    publish_blocking(topology.url, [dead_letter(m) for m in contacts + accounts])
    topology.wait_ready(DEAD, 6)
    env = cli_env(topology, database_url)

    # not a terminal and no --yes: refused, nothing removed
    refused = bss_sync(env, "dlq", "purge", "--filter", "entity=contact")
    assert refused.returncode == 1
    assert "run it in a terminal or add --yes" in refused.stderr
    assert topology.ready(DEAD) == 6

    # another reader holds the first contact, unacked, while the purge runs
    with Connection(topology.url) as conn:
        channel = conn.channel()
        held = channel.basic_get(DEAD, no_ack=False)
        assert held is not None and held.properties["message_id"] == contacts[0].id
        done = await bss_sync_async(env, "dlq", "purge", "--filter", "entity=contact",
                                    "--yes")
        assert done[0] == 0, done[2]
        assert "pusher.dead: 5 of 5 read, 2 purged, 3 kept" in done[1]
        channel.close()  # the reader gives its message back

    topology.wait_ready(DEAD, 4)
    left = sorted(queue_ids(topology, DEAD))
    assert left == sorted([contacts[0].id] + [m.id for m in accounts])
    rows = await dlq_rows(db)
    assert sorted(r["message_id"] for r in rows) == sorted(m.id for m in contacts[1:])
    assert {(r["outcome"], r["details"]["operation"]) for r in rows} == {("dead", "purged")}


def purge_in_a_terminal(env: dict[str, str], answer: str, *args: str,
                        ) -> tuple[int, str]:
    """``bss-sync dlq purge ARGS`` with a terminal on stdin, answering ``answer``."""
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "shared.cli.main", "dlq", "purge",
                                 *args], env=env, cwd=project_root(), stdin=terminal,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        os.write(controller, f"{answer}\n".encode())
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    return proc.returncode, out.decode()


def test_purge_asks_first_and_a_no_removes_nothing(topology: TestTopology,
                                                   database_url: str) -> None:
    publish_blocking(topology.url, [dead_letter(sync_message("c1", entity="contact")),
                                    dead_letter(sync_message("a1"))])
    topology.wait_ready(DEAD, 2)
    env = cli_env(topology, database_url)
    code, out = purge_in_a_terminal(env, "n", "--filter", "entity=contact")
    assert code == 1
    assert "Remove 1 dead letter matching entity=contact? [y/N]" in out
    assert "nothing removed" in out
    assert topology.ready(DEAD) == 2
    code, out = purge_in_a_terminal(env, "y", "--filter", "entity=contact")
    assert code == 0, out
    assert "pusher.dead: 2 of 2 read, 1 purged, 1 kept" in out
    topology.wait_ready(DEAD, 1)


# ---------------------------------------------------------------------------- list, show


def test_list_filters_and_show_masks_credentials(topology: TestTopology,
                                                 database_url: str) -> None:
    old = datetime.now(UTC) - timedelta(days=3)
    letters = [
        dead_letter(sync_message("a1", org_id="acme"), failed_at=old),
        dead_letter(sync_message("c1", org_id="acme", entity="contact"),
                    error_class="SchemaViolation"),
        dead_letter(sync_message("a2", org_id="globex", record={
            "name": "Globex", "apiKey": "k-123456789", "website":
            "https://admin:hunter2secret@globex.example/"})),
    ]
    publish_blocking(topology.url, letters)
    topology.wait_ready(DEAD, 3)
    env = cli_env(topology, database_url)

    table = bss_sync(env, "dlq", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["WHEN", "SERVICE", "ID", "ORG", "INSTANCE", "ENTITY", "RECORD",
                                "ERROR", "ATTEMPTS", "REDELIVERIES"]
    assert len(lines) == 4 and table.stderr == "3 dead letters\n"
    assert "RemoteRejected: POST /people answered 422" in lines[1]

    def listed(*flags: str) -> list[str]:
        done = bss_sync(env, "dlq", "list", "--json", *flags)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["record"] for line in done.stdout.splitlines()]

    assert listed("--org", "acme") == ["a1", "c1"]
    assert listed("--entity", "contact") == ["c1"]
    assert listed("--error-class", "SchemaViolation") == ["c1"]
    assert listed("--since", "1d") == ["c1", "a2"]
    assert listed("--service", "puller") == []
    [row] = [json.loads(x) for x in bss_sync(env, "dlq", "list", "--json", "--org", "globex")
             .stdout.splitlines()]
    assert (row["attempts"], row["redeliveries"], row["error_class"]) == (
        1, 0, "RemoteRejected")

    shown = bss_sync(env, "dlq", "show", letters[2].message_id or "")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["body"]["record"]["apiKey"] == "***"
    assert "hunter2secret" not in shown.stdout and "k-123456789" not in shown.stdout
    assert doc["headers"]["x-record-id"] == "a2" and doc["headers"]["x-attempts"] == 1
    missing = bss_sync(env, "dlq", "show", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no dead letter" in missing.stderr
    assert topology.ready(DEAD) == 3  # listed and shown, none taken


# ---------------------------------------------------------------------------- redeliver


async def test_redelivery_parks_letters_older_than_the_maximum_age(
        topology: TestTopology, db: Any, database_url: str) -> None:
    old, new = sync_message("old"), sync_message("new")
    publish_blocking(topology.url, [
        dead_letter(old, failed_at=datetime.now(UTC) - timedelta(days=40)),
        dead_letter(new)])
    topology.wait_ready(DEAD, 2)
    code, out, err = await bss_sync_async(cli_env(topology, database_url), "dlq",
                                          "redeliver", "--max-age", "30d")
    assert code == 0, err
    assert "pusher.dead: 2 of 2 read, 1 moved, 1 parked" in out
    assert queue_ids(topology, PARKED) == [old.id]
    [back] = topology.peek(PUSH.name)
    assert back.message_id == redelivered_id(new.id, 1)
    assert back.headers[H_REDELIVERED_FROM] == new.id
    body = decode_sync_message(back.body)
    assert (body.trigger, body.redeliveries, body.attempt) == ("redelivery", 1, 0)
    rows = {r["record_id"]: r for r in await dlq_rows(db)}
    assert (rows["old"]["outcome"], rows["old"]["details"]["operation"]) == ("dead", "parked")
    assert (rows["new"]["outcome"], rows["new"]["details"]["operation"]) == ("retrying",
                                                                             "moved")


async def test_one_redelivery_at_a_time_across_processes(
        topology: TestTopology, database_url: str) -> None:
    publish_blocking(topology.url, [dead_letter(sync_message("r1"))])
    topology.wait_ready(DEAD, 1)
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('public:redelivery'))",
                       (REDELIVERY_LOCK_CLASS,))
        code, _out, err = await bss_sync_async(cli_env(topology, database_url), "dlq",
                                               "redeliver")
    assert code == 1
    assert "another process is redelivering" in err
    assert topology.ready(DEAD) == 1 and topology.ready(PUSH.name) == 0


async def test_two_replicas_redelivering_at_once_move_each_letter_once(
        topology: TestTopology, db: Any, database_url: str) -> None:
    messages = [sync_message(f"r{i}") for i in range(500)]
    await publish(topology.url, [dead_letter(m) for m in messages])
    await eventually(lambda: topology.ready(DEAD) == 500, what="500 dead letters")
    env = cli_env(topology, database_url)
    results = await asyncio.gather(*(bss_sync_async(env, "dlq", "redeliver")
                                     for _ in range(2)))
    codes = sorted(code for code, _out, _err in results)
    assert codes in ([0, 0], [0, 1]), results  # 1: the other one held the lock
    for code, _out, err in results:
        assert code == 0 or "another process is redelivering" in err
    await eventually(lambda: topology.ready(PUSH.name) == 500, what="500 copies")
    copies = queue_ids(topology, PUSH.name)
    assert sorted(copies) == sorted(redelivered_id(m.id, 1) for m in messages)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE service = %s",
                             (AUDIT_SERVICE,)) == 500
    assert topology.ready(DEAD) == 0


async def test_redelivery_killed_mid_way_loses_none_and_settles_none_twice(
        topology: TestTopology, db: Any, database_url: str) -> None:
    """1,000 dead letters; `dlq redeliver` SIGKILLed mid-way (audit rows committed one
    by one, so that copies are confirmed well ahead of their letters' acks). After the
    kill every letter is back in the work queue or still dead; a second redelivery
    moves the rest (some a second time, under the same derived id), and the real
    consumer then handles each record exactly once."""
    messages = [sync_message(f"r{i}", attempt=2) for i in range(1000)]
    await publish(topology.url, [dead_letter(m) for m in messages])
    await audit_dead(db, messages)
    await eventually(lambda: topology.ready(DEAD) == 1000, what="1,000 dead letters")
    env = cli_env(topology, database_url, AUDIT_BATCH_SIZE="1")

    first = subprocess.Popen([sys.executable, "-m", "shared.cli.main", "dlq", "redeliver"],
                             env=env, cwd=project_root(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        await eventually(lambda: db.fetchval(
            "SELECT count(*) >= 50 FROM audit_log WHERE service = %s", (AUDIT_SERVICE,)),
            interval=0.01, what="the first letters moved")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()

    originals = {m.id for m in messages}
    await eventually(lambda: topology.ready(DEAD) + topology.ready(PUSH.name) >= 1000,
                     what="every letter back somewhere")
    still_dead = set(queue_ids(topology, DEAD))
    moved = queue_ids(topology, PUSH.name, header=H_REDELIVERED_FROM)
    assert still_dead, "the kill came too late to prove anything"
    assert still_dead | set(moved) == originals, "letters lost"
    assert len(moved) == len(set(moved)), "a letter moved twice in one pass"

    code, out, err = await bss_sync_async(env, "dlq", "redeliver")
    assert code == 0, err
    print(f"after the kill: {len(still_dead)} still dead, {len(moved)} moved; second pass: "
          f"{out.strip()}")
    assert topology.ready(DEAD) == 0
    copies = queue_ids(topology, PUSH.name)
    assert set(copies) == {redelivered_id(i, 1) for i in originals}
    twins = len(copies) - 1000  # moved before the kill and again after it

    consumer = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.consumer_app", "--sleep-ms", "1",
         "--burst-ms", "500"], env=env, cwd=project_root(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    out_bytes, _ = consumer.communicate(timeout=120)
    assert consumer.returncode == 0, out_bytes.decode()[-3000:]
    counts = await final_counts(db)
    handled = {k: v for k, v in counts.items() if k not in originals}
    assert set(handled) == {redelivered_id(i, 1) for i in originals}
    assert set(handled.values()) == {1}, f"records handled twice ({twins} twin copies)"
    print(f"{twins} twin copies absorbed by the consumer")
    assert topology.ready(PUSH.name) == 0
