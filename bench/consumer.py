"""Consumer and publisher throughput on this machine; prints figures, asserts nothing.

    .venv/bin/python bench/consumer.py --messages 20000

(a) the best raw pika consumer we can write: the asyncio adapter on the services'
    event loop, the runtime's prefetch, and acks batched as the runtime batches them
    (one ``basic.ack(multiple=True)`` per turn of the event loop) — pika and the
    broker, nothing else; (a') pika's BlockingConnection acking each message, the
    textbook consumer, for context;
(b) our runtime, no-op handler, one audit row per message committed to PostgreSQL;
(b') the same runtime with an audit sink that stores nothing (each row fitted and
    serialised as the writer does, "committed" at the end of the loop's turn), for
    context: what (b) would be without PostgreSQL, so the part of the gap that is the
    audit log's shows beside the part that is the runtime's;
(c) our runtime, a handler awaiting 50 ms of simulated I/O: it prints the prefetch
    and concurrency the runtime ran with (read from it, not from the options) and its
    share of the limit they set (concurrency / 50 ms: no more handlers can wait at once);
(d) publishing 100,000 messages with publisher confirms.

Beside (a), (b) and (b'), the CPU each party spent a message over all rounds: our process
(the event loop's thread, where pika, the runtime and psycopg run), PostgreSQL (the
backends of the benchmark's own database), RabbitMQ (every node on the machine:
machine-wide), and how busy the whole machine was, neighbours included — a machine
near all its CPUs busy makes (b)/(a) the ratio of their CPU costs.

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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pika
import psycopg
from pika.adapters.asyncio_connection import AsyncioConnection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BENCH_APP, TICKS, BackendCpu, Broker
from shared.audit.normalise import to_row
from shared.audit.record import AuditRecord, Outcome
from shared.audit.writer import DEFAULT_BATCH_SIZE, AuditWriter
from shared.ids import new_message_id
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
        m = SyncMessage(id=new_message_id(), direction="push", org_id="org1",
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


@dataclasses.dataclass(slots=True)
class Spent:
    """CPU seconds spent by each party over some runs, and the messages they handled."""

    messages: int = 0
    ours: float = 0.0
    postgres: float = 0.0
    broker: float = 0.0
    machine: float = 0.0
    wall: float = 0.0

    def per_message(self, seconds: float) -> str:
        return f"{seconds / self.messages * 1e6:,.0f} µs" if self.messages else "-"

    def busy(self) -> str:
        """The machine's busy CPUs during the runs, of how many."""
        return f"{self.machine / self.wall:.2f} of {os.cpu_count()}" if self.wall else "-"


