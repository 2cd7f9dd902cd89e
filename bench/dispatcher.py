"""The dispatcher's cost per event, with and without looking every event up; asserts nothing.

    .venv/bin/python bench/dispatcher.py [--events 4000] [--rounds 3]

A BSS publishes at least once, so the dispatcher looks every event up in the audit
log before fanning it out (docs/architecture.md §5). This measures what that costs,
with the real dispatcher (its handler, codec, consumer runtime and audit writer) in
this process, on events already queued in ``dispatcher.events``, each fanned out to
one instance. Three ways, interleaved round by round so that a noisy neighbour hits
them alike (the machine may be shared; CPU time per event is the figure to compare):

- ``suspects only``: only suspect deliveries are looked up (redelivered, retry
  copies, twins) — the dispatcher before it looked every event up;
- ``every event, batched``: every event looked up, the look-ups of a turn of the
  event loop in one query (``shared.audit.settled``) — the dispatcher today;
- ``every event, one query each``: the same with one query per event, for context.

Prints, per way, the medians of CPU ms per event (this process: the dispatcher
alone), events/s, and the statements sent to PostgreSQL per event (look-ups and
audit ``COPY`` batches, counted exactly). Makes its own vhost and database, removes
both at the end. Infrastructure: ``AMQP_URL`` and ``DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.dispatcher.events import EVENT_CODEC, EventHandler  # noqa: E402
from shared.audit.record import AuditRecord, Outcome  # noqa: E402
from shared.audit.writer import AuditWriter, settled_outcome  # noqa: E402
from shared.logging import configure_logging  # noqa: E402
from shared.messaging.connection import open_connection  # noqa: E402
from shared.messaging.consumer import Consumer, ConsumerConfig  # noqa: E402
from shared.messaging.live_publisher import LivePublisher  # noqa: E402
from shared.messaging.management import AmqpUrl, ManagementClient  # noqa: E402
from shared.messaging.publisher import OutgoingMessage, Publisher  # noqa: E402
from shared.messaging.runner import run_loop, tune_gc  # noqa: E402
from shared.messaging.topology import (  # noqa: E402
    DISPATCHER,
    EVENTS_EXCHANGE,
    PUSHER,
    WorkQueue,
    declare_topology,
)
from shared.settings import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, Settings  # noqa: E402
from shared.storage.db import Database, quote_ident, url_with_database  # noqa: E402
from shared.storage.instances import InstanceStore  # noqa: E402
from shared.storage.migrate import upgrade  # noqa: E402
from shared.storage.organizations import OrganizationStore  # noqa: E402

QUEUE = WorkQueue(DISPATCHER, (30.0, 120.0))
ORG = "bench"
WAYS = ("suspects only", "every event, batched", "every event, one query each")


class OneQueryEach:
    """The audit writer, its look-ups sent one query per call (the way it used to be)."""

    def __init__(self, writer: AuditWriter) -> None:
        self.writer = writer
        self.lookups = 0

    def submit(self, record: AuditRecord, done: Callable[[BaseException | None], None]) -> None:
        self.writer.submit(record, done)

    async def write(self, record: AuditRecord) -> None:
        await self.writer.write(record)

    async def settled_outcome(self, message_id: str, attempt: int) -> Outcome | None:
        self.lookups += 1
        return await settled_outcome(self.writer.db, message_id, attempt)

    async def final_outcome(self, message_id: str) -> Outcome | None:
        return await self.writer.final_outcome(message_id)


def events(count: int) -> list[OutgoingMessage]:
    now = datetime.now(UTC).isoformat()
    out = []
    for i in range(count):
        event_id = str(uuid.uuid4())
        body = {"id": event_id, "entity": "account", "event": "updated", "organizationId": ORG,
                "recordId": f"acc-{i}", "occurredAt": now}
        out.append(OutgoingMessage(EVENTS_EXCHANGE, "account.updated",
                                   json.dumps(body).encode(), message_id=event_id))
    return out


async def fill(url: str, count: int) -> None:
    conn = await open_connection(url, "bss-sync bench-bss")
    try:
        await (await Publisher.open(conn)).publish_many(events(count))
    finally:
        await conn.close()


async def dispatch(url: str, db: Database, count: int, way: str) -> dict[str, float]:
    """Dispatch ``count`` queued events one ``way``; CPU ms and statements per event."""
    writer = AuditWriter(db)
    await writer.start()
    sink: Any = OneQueryEach(writer) if way == WAYS[2] else writer
    publisher = LivePublisher()
    handler = EventHandler(InstanceStore(db), OrganizationStore(db), publisher)
    consumer = Consumer(QUEUE, EVENT_CODEC, handler, sink,
                        ConsumerConfig(url, always_deduplicate=way != WAYS[0]),
                        publisher=publisher)
    cpu, started = time.process_time(), time.perf_counter()
    task = asyncio.create_task(consumer.run())
    while consumer.processor.counts["ack"] < count:
        await asyncio.sleep(0.005)
        if task.done():
            task.result()
    cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
    consumer.stop()
    await task
    await writer.close()
    lookups = sink.lookups if isinstance(sink, OneQueryEach) else writer.lookups.queries
    return {"cpu": cpu / count * 1000, "rate": count / elapsed,
            "statements": (lookups + writer.batches_written) / count}


def apply_installation(database_url: str, amqp_url: str) -> None:
    """One organization with one instance that pushes accounts (its server is never called)."""
    installation = {
        "connectors": [{"id": "acme", "spec": str(ROOT / "connectors" / "acme-crm.json")}],
        "organizations": [{"id": ORG, "name": "Bench", "instances": [{
            "id": "bench-crm", "name": "Bench CRM", "connector": "acme",
            "server": "http://127.0.0.1:9", "credentials": {"apiKey": "env:BENCH_API_KEY"},
            "permissions": {"account": {"push": ["create", "update"]}}}]}],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(installation, file)
        file.flush()
        subprocess.run([sys.executable, "-m", "shared.cli.main", "apply", file.name], check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT,
                       env={**os.environ, "DATABASE_URL": database_url, "AMQP_URL": amqp_url,
                            "BENCH_API_KEY": "bench-key"})


async def run(args: argparse.Namespace, url: str, db_url: str, vhost: ManagementClient) -> None:
    declare_topology(url, QUEUE.retry_delays, 20)
    async with Database(db_url, max_size=4) as db:
        await upgrade(db)
        apply_installation(db_url, url)
        results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                await fill(url, args.events)
                results[way].append(await dispatch(url, db, args.events, way))
                vhost.purge_queue(PUSHER)  # the push messages: nobody consumes them here
        print(f"{args.events:,} events a round, {args.rounds} rounds; medians "
              "(every round's CPU in brackets)")
        print(f"{'look-ups':<30} {'ms CPU/event':>13} {'events/s':>9} {'statements/event':>17}")
        for way, rounds in results.items():
            cpu = [r["cpu"] for r in rounds]
            print(f"{way:<30} {statistics.median(cpu):>13.3f} "
                  f"{statistics.median(r['rate'] for r in rounds):>9,.0f} "
                  f"{statistics.median(r['statements'] for r in rounds):>17.3f}"
                  f"   [{', '.join(f'{c:.3f}' for c in cpu)}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=4000, help="events per round and way")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    base_amqp = os.environ.get("AMQP_URL", DEFAULT_AMQP_URL)
    base_db = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"bss-sync-bench-{os.getpid()}-{secrets.token_hex(2)}"
    dbname = name.replace("-", "_")
    management = ManagementClient.for_amqp_url(base_amqp)
    management.create_vhost(name)
    with psycopg.connect(base_db, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {quote_ident(dbname)}")
    try:
        settings = Settings()
        configure_logging("WARNING", "auto", service=DISPATCHER)
        tune_gc(settings)  # as in the services
        run_loop(settings, run(args, AmqpUrl.parse(base_amqp).with_vhost(name),
                               url_with_database(base_db, dbname), management.for_vhost(name)))
    finally:
        management.delete_vhost(name)
        management.close()
        with psycopg.connect(base_db, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(dbname)} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
