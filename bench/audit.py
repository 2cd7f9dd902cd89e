"""The audit writer alone: rows/s and CPU per row; prints figures, asserts nothing.

    .venv/bin/python bench/audit.py [--rows 40000] [--writers 256] [--lone 2000] [--rounds 3]

(a) **under load**: ``--writers`` coroutines each write rows one after another (the
    consumer runtime's shape: many deliveries waiting for their row's commit) until
    ``--rows`` are committed; rows/s, the rows per batch, and the CPU per row of the
    writer's process (``time.process_time``) and of its PostgreSQL backends (read
    from ``/proc``: the server runs on this machine);
(b) **a lone row**: ``--lone`` rows written one at a time; the median and p99
    latency of one commit (a batch of one: what a quiet service waits per message),
    and the CPU of each, client and server.

Rounds alternate (a) and (b), so a noisy neighbour hits both alike; medians are
printed. The CPU figures move much less than the times on a busy machine. Uses its
own database (``DATABASE_URL``, default the local server), dropped at the end.
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


def proc_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds of this process and of the database's other backends, between marks."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pids: list[int] = []

    async def mark(self) -> tuple[float, float]:
        self.pids = [r["pid"] for r in await self.db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
        return time.process_time(), sum(proc_cpu(p) for p in self.pids)

    def since(self, mark: tuple[float, float]) -> tuple[float, float]:
        return (time.process_time() - mark[0],
                sum(proc_cpu(p) for p in self.pids) - mark[1])


async def under_load(writer: AuditWriter, cpu: Cpu, rows: int,
                     writers: int) -> tuple[float, float, float, int]:
    """(a): rows/s, client and server CPU µs/row, batches."""
    batches = writer.batches_written
    left = rows

    async def one() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await writer.write(row(left))

    mark, wall = await cpu.mark(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(writers)))
    wall = time.perf_counter() - wall
    client, server = cpu.since(mark)
    return rows / wall, client / rows * 1e6, server / rows * 1e6, writer.batches_written - batches


async def lone(writer: AuditWriter, cpu: Cpu, count: int) -> tuple[list[float], float, float]:
    """(b): the latency of each of ``count`` rows written one at a time, in ms; client and
    server CPU µs per row."""
    out = []
    mark = await cpu.mark()
    for n in range(count):
        started = time.perf_counter()
        await writer.write(row(n))
        out.append((time.perf_counter() - started) * 1000)
    client, server = cpu.since(mark)
    return out, client / count * 1e6, server / count * 1e6


async def run(args: argparse.Namespace, url: str) -> None:
    async with Database(url, max_size=4) as db:
        await upgrade(db)
        cpu = Cpu(db)
        async with AuditWriter(db) as writer:
            await lone(writer, cpu, 200)  # warm up
            loads, clients, servers, sizes = [], [], [], []
            p50s, p99s, lone_clients, lone_servers = [], [], [], []
            for _ in range(args.rounds):
                rate, client, server, batches = await under_load(writer, cpu, args.rows,
                                                                  args.writers)
                loads.append(rate)
                clients.append(client)
                servers.append(server)
                sizes.append(args.rows / batches)
                latencies, client, server = await lone(writer, cpu, args.lone)
                p50s.append(statistics.median(latencies))
                p99s.append(statistics.quantiles(latencies, n=100)[98])
                lone_clients.append(client)
                lone_servers.append(server)
        med = statistics.median
        print(f"(a) {args.writers} writers, {args.rows:,} rows: {med(loads):,.0f} rows/s "
              f"({', '.join(f'{r:,.0f}' for r in loads)}), {med(sizes):.0f} rows/batch; "
              f"CPU per row: writer {med(clients):.1f} µs, PostgreSQL {med(servers):.1f} µs")
        print(f"(b) a lone row: p50 {med(p50s):.3f} ms, p99 {med(p99s):.3f} ms; CPU per row: "
              f"writer {med(lone_clients):.0f} µs, PostgreSQL {med(lone_servers):.0f} µs "
              f"({args.lone:,} rows a round)")


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
