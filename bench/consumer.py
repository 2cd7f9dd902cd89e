"""Consumer and publisher throughput on this machine; prints figures, asserts nothing.

    .venv/bin/python bench/consumer.py --messages 20000

(a) the best raw pika consumer we can write: the asyncio adapter on the services'
    event loop, the runtime's prefetch, and acks batched as the runtime batches them
    (one ``basic.ack(multiple=True)`` per turn of the event loop) — pika and the
    broker, nothing else; (a') pika's BlockingConnection acking each message, the
    textbook consumer, for context;
(b) our runtime, no-op handler, one audit row per message committed to PostgreSQL;
(c) our runtime, a handler awaiting 50 ms of simulated I/O: it prints the prefetch
    and concurrency the runtime ran with (read from it, not from the options) and its
    share of the limit they set (concurrency / 50 ms: no more handlers can wait at once);
(d) publishing 100,000 messages with publisher confirms.

Every consumer runs with the same prefetch (``--prefetch``; default: the runtime's
own for ``--concurrency``, 4 x 64 = 256) in one process set up as the services set
themselves up (``EVENT_LOOP``: uvloop unless set to asyncio; ``GC_THRESHOLD``), so
(b)/(a) is the runtime's own cost (target: at least 50 %). Each figure says what it
times. The benchmark makes its own vhost and database, and removes both at the end.
Infrastructure: ``AMQP_URL`` and ``DATABASE_URL`` (defaults: the local services).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
#: (c)'s handler: simulated I/O of 50 ms.
HANDLER_SECONDS = 0.05


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
    """(a): the best raw pika consumer: acks batched once per turn of the event loop
    (``basic.ack(multiple=True)`` up to the newest tag), as the runtime batches them;
    msgs/s from connecting to the last ack handed to pika."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    opened: asyncio.Future[AsyncioConnection] = loop.create_future()
    conn = AsyncioConnection(pika.URLParameters(url), on_open_callback=opened.set_result,
                             on_open_error_callback=lambda _c, e: opened.set_exception(e))
    await opened
    channel_ready: asyncio.Future[Any] = loop.create_future()
    conn.channel(on_open_callback=channel_ready.set_result)
    channel = await channel_ready
    done: asyncio.Future[None] = loop.create_future()
    seen, newest, scheduled = 0, 0, False

    def flush() -> None:
        nonlocal scheduled
        scheduled = False
        if not channel.is_open:
            return  # closed after the last message: the broker requeues the rest
        channel.basic_ack(newest, multiple=True)
        if seen >= count and not done.done():
            done.set_result(None)

    def on_message(_ch: object, method: Any, _props: object, _body: bytes) -> None:
        nonlocal seen, newest, scheduled
        seen += 1
        newest = method.delivery_tag
        if not scheduled:
            scheduled = True
            loop.call_soon(flush)

    channel.basic_qos(prefetch_count=prefetch)
    channel.basic_consume(QUEUE.name, on_message)
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


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeRun:
    """One run of our consumer: its rate, and the flow it ran with (read from it)."""

    rate: float
    prefetch: int
    concurrency: int


async def runtime_consume(url: str, db: Database, count: int, handler: Callable[..., Awaitable],
                          batch: int = DEFAULT_BATCH_SIZE, **config: int) -> RuntimeRun:
    """(b)/(c): our consumer with ``handler``, audit rows to PostgreSQL; msgs/s from
    starting the consumer to the last message acked (each after its audit row
    committed)."""
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
    # what the runtime logs as it starts consuming ("consuming", prefetch=, concurrency=)
    return RuntimeRun(count / elapsed, consumer.config.window, consumer.processor.concurrency)


async def noop(_message: InboundMessage[SyncMessage]) -> Outcome:
    return Outcome.UNCHANGED


async def fifty_ms(_message: InboundMessage[SyncMessage]) -> Outcome:
    await asyncio.sleep(HANDLER_SECONDS)
    return Outcome.UPDATED


async def run(args: argparse.Namespace, url: str, db_url: str) -> None:
    declare_topology(url, QUEUE.retry_delays, 20)
    prefetch = ConsumerConfig(url, concurrency=args.concurrency, prefetch=args.prefetch).window
    async with Database(db_url, max_size=4) as db:
        await upgrade(db)
        print(f"messages: {args.messages}, prefetch: {prefetch} (every consumer), "
              f"concurrency: {args.concurrency}, audit batch: {args.audit_batch}, "
              f"rounds of (a)+(b): {args.rounds}")
        raws, ours = [], []
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits both alike
            await fill(url, args.messages)
            raws.append(await raw_consume(url, args.messages, prefetch))
            await fill(url, args.messages)
            ours.append((await runtime_consume(url, db, args.messages, noop, args.audit_batch,
                                               prefetch=prefetch,
                                               concurrency=args.concurrency)).rate)
        rows = await db.fetchval("SELECT count(*) FROM audit_log")
        raw, own = statistics.median(raws), statistics.median(ours)
        print(f"(a) raw pika, batched acks         {raw:10,.0f} msg/s   connect → last ack sent "
              f"(median of {', '.join(f'{r:,.0f}' for r in raws)})")
        print(f"(b) runtime, no-op + audit rows    {own:10,.0f} msg/s   start → last ack, each "
              f"after its audit row committed (median of {', '.join(f'{r:,.0f}' for r in ours)}"
              f"; {rows:,} audit rows)")
        print(f"    (b)/(a) = {own / raw:.0%} of the best raw consumer (target: at least 50 %)")
        await fill(url, args.messages)
        textbook = await asyncio.to_thread(blocking_consume, url, args.messages, prefetch)
        print(f"(a') pika BlockingConnection loop  {textbook:10,.0f} msg/s   connect → last ack "
              f"(context: the textbook consumer, an ack each; (b)/(a') = {own / textbook:.0%})")
        slow = max(args.messages // 4, 1000)
        await fill(url, slow)
        io = await runtime_consume(url, db, slow, fifty_ms, prefetch=prefetch,
                                   concurrency=args.concurrency)
        limit = io.concurrency / HANDLER_SECONDS
        print(f"(c) runtime, 50 ms handler         {io.rate:10,.0f} msg/s   start → last ack "
              f"({slow:,} messages; ran with prefetch {io.prefetch}, concurrency "
              f"{io.concurrency}: {io.rate / limit:.0%} of their limit, "
              f"{io.concurrency} / {HANDLER_SECONDS * 1000:.0f} ms = {limit:,.0f} msg/s)")
        published = await fill(url, args.publish)
        print(f"(d) publish with confirms          {published:10,.0f} msg/s   first publish → "
              f"last confirm ({args.publish:,} messages)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="for (a) and (b)")
    parser.add_argument("--publish", type=int, default=100_000, help="for (d)")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="every consumer's (default: the runtime's, 4 x concurrency)")
    parser.add_argument("--concurrency", type=int, default=64, help="handlers in flight")
    parser.add_argument("--audit-batch", type=int, default=DEFAULT_BATCH_SIZE,
                        help="audit writer batch size for (b)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs of (a) and (b)")
    args = parser.parse_args()
    base_amqp = os.environ.get("AMQP_URL", DEFAULT_AMQP_URL)
    base_db = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"bss-sync-bench-{os.getpid()}-{secrets.token_hex(2)}"
    dbname = name.replace("-", "_")
    management = ManagementClient.for_amqp_url(base_amqp, os.environ.get("MANAGEMENT_URL"))
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
