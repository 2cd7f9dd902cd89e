"""The audit writer alone: rows/s and client CPU per row; prints figures, asserts nothing.

    .venv/bin/python bench/audit.py [--rows 40000] [--writers 256] [--lone 2000] [--rounds 3]

(a) **under load**: ``--writers`` coroutines each write rows one after another (the
    consumer runtime's shape: many deliveries waiting for their row's commit) until
    ``--rows`` are committed; rows/s, the batches it took, and the writer process's
    CPU per row (``time.process_time``: the client side; PostgreSQL's own work shows
    in the rows/s);
(b) **a lone row**: ``--lone`` rows written one at a time; the median and p99
    latency of one commit (a batch of one: what a quiet service waits per message).

Rounds alternate (a) and (b), so a noisy neighbour hits both alike; medians are
printed. Uses its own database (``DATABASE_URL``, default the local server), dropped
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.audit.record import AuditRecord, Outcome
from shared.audit.writer import AuditWriter
from shared.settings import DEFAULT_DATABASE_URL
from shared.storage.db import Database, quote_ident, url_with_database
from shared.storage.migrate import upgrade


def row(n: int) -> AuditRecord:
    return AuditRecord("pusher", Outcome.CREATED, "org-1", "inst-1", "account", "push",
                       "create", f"A-{n}", f"X-{n}", message_id=f"m-{n}",
                       correlation_id=f"c-{n}", duration_ms=1.5, http_status=201)


async def under_load(writer: AuditWriter, rows: int, writers: int) -> tuple[float, float, int]:
    """(a): rows/s, client CPU µs/row, batches."""
    batches = writer.batches_written
    left = rows

    async def one() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await writer.write(row(left))

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(writers)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return rows / wall, cpu / rows * 1e6, writer.batches_written - batches


async def lone(writer: AuditWriter, count: int) -> list[float]:
    """(b): the latency of each of ``count`` rows written one at a time, in ms."""
    out = []
    for n in range(count):
        started = time.perf_counter()
        await writer.write(row(n))
        out.append((time.perf_counter() - started) * 1000)
    return out


async def run(args: argparse.Namespace, url: str) -> None:
    async with Database(url, max_size=4) as db:
        await upgrade(db)
        async with AuditWriter(db) as writer:
            await lone(writer, 200)  # warm up
            loads, cpus, sizes, p50s, p99s = [], [], [], [], []
            for _ in range(args.rounds):
                rate, cpu, batches = await under_load(writer, args.rows, args.writers)
                loads.append(rate)
                cpus.append(cpu)
                sizes.append(args.rows / batches)
                latencies = await lone(writer, args.lone)
                p50s.append(statistics.median(latencies))
                p99s.append(statistics.quantiles(latencies, n=100)[98])
        print(f"(a) {args.writers} writers, {args.rows:,} rows: "
              f"{statistics.median(loads):,.0f} rows/s "
              f"({', '.join(f'{r:,.0f}' for r in loads)}), "
              f"client CPU {statistics.median(cpus):.1f} µs/row, "
              f"{statistics.median(sizes):.0f} rows/batch")
        print(f"(b) a lone row: p50 {statistics.median(p50s):.3f} ms, "
              f"p99 {statistics.median(p99s):.3f} ms ({args.lone:,} rows a round)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--writers", type=int, default=256)
    parser.add_argument("--lone", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"bss_sync_bench_audit_{os.getpid()}_{secrets.token_hex(2)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    try:
        asyncio.run(run(args, url_with_database(base, name)))
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
