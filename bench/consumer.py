"""Consumer and publisher throughput on this machine; prints figures, asserts nothing.

    .venv/bin/python bench/consumer.py --messages 20000

(a) a raw pika consume-and-ack loop on the asyncio adapter (the ceiling: pika and
    the broker, nothing else); (a') the same with pika's BlockingConnection, the
    textbook consumer, for context;
(b) our runtime, no-op handler, one audit row per message committed to PostgreSQL;
(c) our runtime, a handler awaiting 50 ms of simulated I/O (default concurrency
    and prefetch: 64 handlers in flight);
(d) publishing 100,000 messages with publisher confirms.

(a) and (b) use the same prefetch, and run in one process set up as the services
set themselves up (``EVENT_LOOP``: uvloop unless set to asyncio; ``GC_THRESHOLD``),
so (b)/(a) is the runtime's own cost. The benchmark makes its own vhost and
database, and removes both at the end.
Infrastructure: ``AMQP_URL`` and ``DATABASE_URL`` (defaults: the local services).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pika
import psycopg
from pika.adapters.asyncio_connection import AsyncioConnection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.audit.record import Outcome
from shared.audit.writer import DEFAULT_BATCH_SIZE, AuditWriter
from shared.messaging.codec import SYNC_CODEC, InboundMessage
from shared.messaging.connection import open_connection
from shared.messaging.consumer import Consumer, ConsumerConfig
from shared.messaging.envelope import SyncMessage, encode
from shared.messaging.management import AmqpUrl, ManagementClient
from shared.messaging.publisher import OutgoingMessage, Publisher
from shared.messaging.runner import run_loop, tune_gc
from shared.messaging.topology import (
    PUSH_EXCHANGE,
    PUSHER,
    WorkQueue,
    declare_topology,
    sync_routing_key,
)
from shared.settings import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, Settings
from shared.storage.db import Database, quote_ident, url_with_database
from shared.storage.migrate import upgrade

QUEUE = WorkQueue(PUSHER, (30.0, 120.0))


def messages(count: int) -> list[OutgoingMessage]:
    created = datetime.now(UTC).isoformat()
    out = []
    for i in range(count):
        m = SyncMessage(id=str(uuid.uuid4()), direction="push", org_id="org1",
                        instance_id="inst1", entity="account", action="update",
                        trigger="event", attempt=0, created_at=created, record_id=f"r{i}")
        out.append(OutgoingMessage(PUSH_EXCHANGE, sync_routing_key("account", "update", "org1",
                                                                   "inst1"), encode(m), m.id))
    return out


async def fill(url: str, count: int) -> float:
    """Publish ``count`` messages to the pusher queue; return msgs/s."""
    batch = messages(count)
    conn = await open_connection(url, "bss-sync bench-publisher")
    try:
        publisher = await Publisher.open(conn)
        started = time.perf_counter()
        await publisher.publish_many(batch)
        return count / (time.perf_counter() - started)
    finally:
        await conn.close()


async def raw_consume(url: str, count: int, prefetch: int) -> float:
    """(a): the plainest pika consumer: ack every message as it arrives."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    opened: asyncio.Future[AsyncioConnection] = loop.create_future()
    conn = AsyncioConnection(pika.URLParameters(url), on_open_callback=opened.set_result,
                             on_open_error_callback=lambda _c, e: opened.set_exception(e))
    await opened
    channel_ready: asyncio.Future[object] = loop.create_future()
    conn.channel(on_open_callback=channel_ready.set_result)
    channel = await channel_ready
    done: asyncio.Future[None] = loop.create_future()
    seen = 0

    def on_message(ch: object, method: object, _props: object, _body: bytes) -> None:
        nonlocal seen
        ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
        seen += 1
        if seen == count:
            done.set_result(None)

    channel.basic_qos(prefetch_count=prefetch)  # type: ignore[attr-defined]
    channel.basic_consume(QUEUE.name, on_message)  # type: ignore[attr-defined]
    await done
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def blocking_consume(url: str, count: int, prefetch: int) -> float:
    """(a'): the textbook pika consumer (BlockingConnection), for context only."""
    started = time.perf_counter()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=prefetch)
    for seen, (method, _props, _body) in enumerate(channel.consume(QUEUE.name), 1):
        channel.basic_ack(method.delivery_tag)
        if seen == count:
            break
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