class CpuMeter:
    """Who spent the CPU of a run (:class:`Spent`): our event loop's thread, the
    backends of the benchmark's database (``bench/harness.py``'s ``BackendCpu``,
    sampled on a connection of its own, not counted), every RabbitMQ node of the
    machine (``Broker``'s machine-wide reading), the machine's busy time."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(database_url, autocommit=True, application_name=BENCH_APP)
        self.backends = BackendCpu(database_url)
        self.broker = Broker("shared", "consumer")

    def _others(self) -> tuple[float, float, float, float]:
        self.backends.sample(self.conn)
        return (self.backends.total(), self.broker.stats()[0], machine_busy(),
                time.perf_counter())

    async def measure(self, spent: Spent, messages: int, run: Awaitable[Any]) -> Any:
        """Await ``run`` (``messages`` handled) and add what it cost to ``spent``, once
        RabbitMQ has done what the filling of the queue left it to do (its quorum queue
        writes it after confirming: without the wait, the longer run was charged more
        of it). Our thread's time is read inside the others' readings, so the sampling
        is not ours."""
        await self.broker_settled()
        postgres, broker, machine, wall = self._others()
        ours = time.thread_time()
        result = await run
        ours = time.thread_time() - ours
        postgres2, broker2, machine2, wall2 = self._others()
        spent.messages += messages
        spent.ours += ours
        spent.postgres += postgres2 - postgres
        spent.broker += broker2 - broker
        spent.machine += machine2 - machine
        spent.wall += wall2 - wall
        return result

    async def broker_settled(self, timeout: float = 10.0) -> None:
        """Return once RabbitMQ uses less than a tenth of a CPU over 0.2 s (or after
        ``timeout``)."""
        deadline = time.monotonic() + timeout
        before = self.broker.stats()[0]
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now = self.broker.stats()[0]
            if now - before < 0.02:
                return
            before = now

    def close(self) -> None:
        self.conn.close()


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``: all but idle and
    iowait), every process's, neighbours included."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


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
    rate = await consume_until_acked(consumer, count)
    await writer.close()
    # what the runtime logs as it starts consuming ("consuming", prefetch=, concurrency=)
    return RuntimeRun(rate, consumer.config.window, consumer.processor.concurrency)


async def consume_until_acked(consumer: Consumer, count: int) -> float:
    """Run ``consumer`` until it has acked ``count`` messages, then stop it; msgs/s from
    its start to the last ack."""
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    while consumer.processor.counts["ack"] < count:
        await asyncio.sleep(0.005)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - started
    consumer.stop()
    await task
    return count / elapsed


class MemorySink:
    """(b')'s audit sink: stores nothing. Each row is fitted (``to_row``) and serialised
    (orjson) as :class:`~shared.audit.writer.AuditWriter` does, and "committed" at the
    end of the event loop's turn, all the rows of a turn at once — the writer without
    its SQL round trip and PostgreSQL."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._rows: list[Any] = []
        self._done: list[Callable[[BaseException | None], None]] = []

    def submit(self, record: AuditRecord, done: Callable[[BaseException | None], None]) -> None:
        self._rows.append(to_row(record))
        self._done.append(done)
        if len(self._done) == 1:
            self._loop.call_soon(self._commit)

    def _commit(self) -> None:
        orjson.dumps(self._rows)
        done, self._rows, self._done = self._done, [], []
        for callback in done:
            callback(None)

    async def write(self, record: AuditRecord) -> None:
        to_row(record)

    async def settled_outcome(self, _message_id: str, _attempt: int) -> Outcome | None:
        return None  # nothing stored, and no message of the benchmark is redelivered

    async def final_outcome(self, _message_id: str) -> Outcome | None:
        return None


async def memory_consume(url: str, count: int, **config: int) -> float:
    """(b'): our consumer, no-op handler, rows to :class:`MemorySink`; msgs/s from
    starting the consumer to the last message acked (each after its row's "commit")."""
    consumer = Consumer(QUEUE, SYNC_CODEC, noop, MemorySink(), ConsumerConfig(url, **config))
    return await consume_until_acked(consumer, count)


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
              f"rounds of (a)+(b)+(b'): {args.rounds}")
        raws, ours, bares = [], [], []
        meter, raw_cpu, own_cpu, bare_cpu = CpuMeter(db_url), Spent(), Spent(), Spent()
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits all alike
            await fill(url, args.messages)
            raws.append(await meter.measure(raw_cpu, args.messages,
                                            raw_consume(url, args.messages, prefetch)))
            await fill(url, args.messages)
            ours.append((await meter.measure(own_cpu, args.messages, runtime_consume(
                url, db, args.messages, noop, args.audit_batch, prefetch=prefetch,
                concurrency=args.concurrency))).rate)
            await fill(url, args.messages)
            bares.append(await meter.measure(bare_cpu, args.messages, memory_consume(
                url, args.messages, prefetch=prefetch, concurrency=args.concurrency)))
        meter.close()
        rows = await db.fetchval("SELECT count(*) FROM audit_log")
        raw, own, bare = (statistics.median(raws), statistics.median(ours),
                          statistics.median(bares))
        print(f"(a) raw pika, batched acks         {raw:10,.0f} msg/s   connect → last ack sent "
              f"(median of {', '.join(f'{r:,.0f}' for r in raws)})")
        print(f"(b) runtime, no-op + audit rows    {own:10,.0f} msg/s   start → last ack, each "
              f"after its audit row committed (median of {', '.join(f'{r:,.0f}' for r in ours)}"
              f"; {rows:,} audit rows)")
        print(f"    (b)/(a) = {own / raw:.0%} of the best raw consumer (target: at least 50 %)")
        print(f"(b') runtime, rows to memory only  {bare:10,.0f} msg/s   start → last ack, each "
              f"after its row was fitted and serialised, no PostgreSQL (median of "
              f"{', '.join(f'{r:,.0f}' for r in bares)})")
        print(f"    context: (b')/(a) = {bare / raw:.0%}, the runtime without the audit log; "
              f"(b)/(b') = {own / bare:.0%}, what committing the rows leaves of it")
        print("    CPU a message, all rounds   our process   PostgreSQL (own database)   "
              "RabbitMQ (machine-wide)   machine busy (CPUs)")
        for name, spent in (("(a)", raw_cpu), ("(b)", own_cpu), ("(b')", bare_cpu)):
            print(f"    {name:27} {spent.per_message(spent.ours):>11}   "
                  f"{spent.per_message(spent.postgres):>25}   "
                  f"{spent.per_message(spent.broker):>23}   {spent.busy():>19}")
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
    parser.add_argument("--messages", type=int, default=20_000, help="for (a), (b) and (b')")
    parser.add_argument("--publish", type=int, default=100_000, help="for (d)")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="every consumer's (default: the runtime's, 4 x concurrency)")
    parser.add_argument("--concurrency", type=int, default=64, help="handlers in flight")
    parser.add_argument("--audit-batch", type=int, default=DEFAULT_BATCH_SIZE,
                        help="audit writer batch size for (b)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved runs of (a), (b) and (b')")
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