async def runtime_consume(url: str, db: Database, count: int, handler: Callable[..., Awaitable],
                          batch: int = DEFAULT_BATCH_SIZE, **config: int) -> float:
    """(b)/(c): our consumer with ``handler``, audit rows to PostgreSQL; msgs/s."""
    writer = AuditWriter(db, batch)
    await writer.start()
    consumer = Consumer(QUEUE, SYNC_CODEC, handler, writer, ConsumerConfig(url, **config))
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    while consumer.processor.counts["ack"] < count:
        await asyncio.sleep(0.005)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - started
    consumer.stop()
    await task
    await writer.close()
    return count / elapsed


async def noop(_message: InboundMessage[SyncMessage]) -> Outcome:
    return Outcome.UNCHANGED


async def fifty_ms(_message: InboundMessage[SyncMessage]) -> Outcome:
    await asyncio.sleep(0.05)
    return Outcome.UPDATED


async def run(args: argparse.Namespace, url: str, db_url: str) -> None:
    declare_topology(url, QUEUE.retry_delays, 20)
    async with Database(db_url, max_size=4) as db:
        await upgrade(db)
        print(f"messages: {args.messages}, prefetch: {args.prefetch}, "
              f"concurrency: {args.concurrency}, audit batch: {args.audit_batch}, "
              f"rounds of (a)+(b): {args.rounds}")
        raws, ours = [], []
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits both alike
            await fill(url, args.messages)
            raws.append(await raw_consume(url, args.messages, args.prefetch))
            await fill(url, args.messages)
            ours.append(await runtime_consume(url, db, args.messages, noop,
                                              args.audit_batch, prefetch=args.prefetch,
                                              concurrency=args.concurrency))
        rows = await db.fetchval("SELECT count(*) FROM audit_log")
        raw, own = statistics.median(raws), statistics.median(ours)
        print(f"(a) raw pika consume+ack           {raw:10,.0f} msg/s   (median of "
              f"{', '.join(f'{r:,.0f}' for r in raws)})")
        print(f"(b) runtime, no-op + audit rows    {own:10,.0f} msg/s   (median of "
              f"{', '.join(f'{r:,.0f}' for r in ours)}; {rows:,} audit rows)")
        print(f"    (b)/(a) = {own / raw:.0%}")
        await fill(url, args.messages)
        textbook = await asyncio.to_thread(blocking_consume, url, args.messages, args.prefetch)
        print(f"(a') pika BlockingConnection loop  {textbook:10,.0f} msg/s   (context: the "
              f"textbook consumer; (b)/(a') = {own / textbook:.0%})")
        slow = max(args.messages // 4, 1000)
        await fill(url, slow)
        io = await runtime_consume(url, db, slow, fifty_ms, concurrency=args.concurrency)
        print(f"(c) runtime, 50 ms handler         {io:10,.0f} msg/s   ({slow:,} messages, "
              f"prefetch = concurrency = {args.concurrency}, the defaults)")
        published = await fill(url, args.publish)
        print(f"(d) publish with confirms          {published:10,.0f} msg/s   "
              f"({args.publish:,} messages)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="for (a) and (b)")
    parser.add_argument("--publish", type=int, default=100_000, help="for (d)")
    parser.add_argument("--prefetch", type=int, default=1000, help="for (a) and (b)")
    parser.add_argument("--concurrency", type=int, default=64, help="handlers in flight")
    parser.add_argument("--audit-batch", type=int, default=DEFAULT_BATCH_SIZE,
                        help="audit writer batch size for (b)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs of (a) and (b)")
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
        # the services' event loop (EVENT_LOOP, uvloop by default), for (a) and (b) alike
        settings = Settings()
        tune_gc(settings)
        print(f"event loop: {settings.event_loop} (EVENT_LOOP), garbage collector threshold "
              f"{settings.gc_threshold or 'default'} (GC_THRESHOLD), as in the services")
        run_loop(settings, run(args, AmqpUrl.parse(base_amqp).with_vhost(name),
                               url_with_database(base_db, dbname)))
    finally:
        management.delete_vhost(name)
        management.close()
        with psycopg.connect(base_db, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(dbname)} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
